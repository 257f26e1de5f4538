"""A tiny host application that keeps its own tables next to memfuse in one database.

It owns two tables in the default ``public`` schema, its own declarative ``Base`` and its own
Alembic environment with the ordinary ``alembic_version`` table. memfuse lives beside it in the
``memfuse`` schema with its own version table; neither migrates the other's objects.
"""
