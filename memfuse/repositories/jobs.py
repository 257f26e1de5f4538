"""SQL for the embedding queue: lease jobs, read their rows, write vectors, retry, dead-letter.

A job is due at ``retry_after``: at once when queued, later after a failure (backoff) or while
its text is still growing (a session's open episode, the facts of its open fact group). A worker
*leases* due jobs (``locked_by``, ``locked_until``) in a short transaction and commits; no row
lock survives into the model call. Its writes afterwards touch only jobs it still owns
(``locked_by``) and never wait for a lock: memory rows and jobs held by another transaction are
skipped (``SKIP LOCKED``) and handled on a later claim. Lock order, as for every writer: memory
rows first, then their jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import (
    MESSAGE_TSVECTOR,
    EmbeddingDeadLetter,
    EmbeddingJob,
    Episode,
    Fact,
    FactGroup,
    Knowledge,
    Message,
    fact_group,
    message_text,
)

FACTS = cast(Table, Fact.__table__)
MESSAGES = cast(Table, Message.__table__)

MEMORY_TABLES: dict[str, Table] = {
    "messages": cast(Table, Message.__table__),
    "episodes": cast(Table, Episode.__table__),
    "facts": cast(Table, Fact.__table__),
    "knowledge": cast(Table, Knowledge.__table__),
}


MESSAGE_HEAD_START = timedelta(seconds=10)
"""How much sooner a queued message is embedded than an episode or fact queued with it."""

RowKey = tuple[str, uuid.UUID]
"""A memory row: its table's name and its id."""


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


