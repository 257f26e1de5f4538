"""The embedding worker: drains ``embedding_jobs`` into vectors, holding no lock meanwhile.

A batch takes three steps: (1) a short transaction *leases* due jobs (``locked_by``,
``locked_until``) and reads their rows' text, then commits; (2) the model embeds the texts
with no transaction open, in chunks of ``chunk_size`` distinct texts, shortest first; (3) after
each chunk, a short transaction locks the chunk's memory rows, then their jobs (the writers'
lock order, docs/layers.md#lock-order), both with ``SKIP LOCKED``, writes each vector whose row
still has the embedded text, and deletes the jobs it still owns. The worker therefore never
waits for a lock a writer holds and can never deadlock with an edit or a deletion; a row a
writer holds is given back to the queue and embedded on a later claim. A worker that dies
leaves leases that expire after ``lease_seconds``; one that stops gives its leases back.

The steps overlap so the model never waits for the database: a chunk's write runs while the
next chunk is embedded, and when a claim came back full (the queue is deeper) the next claim
is leased while the last chunk is embedded; that claim is processed in the same call.

A NOTIFY on the queue's channel wakes the worker at once (on its own connection, reconnected
within seconds when it drops, and probed every ``poll_interval``); polling every
``poll_interval`` seconds is the correctness path, since notifications are lost while nobody
listens. The loops and the listener run supervised (:mod:`memfuse.background`): an
unexpected error restarts them with backoff, logged and counted.

Failures never produce a vector: if the batch call fails, its texts are embedded one by one,
so a poison text fails alone; a failed job backs off exponentially and, after
``max_attempts``, moves to ``embedding_dead_letters`` with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memfuse.background import SupervisedTask
from memfuse.config import DEFAULT_SCHEMA
from memfuse.config.urls import asyncpg_connect_args
from memfuse.db.errors import translate_unavailable
from memfuse.db.migrate import check_embedding_dimension
from memfuse.db.models import embedding_channel, listener_name
from memfuse.embedding.embedders import Embedder
from memfuse.errors import ClosedError, ModelCallError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.jobs import Job, JobRepository, QueueCounts, RowKey, RowText
from memfuse.types import TaskState, WorkerStats
from memfuse.waiting import wait_at_most

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    """The jobs of one claim and their rows' text; ``busy`` counts rows a writer held."""

    jobs: list[Job]
    texts: dict[RowKey, RowText]
    busy: int = 0


