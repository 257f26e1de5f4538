"""Doors into memfuse from other frameworks: MCP, LangGraph."""