@dataclass(frozen=True, slots=True)
class FactText:
    """A fact's content, the text of its group (what its vector is made of), and its group."""

    content: str
    text: str
    user_id: uuid.UUID
    agent_id: uuid.UUID | None
    session_id: uuid.UUID | None
    group_no: int


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How much work the queue holds."""

    depth: int
    dead_letters: int


class JobRepository:
    """Rows of ``embedding_jobs`` and ``embedding_dead_letters``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, limit: int, *, owner: str, lease: timedelta) -> list[Job]:
        """Lease up to ``limit`` due jobs that no live lease holds, oldest first, a message's
        job counted :data:`MESSAGE_HEAD_START` older than it is.

        A message is what a caller searches for next; episodes and facts are derived from it
        and wait at most that much longer, so neither starves. Commit right after: the lease,
        not a row lock, keeps other workers away. Jobs of a worker that died come back once
        ``lease`` has passed.
        """
        now = func.clock_timestamp()
        turn = case(
            (
                EmbeddingJob.table_name == "messages",
                EmbeddingJob.retry_after - MESSAGE_HEAD_START,
            ),
            else_=EmbeddingJob.retry_after,
        )
        due = (
            select(EmbeddingJob.id)
            .where(
                EmbeddingJob.retry_after <= now,
                or_(EmbeddingJob.locked_until.is_(None), EmbeddingJob.locked_until < now),
            )
            .order_by(turn, EmbeddingJob.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        result = await self.session.execute(
            update(EmbeddingJob)
            .where(EmbeddingJob.id.in_(select(due.c.id)))
            .values(locked_by=owner, locked_until=now + lease)
            .returning(
                EmbeddingJob.id,
                EmbeddingJob.table_name,
                EmbeddingJob.row_id,
                EmbeddingJob.attempts,
                EmbeddingJob.enqueued_at,
            )
        )
        jobs = [Job(**row._mapping) for row in result]
        return sorted(jobs, key=lambda job: job.id)

    async def texts(self, jobs: Sequence[Job]) -> dict[RowKey, RowText]:
        """The current text of each job's row; deleted rows are absent.

        A message is embedded as it reads (:func:`~memfuse.db.models.message_text`); an
        episode as its content; a fact as the text of *all* the facts drawn from the same
        message (:meth:`fact_group_texts`), so the facts of one message share one vector.
        """
        found: dict[RowKey, RowText] = {}
        for table_name, table in MEMORY_TABLES.items():
            ids = sorted({job.row_id for job in jobs if job.table_name == table_name})
            if not ids:
                continue
            if table_name == "facts":
                for row_id, fact in (await self.fact_group_texts(ids)).items():
                    found[(table_name, row_id)] = RowText(
                        table_name, row_id, fact.content, fact.text
                    )
                continue
            named = table_name == "messages"
            columns = [table.c.id, table.c.content, *([table.c.name] if named else [])]
            result = await self.session.execute(select(*columns).where(table.c.id.in_(ids)))
            for row in result:
                text = message_text(row.name, row.content) if named else row.content
                found[(table_name, row.id)] = RowText(table_name, row.id, row.content, text)
        return found

    async def fact_group_texts(self, fact_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, FactText]:
        """Each fact's content, group, and the text it is embedded as: the contents of every
        fact of its group (same session and ``group_no``, see
        :data:`~memfuse.db.models.FACT_GROUP_MESSAGES`), one per line, in message order.

        Measured on LoCoMo (docs/benchmarks.md#which-vectors-earn-their-cost): one vector for
        the facts of four messages keeps recall with an eighth of the texts of one per fact.
        """
        facts = FACTS.alias("fact")
        siblings = FACTS.alias("sibling")
        sibling_source = MESSAGES.alias("sibling_source")
        group_text = func.string_agg(
            siblings.c.content,
            aggregate_order_by(
                literal("\n"), sibling_source.c.seq, siblings.c.created_at, siblings.c.id
            ),
        )
        result = await self.session.execute(
            select(
                facts.c.id,
                facts.c.content,
                facts.c.user_id,
                facts.c.agent_id,
                facts.c.session_id,
                facts.c.group_no,
                group_text.label("group_text"),
            )
            .select_from(
                facts.outerjoin(
                    siblings.outerjoin(
                        sibling_source, sibling_source.c.id == siblings.c.message_ids[1]
                    ),
                    (siblings.c.session_id == facts.c.session_id)
                    & (siblings.c.group_no == facts.c.group_no),
                )
            )
            .where(facts.c.id.in_(fact_ids))
            .group_by(facts.c.id)
        )
        return {
            row.id: FactText(
                content=row.content,
                text=row.group_text or row.content,
                user_id=row.user_id,
                agent_id=row.agent_id,
                session_id=row.session_id,
                group_no=row.group_no,
            )
            for row in result
        }

    async def lock_rows(self, keys: Sequence[RowKey]) -> dict[RowKey, str]:
        """Lock the memory rows that no other transaction holds, in id order; their content.

        Rows held by a writer (an edit, a deletion, a pipeline step) are absent, as are
        deleted rows: the worker never waits for a writer, so it can never deadlock with one.
        """
        locked: dict[RowKey, str] = {}
        for table_name, table in MEMORY_TABLES.items():
            ids = sorted({row_id for name, row_id in keys if name == table_name})
            if not ids:
                continue
            result = await self.session.execute(
                select(table.c.id, table.c.content)
                .where(table.c.id.in_(ids))
                .order_by(table.c.id)
                .with_for_update(skip_locked=True)
            )
            locked.update({(table_name, row.id): row.content for row in result})
        return locked

    async def existing(self, keys: Sequence[RowKey]) -> set[RowKey]:
        """Which of these rows exist (without locking them)."""
        found: set[RowKey] = set()
        for table_name, table in MEMORY_TABLES.items():
            ids = sorted({row_id for name, row_id in keys if name == table_name})
            if ids:
                result = await self.session.execute(select(table.c.id).where(table.c.id.in_(ids)))
                found.update((table_name, row_id) for row_id in result.scalars())
        return found

    async def write_vectors(self, items: Sequence[tuple[RowText, list[float]]]) -> None:
        """Store each vector only if its row still has the text that was embedded.

        A row whose content changed meanwhile keeps no stale vector; its change queued a new
        job that embeds the new text. A fact's vector is its group's (:meth:`_write_groups`).
        A message's words are indexed in the same UPDATE if they are not yet (migration 0009:
        ``add()`` leaves that to the worker).
        """
        ordered = sorted(items, key=lambda item: item[0].row_id)
        for table_name, table in MEMORY_TABLES.items():
            chosen = [(text, vector) for text, vector in ordered if text.table_name == table_name]
            if not chosen:
                continue
            if table_name == "facts":
                await self._write_groups(chosen)
                continue
            values: dict[str, object] = {
                "embedding": bindparam("vector", type_=table.c.embedding.type)
            }
            if table_name == "messages":
                values["content_tsv"] = func.coalesce(
                    table.c.content_tsv, literal_column(MESSAGE_TSVECTOR)
                )
            await self.session.execute(
                update(table)
                .where(
                    table.c.id == bindparam("row_id"),
                    table.c.content == bindparam("embedded_text"),
                )
                .values(values),
                [
                    {"row_id": text.row_id, "embedded_text": text.content, "vector": vector}
                    for text, vector in chosen
                ],
            )

    async def _write_groups(self, items: Sequence[tuple[RowText, list[float]]]) -> None:
        """Store the vector of each fact's group if the group still reads as embedded.

        A fact added to the group meanwhile changed its text and queued a job of its own, which
        embeds the new text; an older text's vector never overwrites it. Rows are written in
        key order (the lock order among groups).
        """
        current = await self.fact_group_texts([text.row_id for text, _ in items])
        groups: dict[tuple[uuid.UUID, int], dict[str, object]] = {}
        for text, vector in items:
            fact = current.get(text.row_id)
            if fact is None or fact.session_id is None or fact.text != text.text:
                continue
            groups[(fact.session_id, fact.group_no)] = {
                "session_id": fact.session_id,
                "group_no": fact.group_no,
                "user_id": fact.user_id,
                "agent_id": fact.agent_id,
                "embedding": vector,
            }
        if not groups:
            return
        statement = pg_insert(FactGroup)
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[FactGroup.session_id, FactGroup.group_no],
                set_={"embedding": statement.excluded.embedding},
            ),
            [groups[key] for key in sorted(groups)],
        )

    def _owned(self, job_ids: Sequence[int], owner: str | None) -> Select[int]:
        """The jobs of ``job_ids`` that ``owner`` still leases (``None``: whoever leases them)
        and that no other transaction has locked."""
        query = select(EmbeddingJob.id).where(EmbeddingJob.id.in_(sorted(job_ids)))
        if owner is not None:
            query = query.where(EmbeddingJob.locked_by == owner)
        return query.order_by(EmbeddingJob.id).with_for_update(skip_locked=True)

    async def finish(self, job_ids: Sequence[int], *, owner: str | None) -> int:
        """Delete finished jobs; returns how many.

        With ``owner``, only jobs it still leases: a job an edit took over (its lease
        cleared) or another worker re-leased is left for its new owner. Without, whoever
        leases them: for jobs whose row the caller holds locked and has just given the
        vector of its current text, any worker would only write the same vector again.
        """
        if not job_ids:
            return 0
        result = await self.session.execute(
            delete(EmbeddingJob)
            .where(EmbeddingJob.id.in_(self._owned(job_ids, owner)))
            .returning(EmbeddingJob.id)
        )
        return len(result.all())

    async def renew(self, job_ids: Sequence[int], *, owner: str, lease: timedelta) -> None:
        """Extend ``owner``'s leases: its model call is still running."""
        if job_ids:
            await self.session.execute(
                update(EmbeddingJob)
                .where(EmbeddingJob.id.in_(self._owned(job_ids, owner)))
                .values(locked_until=func.clock_timestamp() + lease)
            )

    async def release(self, job_ids: Sequence[int], *, owner: str) -> None:
        """Give leased jobs back to the queue at once, unchanged (their row was busy)."""
        if job_ids:
            await self.session.execute(
                update(EmbeddingJob)
                .where(EmbeddingJob.id.in_(self._owned(job_ids, owner)))
                .values(locked_by=None, locked_until=None)
            )

    async def release_owner(self, owner: str) -> int:
        """Give back every job ``owner`` leases (a worker stopping); returns how many."""
        result = await self.session.execute(
            update(EmbeddingJob)
            .where(EmbeddingJob.locked_by == owner)
            .values(locked_by=None, locked_until=None)
            .returning(EmbeddingJob.id)
        )
        return len(result.all())

    async def retry_later(
        self, jobs: Sequence[Job], error: str, backoff: timedelta, *, owner: str
    ) -> None:
        """Count a failed attempt, end the lease, and hide the jobs until ``backoff`` passed."""
        if jobs:
            await self.session.execute(
                update(EmbeddingJob)
                .where(EmbeddingJob.id.in_(self._owned([job.id for job in jobs], owner)))
                .values(
                    attempts=EmbeddingJob.attempts + 1,
                    retry_after=func.clock_timestamp() + backoff,
                    last_error=error[:2000],
                    locked_by=None,
                    locked_until=None,
                )
            )

    async def dead_letter(self, jobs: Sequence[Job], error: str, *, owner: str) -> int:
        """Move jobs that failed too often to the dead-letter table, with their error.

        Returns how many moved (a job another transaction holds stays, for a later attempt).
        """
        if not jobs:
            return 0
        moved = (
            delete(EmbeddingJob)
            .where(EmbeddingJob.id.in_(self._owned([job.id for job in jobs], owner)))
            .returning(
                EmbeddingJob.id,
                EmbeddingJob.table_name,
                EmbeddingJob.row_id,
                EmbeddingJob.enqueued_at,
                EmbeddingJob.attempts,
            )
            .cte("moved")
        )
        result = await self.session.execute(
            insert(EmbeddingDeadLetter)
            .from_select(
                ["id", "table_name", "row_id", "enqueued_at", "attempts", "last_error"],
                select(
                    moved.c.id,
                    moved.c.table_name,
                    moved.c.row_id,
                    moved.c.enqueued_at,
                    moved.c.attempts + 1,
                    literal(error[:2000]),
                ),
            )
            .returning(EmbeddingDeadLetter.id)
        )
        return len(result.all())

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

    async def hold_back_open_episode(self, session_id: uuid.UUID, delay: timedelta) -> None:
        """Hold back the embedding of a session's open (last) episode until ``delay`` from
        now, and make its closed episodes' held-back jobs due at once.

        An open episode grows with every message: embedding each growth throws every vector
        but the last away.
        """
        episodes = select(Episode.id).where(Episode.session_id == session_id)
        open_episode = episodes.order_by(Episode.first_seq.desc()).limit(1).scalar_subquery()
        await self._hold_back(
            "episodes",
            closed=episodes.where(Episode.id != open_episode),
            still_open=select(open_episode),
            delay=delay,
        )

    async def hold_back_open_fact_group(
        self, session_id: uuid.UUID, last_seq: int, delay: timedelta
    ) -> None:
        """Hold back the embedding of the facts of a session's open fact group (the one that
        message ``last_seq``, the last processed, belongs to while the group is not full) and
        make the held-back facts of its earlier groups due at once.

        The facts of a group are embedded as one text (:meth:`fact_group_texts`): embedding
        the facts of the group's first message before the next message's facts exist would
        embed a text that changes right after.
        """
        facts = select(Fact.id).where(Fact.session_id == session_id)
        group = fact_group(last_seq)
        if fact_group(last_seq + 1) != group:  # the group of last_seq is full
            group += 1
        await self._hold_back(
            "facts",
            closed=facts.where(Fact.group_no < group),
            still_open=facts.where(Fact.group_no >= group),
            delay=delay,
        )

    async def _hold_back(
        self,
        table_name: str,
        *,
        closed: Select[uuid.UUID],
        still_open: Select[uuid.UUID],
        delay: timedelta,
    ) -> None:
        """Make the held-back jobs of ``closed`` rows due now; hold ``still_open`` rows' jobs
        back until ``delay`` from now.

        Only a fresh job is held back (no failed attempt, no live lease): a failing job keeps
        its backoff, and a job a worker is embedding right now is that worker's (its vector
        is not written if the text changed meanwhile).
        """
        now = func.clock_timestamp()
        fresh = (
            EmbeddingJob.table_name == table_name,
            EmbeddingJob.attempts == 0,
            or_(EmbeddingJob.locked_until.is_(None), EmbeddingJob.locked_until < now),
        )
        opened = EmbeddingJob.row_id.in_(still_open)
        await self.session.execute(
            update(EmbeddingJob)
            .where(
                *fresh,
                or_(opened, and_(EmbeddingJob.retry_after > now, EmbeddingJob.row_id.in_(closed))),
            )
            .values(retry_after=case((opened, now + delay), else_=now))
        )

    async def expedite_deferred(self) -> int:
        """Make every held-back job due now (``flush()``: everything searchable); returns how
        many. Jobs backing off after a failure keep their wait. Jobs another transaction has
        locked are skipped, not waited for: that transaction is changing or deleting them.
        """
        now = func.clock_timestamp()
        held_back = (
            select(EmbeddingJob.id)
            .where(EmbeddingJob.attempts == 0, EmbeddingJob.retry_after > now)
            .with_for_update(skip_locked=True)
        )
        result = await self.session.execute(
            update(EmbeddingJob)
            .where(EmbeddingJob.id.in_(held_back))
            .values(retry_after=now)
            .returning(EmbeddingJob.id)
        )
        return len(result.all())

    async def last_due_id(self) -> int | None:
        """The newest job id that is due now (``None``: none is): where a drain stops."""
        return cast(
            "int | None",
            (
                await self.session.execute(
                    select(func.max(EmbeddingJob.id)).where(
                        EmbeddingJob.retry_after <= func.clock_timestamp()
                    )
                )
            ).scalar_one(),
        )

    async def due_through(self, last_id: int) -> int:
        """Due jobs (leased or not) with an id up to ``last_id``: what a drain still waits for."""
        return int(
            (
                await self.session.execute(
                    select(func.count(EmbeddingJob.id)).where(
                        EmbeddingJob.id <= last_id,
                        EmbeddingJob.retry_after <= func.clock_timestamp(),
                    )
                )
            ).scalar_one()
        )

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
