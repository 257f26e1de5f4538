"""Repositories: one small typed class per table, each working inside a caller's session."""

from memfuse.repositories.tenancy import AgentRepository, SessionRepository, UserRepository

__all__ = ["AgentRepository", "SessionRepository", "UserRepository"]
