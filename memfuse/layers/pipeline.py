"""The layer pipeline: folds durable M0 rows into M1 episodes and M2 facts.

Work is found in the database, not in memory: a session is pending for a layer while its
message counter is ahead of the layer's progress. So a crash or restart loses nothing, and
the next pass picks up where the last committed one stopped. Each layer's result commits
with its progress in one transaction, so nothing is processed twice; a pass that finds its
progress moved (by another process, or by an edit) discards its result and reads again.

Exactly-once across processes rests on the layer's progress row: a step reads holding it
shared (so the progress, the messages and the open episode it reads are one state) and
writes holding it exclusively (a *local* layer, whose work calls no model and no network,
holds it exclusively from its read to its commit, in one transaction), and an edit's
rebuild holds both rows of the session exclusively while it bumps their ``generation``
(creating them if need be, so it cannot miss a row a pass is creating). Lock order: user,
session, layer progress, the user's fact lock, memory rows, embedding jobs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.background import SupervisedTask
from memfuse.db.errors import is_unavailable
from memfuse.errors import ClosedError, PipelineError
from memfuse.layers.chunk import message_chunk
from memfuse.layers.processor import LayerProcessor
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.messages import MessageRepository
from memfuse.repositories.progress import Progress, ProgressRepository
from memfuse.repositories.tenancy import SessionRepository, lock_user_and_session
from memfuse.types import ChunkData, TaskState
from memfuse.waiting import wait_at_most

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class _Read:
    """What a step read: the progress, the messages after it (up to ``upto``), the context."""

    progress: Progress
    messages: list[ChunkData]
    upto: int
    context: Any


@dataclass(slots=True)
class PassReport:
    """What one pass did: messages processed per layer, and the sessions that failed."""

    processed: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[Progress, BaseException]] = field(default_factory=list)

    def add(self, layer: str, count: int) -> None:
        self.processed[layer] = self.processed.get(layer, 0) + count


async def _all_or_none(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the units of a pass at once; when one raises, cancel the rest and raise its error.

    ``asyncio.gather`` would return at the first error and leave the others running outside
    the pass lock, overlapping the next pass.
    """
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    if not tasks:
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in done:
        error = task.exception()
        if error is not None:
            raise error


