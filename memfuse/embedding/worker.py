"""The embedding worker: drains ``embedding_jobs`` into vectors.

Each batch is one transaction: claim due jobs with ``FOR UPDATE SKIP LOCKED``, read their rows'
text, embed all texts in one call, write the vectors and delete the jobs. A crash or a
cancellation rolls the transaction back and the jobs reappear for any worker. A NOTIFY on the
queue's channel wakes the worker at once (on its own connection, reconnected when it drops);
polling every ``poll_interval`` seconds is the correctness path, since notifications are lost
while nobody listens.

Failures never produce a vector: if the batch call fails, its texts are embedded one by one,
so a poison text fails alone; a failed job backs off exponentially and, after
``max_attempts``, moves to ``embedding_dead_letters`` with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memfuse.config import DEFAULT_SCHEMA
from memfuse.db.migrate import check_embedding_dimension
from memfuse.db.models import EmbeddingJob, embedding_channel
from memfuse.db.urls import asyncpg_connect_args
from memfuse.embedding.embedders import Embedder
from memfuse.errors import ClosedError, ModelCallError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.jobs import Job, JobRepository, QueueCounts, RowText
from memfuse.waiting import wait_at_most

logger = logging.getLogger(__name__)

RowKey = tuple[str, uuid.UUID]


@dataclass(slots=True)
class WorkerStats:
    """Counters since start: batches, jobs, vectors written, and what went wrong."""

    batches: int = 0
    jobs_done: int = 0
    vectors_written: int = 0
    rows_gone: int = 0
    failures: int = 0
    dead_lettered: int = 0
    largest_batch: int = 0
    notifications: int = 0
    listener_connects: int = 0
    last_error: str | None = None
    batch_sizes: list[int] = field(default_factory=list)


class EmbeddingWorker:
    """Embeds queued rows; run it in-process (:meth:`start`) or as ``memfuse worker``."""

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        monitor: PerformanceMonitor,
        *,
        schema: str = DEFAULT_SCHEMA,
        batch_size: int = 64,
        concurrency: int = 1,
        poll_interval: float = 5.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        max_backoff: float = 600.0,
        listen: bool = True,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """``on_written()`` runs after each batch that committed vectors (caches use it)."""
        if batch_size < 1 or concurrency < 1 or max_attempts < 1 or poll_interval <= 0:
            raise ValueError("batch_size, concurrency, max_attempts >= 1; poll_interval > 0")
        self._engine = engine
        self._session_factory = async_sessionmaker(engine, expire_on_commit=False)
        self.embedder = embedder
        self._monitor = monitor
        self.schema = schema
        self.channel = embedding_channel(schema)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self._listen = listen
        self._on_written = on_written
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None

    async def verify(self) -> None:
        """Refuse an embedder whose dimension differs from the schema's vectors."""
        await check_embedding_dimension(
            self._engine,
            self.embedder.dimension,
            schema=self.schema,
            source=f"embedder {self.embedder.model_name!r}",
        )

    async def process_batch(self) -> int:
        """Claim and finish one batch; returns the number of jobs claimed (0: none due)."""
        async with self._session_factory.begin() as db:
            repository = JobRepository(db)
            jobs = await repository.claim(self.batch_size)
            if not jobs:
                return 0
            texts = await repository.texts(jobs)
            vectors, errors = await self._embed(list(texts.values()))
            await repository.write_vectors(
                [(texts[key], vector) for key, vector in vectors.items()]
            )
            failed = [job for job in jobs if (job.table_name, job.row_id) in errors]
            failed_ids = {job.id for job in failed}
            await repository.delete([job.id for job in jobs if job.id not in failed_ids])
            await self._handle_failures(repository, failed, errors)
        self._count(jobs, texts, vectors, failed)
        if vectors and self._on_written is not None:
            self._on_written()
        return len(jobs)

    async def drain(self) -> None:
        """Return once no due job is left, including jobs other workers hold right now."""
        while True:
            if await self.process_batch():
                continue
            async with self._session_factory() as db:
                due = await db.execute(
                    select(func.count(EmbeddingJob.id)).where(
                        EmbeddingJob.retry_after <= func.clock_timestamp()
                    )
                )
                if due.scalar_one() == 0:
                    return
            await asyncio.sleep(0.02)

    async def requeue_dead_letters(self, table_name: str | None = None) -> int:
        """Give dead-lettered rows (of one table, or all) a fresh start; returns how many."""
        async with self._session_factory.begin() as db:
            return await JobRepository(db).requeue_dead_letters(table_name)

    async def queue_depth(self) -> int:
        """Jobs waiting, due or not (also refreshes the monitor's queue gauges)."""
        return (await self.refresh_gauges()).depth

    async def refresh_gauges(self) -> QueueCounts:
        """Read the queue's depth and dead letters into the monitor's gauges."""
        async with self._session_factory() as db:
            counts = await JobRepository(db).counts()
        self._monitor.set_gauge("embedding_queue_depth", counts.depth)
        self._monitor.set_gauge("embedding_dead_letters", counts.dead_letters)
        return counts

    async def _embed(
        self, texts: list[RowText]
    ) -> tuple[dict[RowKey, list[float]], dict[RowKey, str]]:
        """Vectors by row, and errors by row.

        If the batch call fails, each text is embedded alone so a poison text fails alone;
        unless the embedder reports the service itself down (``transient``), then the whole
        batch waits for a retry without a call per text.
        """
        if not texts:
            return {}, {}
        try:
            return self._checked(texts, await self._call(texts))
        except Exception as error:
            if len(texts) == 1 or _transient(error):
                return {}, {_key(text): _describe(error) for text in texts}
        results: dict[RowKey, list[float]] = {}
        errors: dict[RowKey, str] = {}
        for index, text in enumerate(texts):
            try:
                single, failed = self._checked([text], await self._call([text]))
            except Exception as error:
                errors[_key(text)] = _describe(error)
                if _transient(error):
                    errors.update({_key(rest): _describe(error) for rest in texts[index + 1 :]})
                    break
                continue
            results.update(single)
            errors.update(failed)
        return results, errors

    async def _call(self, texts: list[RowText]) -> list[list[float]]:
        """One embedder call, timed as ``embedding_batch`` (a failed call counts as an error)."""
        started = time.perf_counter()
        success = False
        try:
            vectors = await self.embedder.embed_documents([text.text for text in texts])
            success = True
            return vectors
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self._monitor.record("embedding_batch", elapsed, success=success)

    def _checked(
        self, texts: list[RowText], vectors: list[list[float]]
    ) -> tuple[dict[RowKey, list[float]], dict[RowKey, str]]:
        results: dict[RowKey, list[float]] = {}
        errors: dict[RowKey, str] = {}
        for text, vector in zip(texts, vectors, strict=True):
            if len(vector) == self.embedder.dimension:
                results[_key(text)] = vector
            else:
                errors[_key(text)] = (
                    f"embedder returned {len(vector)} dimensions, "
                    f"expected {self.embedder.dimension}"
                )
        return results, errors

    async def _handle_failures(
        self, repository: JobRepository, failed: Sequence[Job], errors: dict[RowKey, str]
    ) -> None:
        for job in failed:
            error = errors[(job.table_name, job.row_id)]
            if job.attempts + 1 >= self.max_attempts:
                await repository.dead_letter([job], error)
                self.stats.dead_lettered += 1
                self._monitor.increment("embedding_jobs_dead_lettered")
                logger.warning(
                    "embedding of %s %s dead-lettered: %s", job.table_name, job.row_id, error
                )
            else:
                await repository.retry_later([job], error, self._backoff(job.attempts))

    def _backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.backoff_base * 2**attempts, self.max_backoff))

    def _count(
        self,
        jobs: Sequence[Job],
        texts: dict[RowKey, RowText],
        vectors: dict[RowKey, list[float]],
        failed: Sequence[Job],
    ) -> None:
        now = datetime.now(UTC)
        for job in jobs:
            if (job.table_name, job.row_id) in vectors:
                lag_ms = (now - job.enqueued_at).total_seconds() * 1000
                self._monitor.record("embedding_lag", lag_ms)
        self.stats.batches += 1
        self.stats.jobs_done += len(jobs) - len(failed)
        self.stats.vectors_written += len(vectors)
        self.stats.rows_gone += sum(1 for job in jobs if (job.table_name, job.row_id) not in texts)
        self.stats.failures += len(failed)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        self.stats.batch_sizes.append(len(jobs))
        del self.stats.batch_sizes[:-1000]
        self._monitor.set_gauge("embedding_last_batch_jobs", len(jobs))
        self._monitor.increment("embedding_vectors_written", len(vectors))
        self._monitor.increment("embedding_jobs_failed", len(failed))

    def start(self) -> None:
        """Run ``concurrency`` loops and the LISTEN connection in the background.

        Call :meth:`verify` first: a worker must not embed with a model of the wrong size.
        """
        if self._stopping.is_set():
            raise ClosedError("the embedding worker is stopped")
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"memfuse-embedding-worker-{n}")
            for n in range(self.concurrency)
        ]
        if self._listen:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="memfuse-listen"))

    def notify(self) -> None:
        """Wake the loops now (in-process writers may call this after committing)."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await self.process_batch():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.stats.last_error = _describe(error)
                logger.exception("embedding batch failed; retrying after the poll interval")
            await self._refresh_gauges_quietly()
            await wait_at_most(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def _refresh_gauges_quietly(self) -> None:
        """Gauges are best effort: a failed count must not stop the loop."""
        try:
            await self.refresh_gauges()
        except Exception as error:
            logger.warning("could not read the queue's depth: %s", _describe(error))

    async def _listen_loop(self) -> None:
        """Keep a LISTEN connection of its own; reconnect when it drops."""
        url = self._engine.url.render_as_string(hide_password=False)
        while not self._stopping.is_set():
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(**asyncpg_connect_args(url))
            except (OSError, asyncpg.PostgresError) as error:
                logger.warning("LISTEN connection failed (%s); polling meanwhile", error)
                await self._pause(self.poll_interval)
                continue
            self._listener = connection
            try:
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(self.channel, self._on_notification)
                self.stats.listener_connects += 1
                self._wake.set()
                await lost.wait()
                if not self._stopping.is_set():
                    logger.warning("LISTEN connection lost; reconnecting")
            finally:
                self._listener = None
                if not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=1)
            await self._pause(0.2)

    def _on_notification(self, *_: object) -> None:
        self.stats.notifications += 1
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        await wait_at_most(self._stopping.wait(), seconds)

    async def close(self, grace: float = 10.0) -> None:
        """Stop: batches in hand may finish for up to ``grace`` seconds, else roll back."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        listener = self._listener
        if listener is not None and not listener.is_closed():
            listener.terminate()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


def _key(text: RowText) -> RowKey:
    return (text.table_name, text.row_id)


def _transient(error: BaseException) -> bool:
    """Whether the embedder said the service, not the input, failed."""
    return isinstance(error, ModelCallError) and error.transient


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
