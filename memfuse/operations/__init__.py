"""Running memfuse in production: health checks, metrics export, tracing spans.

These read the lower layers (repositories, the engines' pool statistics, the monitor) and are
used by the facade and the command line; nothing below them imports them.
"""