@dataclass(slots=True)
class _Chunk:
    """Rows embedded in one embedder call and written in one transaction, with their jobs."""

    batch: _Batch
    rows: list[RowText]
    jobs: list[Job] = field(default_factory=list)


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
        lease_seconds: float = 120.0,
        on_written: Callable[[], None] | None = None,
        chunk_size: int = 256,
    ) -> None:
        """``on_written()`` runs after each write that committed vectors (caches use it).

        ``lease_seconds`` is how long a claimed job stays this worker's: if the worker dies,
        its jobs are claimable again after that long; leases are renewed every third of it
        while held. ``batch_size`` jobs are claimed at once; ``chunk_size`` distinct texts go
        to the embedder in one call, and are written while the next chunk is embedded.
        """
        if (
            batch_size < 1
            or concurrency < 1
            or max_attempts < 1
            or chunk_size < 1
            or poll_interval <= 0
            or lease_seconds <= 0
        ):
            raise ValueError(
                "batch_size, chunk_size, concurrency, max_attempts >= 1; "
                "poll_interval, lease_seconds > 0"
            )
        self._engine = engine
        self._session_factory = async_sessionmaker(engine, expire_on_commit=False)
        self.embedder = embedder
        self._monitor = monitor
        self.schema = schema
        self.channel = embedding_channel(schema)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self._listen = listen
        self._on_written = on_written
        self.lease = timedelta(seconds=lease_seconds)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[SupervisedTask] = []
        self._listener_task: SupervisedTask | None = None
        self._batches_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._listener: asyncpg.Connection | None = None
        self._held: dict[int, int] = {}
        """Job ids this worker leases and has not settled, with how many calls hold each."""
        self._renewer: asyncio.Task[None] | None = None
        self._claims: set[asyncio.Task[_Batch]] = set()

    async def verify(self) -> None:
        """Refuse an embedder whose dimension differs from the schema's vectors."""
        await check_embedding_dimension(
            self._engine,
            self.embedder.dimension,
            schema=self.schema,
            source=f"embedder {self.embedder.model_name!r}",
        )

    async def process_batch(self, *, through_job: int | None = None) -> int:
        """Lease, embed and finish one batch, and the full batches a deep queue has ready
        behind it; returns the number of jobs leased (0: none due).

        A claim that comes back full (``batch_size`` jobs) suggests more are due: the next
        claim is leased while this one's last chunk is embedded, and processed in this call,
        so the model does not wait for the claim or the last write. A short claim ends it,
        and so does a claim past job id ``through_job`` (a drain's end).
        """
        self._batches_in_flight += 1
        self._idle.clear()
        try:
            return await self._process_batches(through_job)
        finally:
            self._batches_in_flight -= 1
            if not self._batches_in_flight:
                self._idle.set()

    async def _process_batches(self, through_job: int | None) -> int:
        batch = await self._claim()
        held = list(batch.jobs)  # every job this call leased, to give back after an error
        leased = 0
        writing: asyncio.Task[None] | None = None
        following: asyncio.Task[_Batch] | None = None
        try:
            while batch.jobs:
                leased += len(batch.jobs)
                deeper = len(batch.jobs) >= self.batch_size and (
                    through_job is None or max(job.id for job in batch.jobs) < through_job
                )
                chunks = self._chunks(batch)
                for index, chunk in enumerate(chunks):
                    if index == len(chunks) - 1 and deeper and not self._stopping.is_set():
                        following = self._claim_soon()
                    vectors, errors = await self._embed(chunk.rows)
                    if writing is not None:
                        await writing  # the previous chunk's write ran during this embed
                    writing = asyncio.create_task(
                        self._write(chunk, vectors, errors), name="memfuse-embedding-write"
                    )
                if following is None:
                    break
                claimed, following = following, None
                next_batch = await claimed
                held.extend(next_batch.jobs)
                if self._stopping.is_set():
                    # Stopping: finish the batch in hand; the next one goes back at once.
                    await self._release_quietly(next_batch.jobs)
                    break
                batch = next_batch
            if writing is not None:
                await writing
                writing = None
        except BaseException:
            for task in (writing, following):
                if task is not None and not task.done():
                    task.cancel()
            if following is not None:
                with contextlib.suppress(BaseException):
                    held.extend((await following).jobs)
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await writing
            # Cancelled or failed: give the jobs back now rather than when the lease expires
            # (jobs already finished are gone and unaffected).
            await asyncio.shield(self._release_quietly(held))
            raise
        finally:
            await self._unhold(held)
        if batch.jobs and batch.busy == len(batch.jobs):
            # Every row was held by a writer: let it commit before claiming them again.
            await asyncio.sleep(0.05)
        return leased

    async def _claim(self) -> _Batch:
        """Lease due jobs and read their rows' text in one short transaction."""
        started = time.perf_counter()
        async with self._session_factory.begin() as db:
            repository = JobRepository(db)
            jobs = await repository.claim(self.batch_size, owner=self.worker_id, lease=self.lease)
            texts = await repository.texts(jobs) if jobs else {}
        # Held from the commit on; nothing awaits between here and the return, so a claim
        # cancelled after its commit never leaves jobs held that nobody settles.
        self._hold(jobs)
        if jobs:
            self._monitor.record("embedding_claim", (time.perf_counter() - started) * 1000)
            self._count_claim(jobs, texts)
        return _Batch(jobs, texts)

    def _claim_soon(self) -> asyncio.Task[_Batch]:
        """Start the next claim in the background (it runs while the model embeds)."""
        task = asyncio.create_task(self._claim(), name="memfuse-embedding-claim")
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)
        return task

    def _chunks(self, batch: _Batch) -> list[_Chunk]:
        """The batch's rows in chunks of ``chunk_size`` distinct texts, shortest texts first
        (messages, searched next, before episodes), each with its rows' jobs.

        Texts of one length land in one chunk, so the model pads little; the jobs of rows
        that are gone ride with the first chunk, whose write deletes them.
        """
        by_text: dict[str, list[RowText]] = {}
        for row in batch.texts.values():
            by_text.setdefault(row.text, []).append(row)
        jobs_by_key: dict[RowKey, list[Job]] = {}
        for job in batch.jobs:
            jobs_by_key.setdefault(_job_key(job), []).append(job)
        distinct = sorted(by_text, key=len)
        chunks = [
            _Chunk(batch, [row for text in part for row in by_text[text]])
            for part in (
                distinct[start : start + self.chunk_size]
                for start in range(0, len(distinct), self.chunk_size)
            )
        ] or [_Chunk(batch, [])]
        for chunk in chunks:
            chunk.jobs = [job for row in chunk.rows for job in jobs_by_key.pop(_key(row), [])]
        chunks[0].jobs.extend(job for jobs in jobs_by_key.values() for job in jobs)
        return chunks

    async def _write(
        self, chunk: _Chunk, vectors: dict[RowKey, list[float]], errors: dict[RowKey, str]
    ) -> None:
        """Write one chunk's vectors and settle its jobs; count what happened."""
        started = time.perf_counter()
        texts = {_key(row): row for row in chunk.rows}
        written, busy, failed, done = await self._finish(chunk.jobs, texts, vectors, errors)
        self._monitor.record("embedding_write", (time.perf_counter() - started) * 1000)
        chunk.batch.busy += len(busy)
        self._count(chunk.jobs, written, busy, failed, done)
        if written and self._on_written is not None:
            self._on_written()

    async def _finish(
        self,
        jobs: Sequence[Job],
        texts: dict[RowKey, RowText],
        vectors: dict[RowKey, list[float]],
        errors: dict[RowKey, str],
    ) -> tuple[set[RowKey], list[Job], list[Job], int]:
        """Write vectors and settle the jobs in one short transaction that never waits.

        Returns the rows written, the jobs given back because a writer held their row, the
        jobs that failed, and how many jobs were deleted as done.
        """
        async with self._session_factory.begin() as db:
            repository = JobRepository(db)
            current = await repository.lock_rows(list(texts))
            held = await repository.existing([key for key in texts if key not in current])
            unchanged = {key for key, content in current.items() if content == texts[key].content}
            written = {key for key in unchanged if key in vectors}
            await repository.write_vectors([(texts[key], vectors[key]) for key in written])
            busy = [job for job in jobs if _job_key(job) in held]
            failed = [job for job in jobs if _job_key(job) in unchanged and _job_key(job) in errors]
            embedded = [job.id for job in jobs if _job_key(job) in written]
            settled = {job.id for job in (*busy, *failed)} | set(embedded)
            # Embedded rows are locked and hold the embedded text: their jobs are done,
            # whoever leases them now (a lease that expired mid-embed must not leave a job
            # that two workers hand back and forth).
            done = await repository.finish(embedded, owner=None)
            # The row is gone, or its content changed: the change queued a job of its own,
            # or took this one over (then it is no longer this worker's to delete).
            done += await repository.finish(
                [job.id for job in jobs if job.id not in settled], owner=self.worker_id
            )
            await repository.release([job.id for job in busy], owner=self.worker_id)
            await self._handle_failures(repository, failed, errors)
        return written, busy, failed, done

    def _hold(self, jobs: Sequence[Job]) -> None:
        """Count leased jobs as held, and keep their leases renewed while they are."""
        if not jobs:
            return
        for job in jobs:
            self._held[job.id] = self._held.get(job.id, 0) + 1
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="memfuse-lease-renewal")

    async def _unhold(self, jobs: Sequence[Job]) -> None:
        """Jobs settled or given back: stop renewing them (and stop the renewal when none is
        held, so no task outlives the work)."""
        for job in jobs:
            count = self._held.get(job.id, 0) - 1
            if count > 0:
                self._held[job.id] = count
            else:
                self._held.pop(job.id, None)
        renewer = self._renewer
        if not self._held and renewer is not None:
            self._renewer = None
            renewer.cancel()
            await asyncio.wait({renewer})

    async def _renew(self) -> None:
        """Extend the held leases every third of a lease while the model runs, so a slow
        embedder (an API retrying) or a claim waiting for its turn does not lose its jobs to
        another worker midway."""
        while self._held:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            held = sorted(self._held)
            if not held:
                return
            try:
                async with self._session_factory.begin() as db:
                    await JobRepository(db).renew(held, owner=self.worker_id, lease=self.lease)
            except Exception as error:  # the lease may lapse; the work is not lost
                logger.debug("could not renew leases: %s", _describe(error))

    async def _release_quietly(self, jobs: Sequence[Job]) -> None:
        """Give leased jobs back after an error; if that fails too, their lease expires."""
        if not jobs:
            return
        try:
            async with self._session_factory.begin() as db:
                await JobRepository(db).release([job.id for job in jobs], owner=self.worker_id)
        except Exception as error:
            logger.debug("could not give back %d leased jobs: %s", len(jobs), _describe(error))

    async def drain(self) -> None:
        """Return once every job that was due when the drain started is done, including jobs
        other workers hold right now.

        Jobs queued after the start are not waited for (they are embedded all the same), so a
        drain ends under writers that keep the queue busy. A job that was due and is now
        backing off after a failure, or held back again (its text grew), does not hold it up.
        Raises :class:`ClosedError` once the worker is stopping (``close()``), so no batch
        is leased after the worker gave its leases back.
        """
        with translate_unavailable(self._engine.url):
            async with self._session_factory() as db:
                last_id = await JobRepository(db).last_due_id()
            while last_id is not None:
                if self._stopping.is_set():
                    raise ClosedError("the embedding worker is stopped")
                leased = await self.process_batch(through_job=last_id)
                async with self._session_factory() as db:
                    if await JobRepository(db).due_through(last_id) == 0:
                        return
                if not leased:
                    await asyncio.sleep(0.02)  # what is left is leased by another worker

    async def requeue_dead_letters(self, table_name: str | None = None) -> int:
        """Give dead-lettered rows (of one table, or all) a fresh start; returns how many."""
        with translate_unavailable(self._engine.url):
            async with self._session_factory.begin() as db:
                return await JobRepository(db).requeue_dead_letters(table_name)

    async def queue_depth(self) -> int:
        """Jobs waiting, due or not (also refreshes the monitor's queue gauges)."""
        return (await self.refresh_gauges()).depth

    async def refresh_gauges(self) -> QueueCounts:
        """Read the queue's depth and dead letters into the monitor's gauges."""
        with translate_unavailable(self._engine.url):
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
        """One embedder call, timed as ``embedding_batch`` (a failed call counts as an error).

        Each distinct text is embedded once, however many rows read the same (the facts of
        one message, repeated messages): the rows share its vector.
        """
        distinct = list(dict.fromkeys(text.text for text in texts))
        started = time.perf_counter()
        success = False
        try:
            vectors = await self.embedder.embed_documents(distinct)
            by_text = dict(zip(distinct, vectors, strict=True))
            success = True
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self._monitor.record("embedding_batch", elapsed, success=success)
        self.stats.texts_embedded += len(distinct)
        self._monitor.increment("embedding_texts_embedded", len(distinct))
        return [by_text[text.text] for text in texts]

    def _checked(
        self, texts: list[RowText], vectors: list[list[float]]
    ) -> tuple[dict[RowKey, list[float]], dict[RowKey, str]]:
        results: dict[RowKey, list[float]] = {}
        errors: dict[RowKey, str] = {}
        for text, vector in zip(texts, vectors, strict=True):
            if len(vector) != self.embedder.dimension:
                errors[_key(text)] = (
                    f"embedder returned {len(vector)} dimensions, "
                    f"expected {self.embedder.dimension}"
                )
            elif not _finite(vector):
                # pgvector refuses NaN and infinity; stored, one such vector would fail the
                # whole write transaction, batch after batch.
                errors[_key(text)] = "embedder returned a vector with NaN or infinite values"
            else:
                results[_key(text)] = vector
        return results, errors

    async def _handle_failures(
        self, repository: JobRepository, failed: Sequence[Job], errors: dict[RowKey, str]
    ) -> None:
        for job in failed:
            error = errors[(job.table_name, job.row_id)]
            if job.attempts + 1 >= self.max_attempts:
                if await repository.dead_letter([job], error, owner=self.worker_id):
                    self.stats.dead_lettered += 1
                    self._monitor.increment("embedding_jobs_dead_lettered")
                    logger.warning(
                        "embedding of %s %s dead-lettered: %s", job.table_name, job.row_id, error
                    )
            else:
                await repository.retry_later(
                    [job], error, self._backoff(job.attempts), owner=self.worker_id
                )

    def _backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.backoff_base * 2**attempts, self.max_backoff))

    def _count_claim(self, jobs: Sequence[Job], texts: dict[RowKey, RowText]) -> None:
        """Count a claimed batch (its size, and the jobs whose row is gone)."""
        self.stats.batches += 1
        self.stats.rows_gone += sum(1 for job in jobs if _job_key(job) not in texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        self.stats.batch_sizes.append(len(jobs))
        del self.stats.batch_sizes[:-1000]
        self._monitor.set_gauge("embedding_last_batch_jobs", len(jobs))

    def _count(
        self,
        jobs: Sequence[Job],
        written: set[RowKey],
        busy: Sequence[Job],
        failed: Sequence[Job],
        done: int,
    ) -> None:
        """Count one committed write: vectors, lag, jobs done, busy and failed."""
        now = datetime.now(UTC)
        for job in jobs:
            if _job_key(job) in written:
                lag_ms = (now - job.enqueued_at).total_seconds() * 1000
                self._monitor.record("embedding_lag", lag_ms)
        self.stats.jobs_done += done
        self.stats.vectors_written += len(written)
        self.stats.rows_busy += len(busy)
        self.stats.failures += len(failed)
        self._monitor.increment("embedding_vectors_written", len(written))
        self._monitor.increment("embedding_jobs_failed", len(failed))
        if busy:
            self._monitor.increment("embedding_rows_busy", len(busy))

    def start(self) -> None:
        """Run ``concurrency`` loops and the LISTEN connection in the background, supervised.

        Call :meth:`verify` first: a worker must not embed with a model of the wrong size.
        """
        if self._stopping.is_set():
            raise ClosedError("the embedding worker is stopped")
        if self._tasks:
            return
        self._tasks = [
            SupervisedTask(
                f"embedding_worker-{n}",
                self._loop,
                self._monitor,
                metric="embedding_worker_restarts",
            )
            for n in range(self.concurrency)
        ]
        if self._listen:
            self._listener_task = SupervisedTask(
                "listener", self._listen_once, self._monitor, max_backoff=2.0
            )
            self._tasks.append(self._listener_task)
        for task in self._tasks:
            task.start()

    def task_states(self) -> list[TaskState]:
        """The state of each background task (empty when not started)."""
        return [task.state for task in self._tasks]

    def notify(self) -> None:
        """Wake the loops now (in-process writers may call this after committing); a loop
        backing off after an error retries now, since a write just succeeded."""
        self._wake.set()
        for task in self._tasks:
            task.retry_now()

    async def _loop(self) -> None:
        """Process batches until stopped; an error ends the run (the supervisor restarts it)."""
        while not self._stopping.is_set():
            try:
                if await self.process_batch():
                    continue
            except Exception as error:
                self.stats.last_error = _describe(error)
                raise
            await self._refresh_gauges_quietly()
            await wait_at_most(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def _refresh_gauges_quietly(self) -> None:
        """Gauges are best effort: a failed count must not stop the loop."""
        try:
            await self.refresh_gauges()
        except Exception as error:
            logger.debug("could not read the queue's depth: %s", _describe(error))

    async def _listen_once(self) -> None:
        """One LISTEN connection, for as long as it lives; raises when it is lost.

        The connection is probed with ``SELECT 1`` every ``poll_interval`` seconds, so a
        connection that died silently (no FIN from a vanished host) is noticed too. The
        supervisor reconnects after a short backoff and logs the cause.
        """
        url = self._engine.url.render_as_string(hide_password=False)
        connection = await asyncpg.connect(
            **asyncpg_connect_args(url),
            timeout=10,
            server_settings={"application_name": listener_name(self.schema)},
        )
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(_setter(lost))
            await connection.add_listener(self.channel, self._on_notification)
            self._listener = connection
            self.stats.listener_connects += 1
            if self._listener_task is not None:
                self._listener_task.healthy()
            self._wake.set()  # notifications may have been missed while disconnected
            while not self._stopping.is_set():
                await wait_at_most(lost.wait(), self.poll_interval)
                if self._stopping.is_set():
                    return
                if lost.is_set() or connection.is_closed():
                    raise ConnectionError("the LISTEN connection was closed")
                await connection.fetchval("SELECT 1", timeout=min(self.poll_interval, 10.0))
        finally:
            self._listener = None
            if not connection.is_closed():
                connection.terminate()

    def _on_notification(self, *_: object) -> None:
        self.stats.notifications += 1
        self._wake.set()

    async def close(self, grace: float = 10.0) -> None:
        """Stop: batches in hand may finish for up to ``grace`` seconds, else are cancelled;
        leases still held are given back so other workers take the jobs at once."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.stop_soon()
        listener = self._listener
        if listener is not None and not listener.is_closed():
            listener.terminate()
        await asyncio.gather(*(task.stop(grace) for task in tasks))
        # A flush() may be draining in its caller's task: let its batch in hand finish (it
        # takes no new one once stopping) so no lease is taken after they are given back.
        await wait_at_most(self._idle.wait(), grace)
        # A claim started ahead of its turn is a short transaction: let it end (its caller
        # gives the jobs back, being stopped) before every lease is given back.
        if self._claims:
            await asyncio.wait(set(self._claims), timeout=max(grace, 1.0))
        for claim in list(self._claims):
            claim.cancel()
        await self._release_leases()

    async def _release_leases(self) -> None:
        try:
            async with asyncio.timeout(5):
                async with self._session_factory.begin() as db:
                    released = await JobRepository(db).release_owner(self.worker_id)
            if released:
                logger.info("gave back %d leased embedding jobs", released)
        except Exception as error:
            logger.warning(
                "could not give back leased embedding jobs (%s); they return when their "
                "lease expires",
                _describe(error),
            )


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


def _finite(vector: Sequence[float]) -> bool:
    """Whether every value is finite (the sum is, unless one is not or they overflow)."""
    return math.isfinite(sum(vector)) or all(math.isfinite(value) for value in vector)


def _key(text: RowText) -> RowKey:
    return (text.table_name, text.row_id)


def _job_key(job: Job) -> RowKey:
    return (job.table_name, job.row_id)


def _transient(error: BaseException) -> bool:
    """Whether the embedder said the service, not the input, failed."""
    return isinstance(error, ModelCallError) and error.transient


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