class LayerPipeline:
    """Runs the M1 and M2 processors over pending sessions, in parallel or one at a time.

    ``parallel`` (switchable at run time with :meth:`set_parallel`) runs the layers of a
    session and several sessions at once, at most ``concurrency`` units at a time;
    sequential mode does one layer of one session at a time, M1 before M2.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        processors: Sequence[LayerProcessor[Any, Any]],
        monitor: PerformanceMonitor,
        *,
        parallel: bool = True,
        concurrency: int = 4,
        batch_messages: int = 500,
        poll_interval: float = 30.0,
        pass_interval: float = 1.0,
        on_stored: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        """``on_stored(user_id)`` runs after each commit of new M1/M2 rows (caches use it).

        ``pass_interval`` is the shortest time between the starts of two background passes:
        messages written meanwhile wait and are processed together, in fewer and larger
        steps (each step's reads, locks and writes are paid per step, not per message).
        :meth:`flush` and :meth:`process_pending` never wait for it."""
        if concurrency < 1 or batch_messages < 1:
            raise ValueError("concurrency and batch_messages must be at least 1")
        if pass_interval < 0:
            raise ValueError("pass_interval must be 0 or more")
        self._session_factory = session_factory
        self.processors = {processor.layer: processor for processor in processors}
        self._monitor = monitor
        self._parallel = parallel
        self._concurrency = concurrency
        self._batch_messages = batch_messages
        self._poll_interval = poll_interval
        self._pass_interval = pass_interval
        self._on_stored = on_stored
        self._pass_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._runner: SupervisedTask | None = None
        self._closed = False

    @property
    def parallel(self) -> bool:
        return self._parallel

    def set_parallel(self, parallel: bool) -> None:
        """Switch between parallel and sequential processing; applies from the next unit."""
        self._parallel = parallel

    async def process_pending(self, *, retry_failed: bool = True) -> PassReport:
        """Process every pending session, up to the messages it had when the pass first saw
        it; one pass at a time. Messages written meanwhile are the next pass's: a pass that
        chased them would never end while writers keep up with it.

        ``retry_failed`` also retries sessions still backing off after a failure. Failures
        do not stop other sessions; they are in the report and logged.
        """
        async with self._pass_lock:
            report = PassReport()
            attempted: set[tuple[Any, str]] = set()
            while True:
                async with self._session_factory() as db:
                    pending = await ProgressRepository(db).pending(
                        include_backoff=retry_failed, limit=1000
                    )
                pending = [
                    p
                    for p in pending
                    if p.layer in self.processors and (p.session_id, p.layer) not in attempted
                ]
                if not pending:
                    return report
                attempted.update((p.session_id, p.layer) for p in pending)
                await self._process(pending, report)

    async def flush(self) -> PassReport:
        """Process everything written so far; raise :class:`PipelineError` if a session failed."""
        report = await self.process_pending(retry_failed=True)
        if report.failures:
            details = "; ".join(
                f"{p.layer} of session {p.session_id}: {error!r}" for p, error in report.failures
            )
            raise PipelineError(f"{len(report.failures)} session layer(s) failed: {details}")
        return report

    async def _process(self, pending: Sequence[Progress], report: PassReport) -> None:
        by_session: dict[Any, list[Progress]] = {}
        for progress in pending:
            by_session.setdefault(progress.session_id, []).append(progress)
        order = {layer: index for index, layer in enumerate(sorted(self.processors))}
        units = [sorted(items, key=lambda p: order[p.layer]) for items in by_session.values()]
        if not self._parallel:
            for items in units:
                for progress in items:
                    await self._run_unit(progress, report)
            return
        limit = asyncio.Semaphore(self._concurrency)

        async def run(progress: Progress) -> None:
            async with limit:
                await self._run_unit(progress, report)

        await _all_or_none(run(progress) for items in units for progress in items)

    async def _run_unit(self, progress: Progress, report: PassReport) -> None:
        processor = self.processors[progress.layer]
        try:
            report.add(progress.layer, await self.process_session(processor, progress))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_unavailable(error):
                # The database, not this session, failed: no failure is recorded against
                # the session; the pass ends and the caller (or the supervisor) retries.
                raise
            if not await self._session_exists(progress):
                logger.debug("session %s was deleted while processed", progress.session_id)
                return
            logger.warning(
                "%s processing of session %s failed: %r", progress.layer, progress.session_id, error
            )
            report.failures.append((progress, error))
            await self._record_failure(progress, error)

    async def process_session(self, processor: LayerProcessor[Any, Any], progress: Progress) -> int:
        """Bring one layer of one session up to ``progress.message_count`` (or beyond, within
        the last batch); returns the messages processed.

        The bound keeps a step finite: a session written to as fast as it is processed would
        otherwise hold its unit (and ``flush()``) forever and starve the other sessions.
        """
        step = self._local_step if processor.local else self._step
        processed = 0
        while True:
            done = await step(processor, progress)
            if done is None:
                return processed
            count, upto = done
            processed += count
            if upto >= progress.message_count:
                return processed  # done up to the target: no transaction to find that out

    async def _local_step(
        self, processor: LayerProcessor[Any, Any], progress: Progress
    ) -> tuple[int, int] | None:
        """One step in one transaction that holds the progress row exclusively from the
        read to the commit (``compute`` is local: no lock waits on a model or the network).
        Returns the messages processed and the sequence number reached; ``None``: nothing
        to do."""
        with self._monitor.track_operation(processor.operation):
            async with self._session_factory.begin() as db:
                read = await self._read(db, processor, progress, lock="update")
                if read is None:
                    return None
                result = await processor.compute(read.messages, read.context)
                await processor.store(db, read.progress, result)
                await ProgressRepository(db).advance(
                    read.progress.session_id, processor.layer, read.upto
                )
        if self._on_stored is not None:
            self._on_stored(read.progress.user_id)
        return len(read.messages), read.upto

    async def _step(
        self, processor: LayerProcessor[Any, Any], progress: Progress
    ) -> tuple[int, int] | None:
        """One step in two transactions, with ``compute`` (an LLM call) outside both: the
        read holds the progress row shared, so no store or rebuild commits between its
        statements; the write holds it exclusively and stores only if neither
        ``processed_seq`` nor ``generation`` moved since the read (else ``(0, -1)``: read
        again)."""
        async with self._session_factory.begin() as db:
            read = await self._read(db, processor, progress, lock="share")
        if read is None:
            return None
        current = read.progress
        with self._monitor.track_operation(processor.operation):
            result = await processor.compute(read.messages, read.context)
            async with self._session_factory.begin() as db:
                if not await self._lock_scope(db, current):
                    return None
                progress_rows = ProgressRepository(db)
                locked = await progress_rows.read(
                    current.user_id, current.session_id, processor.layer, lock="update"
                )
                if locked is None or (locked.processed_seq, locked.generation) != (
                    current.processed_seq,
                    current.generation,
                ):
                    return 0, -1
                await processor.store(db, locked, result)
                await progress_rows.advance(current.session_id, processor.layer, read.upto)
        if self._on_stored is not None:
            self._on_stored(current.user_id)
        return len(read.messages), read.upto

    async def _read(
        self,
        db: AsyncSession,
        processor: LayerProcessor[Any, Any],
        progress: Progress,
        *,
        lock: Literal["share", "update"],
    ) -> _Read | None:
        """Lock the step's scope, read its progress (holding it as ``lock`` says), the next
        messages and the layer's context; ``None`` when there is nothing to do."""
        # Creating the progress row checks its foreign keys; lock in the usual order first,
        # or a concurrent user deletion deadlocks with that check.
        if not await self._lock_scope(db, progress):
            return None
        current = await ProgressRepository(db).read(
            progress.user_id, progress.session_id, processor.layer, lock=lock
        )
        if (
            current is None
            or not current.pending
            or current.processed_seq >= progress.message_count
        ):
            return None
        rows = await MessageRepository(db).read_after(
            current.session_id, current.processed_seq, current.message_count, self._batch_messages
        )
        context = await processor.load(db, current)
        full = len(rows) == self._batch_messages
        upto = rows[-1].seq if full else current.message_count
        return _Read(current, [message_chunk(row) for row in rows], upto, context)

    @staticmethod
    async def _lock_scope(db: AsyncSession, progress: Progress) -> bool:
        """Hold the user and session (shared) for a step; ``False`` if they were deleted."""
        return await lock_user_and_session(db, progress.user_id, progress.session_id)

    async def _session_exists(self, progress: Progress) -> bool:
        async with self._session_factory() as db:
            found = await SessionRepository(db).get(progress.user_id, progress.session_id)
        return found is not None

    async def _record_failure(self, progress: Progress, error: BaseException) -> None:
        backoff = min(timedelta(seconds=2 ** min(progress.failures + 1, 20)), MAX_BACKOFF)
        try:
            async with self._session_factory.begin() as db:
                await ProgressRepository(db).record_failure(
                    progress.session_id,
                    progress.layer,
                    f"{type(error).__name__}: {error}",
                    backoff=backoff,
                )
        except Exception:
            logger.exception("could not record the failure of session %s", progress.session_id)

    def notify(self) -> None:
        """Tell the background runner that new messages were written (a write succeeded, so
        a runner backing off after an outage retries now)."""
        self._wake.set()
        if self._runner is not None:
            self._runner.retry_now()

    def start(self) -> None:
        """Run passes in the background: now, whenever :meth:`notify` is called, and every
        ``poll_interval`` seconds (which retries failed sessions and picks up messages other
        processes wrote but did not process). The loop runs supervised: an unexpected error
        is logged, counted as ``pipeline_restarts`` and the loop restarts after a backoff."""
        if self._closed:
            raise ClosedError("the pipeline is closed")
        if self._runner is None:
            self._runner = SupervisedTask("pipeline", self._run_forever, self._monitor)
            self._runner.start()

    def task_states(self) -> list[TaskState]:
        """The background runner's state, for health checks; empty when not started."""
        return [] if self._runner is None else [self._runner.state]

    async def _run_forever(self) -> None:
        # A (re)started loop passes at once: work may be pending since before the failure.
        self._wake.set()
        loop = asyncio.get_running_loop()
        while not self._closed:
            await wait_at_most(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            started = loop.time()
            await self.process_pending(retry_failed=False)
            if self._runner is not None:
                self._runner.healthy()
            # Messages written from now on join the next pass, at most this much later.
            await asyncio.sleep(max(0.0, started + self._pass_interval - loop.time()))

    async def close(self) -> None:
        """Stop the background runner; work in progress rolls back and is redone later."""
        self._closed = True
        if self._runner is not None:
            await self._runner.stop()
