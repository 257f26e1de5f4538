"""The embedding queue as an application sees it: its size, and dead letters given a new start.

Works with or without an in-process worker (a separate ``memfuse worker`` may do the embedding).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.db.models import EMBEDDABLE_TABLES
from memfuse.errors import ValidationError
from memfuse.repositories.jobs import JobRepository, QueueCounts
from memfuse.validation import preview


class EmbeddingQueueService:
    """Reads the queue's counts and re-queues dead-lettered rows."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory

    async def counts(self) -> QueueCounts:
        async with self._session_factory() as db:
            return await JobRepository(db).counts()

    async def expedite_deferred(self) -> int:
        """Make held-back jobs (open episodes) due now; returns how many."""
        async with self._session_factory.begin() as db:
            return await JobRepository(db).expedite_deferred()

    async def requeue_dead_letters(self, table: str | None = None) -> int:
        """Give dead-lettered rows (of one table, or all) fresh attempts; returns how many."""
        if table is not None and table not in EMBEDDABLE_TABLES:
            raise ValidationError(
                f"must be one of {', '.join(EMBEDDABLE_TABLES)} or None, got {preview(table)}",
                field="table",
            )
        async with self._session_factory.begin() as db:
            return await JobRepository(db).requeue_dead_letters(table)
