"""SQL for the embedding queue: claim jobs, read their rows, write vectors, retry, dead-letter.

Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` inside the worker's transaction, so a job is
held by one worker at a time and returns to the queue if that worker's transaction rolls back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import EmbeddingDeadLetter, EmbeddingJob, Episode, Fact, Message

MEMORY_TABLES: dict[str, Table] = {
    "messages": cast(Table, Message.__table__),
    "episodes": cast(Table, Episode.__table__),
    "facts": cast(Table, Fact.__table__),
}


@dataclass(frozen=True, slots=True)
class Job:
    """One queued embedding of one row."""

    id: int
    table_name: str
    row_id: uuid.UUID
    attempts: int
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class RowText:
    """A row to embed, as read when its job was claimed.

    ``content`` is the row's column (a vector is written only while it is unchanged) and
    ``text`` what the embedder gets: for a message with a speaker, ``name: content``.
    """

    table_name: str
    row_id: uuid.UUID
    content: str
    text: str


def message_text(name: str | None, content: str) -> str:
    """The text a message is embedded as; the full-text column of messages uses the same rule."""
    return f"{name}: {content}" if name else content


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How much work the queue holds."""

    depth: int
    dead_letters: int


class JobRepository:
    """Rows of ``embedding_jobs`` and ``embedding_dead_letters``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, limit: int) -> list[Job]:
        """Lock up to ``limit`` due jobs that no other worker holds, oldest first."""
        result = await self.session.execute(
            select(
                EmbeddingJob.id,
                EmbeddingJob.table_name,
                EmbeddingJob.row_id,
                EmbeddingJob.attempts,
                EmbeddingJob.enqueued_at,
            )
            .where(EmbeddingJob.retry_after <= func.clock_timestamp())
            .order_by(EmbeddingJob.retry_after, EmbeddingJob.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [Job(**row._mapping) for row in result]

    async def texts(self, jobs: Sequence[Job]) -> dict[tuple[str, uuid.UUID], RowText]:
        """The current text of each job's row; deleted rows are absent."""
        found: dict[tuple[str, uuid.UUID], RowText] = {}
        for table_name, table in MEMORY_TABLES.items():
            ids = sorted({job.row_id for job in jobs if job.table_name == table_name})
            if not ids:
                continue
            named = table_name == "messages"
            columns = [table.c.id, table.c.content, *([table.c.name] if named else [])]
            result = await self.session.execute(select(*columns).where(table.c.id.in_(ids)))
            for row in result:
                text = message_text(row.name, row.content) if named else row.content
                found[(table_name, row.id)] = RowText(table_name, row.id, row.content, text)
        return found

    async def write_vectors(self, items: Sequence[tuple[RowText, list[float]]]) -> None:
        """Store each vector only if its row still has the text that was embedded.

        A row whose content changed meanwhile keeps no stale vector; its change queued a new
        job that embeds the new text.
        """
        for table_name, table in MEMORY_TABLES.items():
            rows = [
                {"row_id": text.row_id, "embedded_text": text.content, "vector": vector}
                for text, vector in items
                if text.table_name == table_name
            ]
            if rows:
                await self.session.execute(
                    update(table)
                    .where(
                        table.c.id == bindparam("row_id"),
                        table.c.content == bindparam("embedded_text"),
                    )
                    .values(embedding=bindparam("vector", type_=table.c.embedding.type)),
                    rows,
                )

    async def delete(self, job_ids: Sequence[int]) -> None:
        if job_ids:
            await self.session.execute(
                delete(EmbeddingJob).where(EmbeddingJob.id.in_(sorted(job_ids)))
            )

    async def retry_later(self, jobs: Sequence[Job], error: str, backoff: timedelta) -> None:
        """Count a failed attempt and hide the jobs until ``backoff`` has passed."""
        if jobs:
            await self.session.execute(
                update(EmbeddingJob)
                .where(EmbeddingJob.id.in_([job.id for job in jobs]))
                .values(
                    attempts=EmbeddingJob.attempts + 1,
                    retry_after=func.clock_timestamp() + backoff,
                    last_error=error[:2000],
                )
            )

    async def dead_letter(self, jobs: Sequence[Job], error: str) -> None:
        """Move jobs that failed too often to the dead-letter table, with their error."""
        if not jobs:
            return
        await self.session.execute(
            insert(EmbeddingDeadLetter),
            [
                {
                    "id": job.id,
                    "table_name": job.table_name,
                    "row_id": job.row_id,
                    "enqueued_at": job.enqueued_at,
                    "attempts": job.attempts + 1,
                    "last_error": error[:2000],
                }
                for job in jobs
            ],
        )
        await self.delete([job.id for job in jobs])

    async def requeue_dead_letters(self, table_name: str | None = None) -> int:
        """Put dead letters back in the queue with fresh attempts; returns how many."""
        query = delete(EmbeddingDeadLetter).returning(
            EmbeddingDeadLetter.table_name, EmbeddingDeadLetter.row_id
        )
        if table_name is not None:
            query = query.where(EmbeddingDeadLetter.table_name == table_name)
        letters = (await self.session.execute(query)).all()
        if letters:
            await self.session.execute(
                insert(EmbeddingJob),
                [{"table_name": t, "row_id": r} for t, r in letters],
            )
        return len(letters)

    async def counts(self) -> QueueCounts:
        """Jobs waiting (due or not) and dead letters, in one round trip."""
        row = (
            await self.session.execute(
                select(
                    select(func.count(EmbeddingJob.id)).scalar_subquery(),
                    select(func.count(EmbeddingDeadLetter.id)).scalar_subquery(),
                )
            )
        ).one()
        return QueueCounts(depth=int(row[0]), dead_letters=int(row[1]))
