"""Group commit: concurrent ``add()`` calls share few transactions, each caller still
returns only once its own rows are committed.

One flusher task writes batches. A batch goes out when the first of these holds, checked in
this order: the buffer is closing, someone asked for a flush, the pending messages reach
``max_messages``, the pending tokens reach ``max_tokens``, or the oldest call has waited
``max_delay``. With ``max_delay`` 0 a batch leaves as soon as the previous one committed,
so a lone writer waits for nobody and many writers share each commit.

The buffer is bounded: when ``max_pending`` messages wait, callers wait for room instead of
anything being dropped. A failed batch is retried one call at a time, so a bad call fails
alone and every other call still commits. A caller is never told its rows are written
unless they committed; on failure it gets the exception and may retry with the same ids.

Every queued caller gets an answer: its ids, its error, or :class:`ClosedError` if the
buffer was torn down (``close()`` itself cancelled) before its batch committed. No call
waits forever. The flusher runs supervised: an unexpected error restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from memfuse.background import SupervisedTask
from memfuse.errors import ClosedError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.types import BufferStats, TaskState
from memfuse.waiting import wait_at_most

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Pending(Generic[Request, Result]):
    request: Request
    size: int
    tokens: int
    ticket: int
    enqueued_at: float
    future: asyncio.Future[Result]


class WriteBuffer(Generic[Request, Result]):
    """Coalesces calls into batches written by ``write_batch`` in one transaction each.

    ``write_batch(requests)`` must write all requests atomically and return one result per
    request, in order. ``size`` and ``tokens`` measure a request for the flush thresholds.
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[Request]], Awaitable[Sequence[Result]]],
        *,
        size: Callable[[Request], int],
        tokens: Callable[[Request], int],
        monitor: PerformanceMonitor,
        max_messages: int = 500,
        max_tokens: int = 50_000,
        max_delay: float = 0.0,
        max_pending: int = 10_000,
        fail_together: Callable[[BaseException], bool] | None = None,
    ) -> None:
        """``fail_together(error)`` says a failed batch's error is not any one call's fault
        (the database is down, say): every call gets it at once instead of a retry each."""
        if max_messages < 1 or max_tokens < 1 or max_pending < max_messages or max_delay < 0:
            raise ValueError(
                "need max_messages >= 1, max_tokens >= 1, max_pending >= max_messages "
                "and max_delay >= 0"
            )
        self._write_batch = write_batch
        self._size = size
        self._tokens = tokens
        self._monitor = monitor
        self.max_messages = max_messages
        self.max_tokens = max_tokens
        self.max_delay = max_delay
        self.max_pending = max_pending
        self._fail_together = fail_together
        self.stats = BufferStats()
        self._queue: deque[_Pending[Request, Result]] = deque()
        self._pending_messages = 0
        self._pending_tokens = 0
        self._issued = 0
        self._done = 0
        self._flush_target = 0
        self._closing = False
        self._changed = asyncio.Condition()
        self._flusher: SupervisedTask | None = None
        self._in_flight: list[_Pending[Request, Result]] = []

    @property
    def pending_messages(self) -> int:
        return self._pending_messages

    async def submit(self, request: Request) -> Result:
        """Queue ``request`` and return its result once its batch committed."""
        size, tokens = self._size(request), self._tokens(request)
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._closing
                    or self._pending_messages == 0
                    or self._pending_messages + size <= self.max_pending
                )
            )
            if self._closing:
                raise ClosedError("the write buffer is closed")
            self._ensure_flusher()
            self._issued += 1
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            entry = _Pending(
                request=request,
                size=size,
                tokens=tokens,
                ticket=self._issued,
                enqueued_at=time.monotonic(),
                future=future,
            )
            self._queue.append(entry)
            self._pending_messages += size
            self._pending_tokens += tokens
            self._changed.notify_all()
        return await future

    async def flush(self) -> None:
        """Return once every call submitted before this one has committed or failed."""
        async with self._changed:
            target = self._issued
            if self._done >= target:
                return
            self._flush_target = max(self._flush_target, target)
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self._done >= target)

    async def close(self) -> None:
        """Write everything pending, then refuse new calls. Nothing queued is dropped.

        If this is cancelled (or the flusher cannot finish), every call still waiting gets
        :class:`ClosedError` instead of hanging; a second ``close()`` returns at once.
        """
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        try:
            if self._flusher is not None:
                await self._flusher.stop(grace=None)
        finally:
            if self._flusher is not None:
                await self._flusher.stop()  # cancelled midway: stop it for good
            self._abandon()

    def task_states(self) -> list[TaskState]:
        """The flusher's state (empty before the first call)."""
        return [] if self._flusher is None else [self._flusher.state]

    def _abandon(self) -> None:
        """Answer every call not written with :class:`ClosedError`; wake flush waiters."""
        error = ClosedError("the write buffer was closed before this call was written")
        for entry in (*self._in_flight, *self._queue):
            _fail(entry, error)
        self._in_flight = []
        self._queue.clear()
        self._pending_messages = self._pending_tokens = 0
        self._done = max(self._done, self._issued)
        self._flush_target = 0
        if not self._changed.locked():
            # Waiters re-check on their next wake-up; wake them without taking the lock.
            asyncio.get_running_loop().create_task(self._wake_all())

    async def _wake_all(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = SupervisedTask("buffer_flusher", self._run, self._monitor)
            self._flusher.start()

    def _reason(self, now: float) -> str | None:
        """Why a batch should go now, in priority order, or ``None`` to keep waiting."""
        if self._closing:
            return "shutdown"
        if self._flush_target > self._done:
            return "explicit"
        if self._pending_messages >= self.max_messages:
            return "size"
        if self._pending_tokens >= self.max_tokens:
            return "tokens"
        if now - self._queue[0].enqueued_at >= self.max_delay:
            return "age"
        return None

    async def _run(self) -> None:
        """Write batches until closed and empty (returning then ends supervision)."""
        while True:
            async with self._changed:
                while True:
                    if not self._queue:
                        if self._closing:
                            self._flusher_done()
                            return
                        await self._changed.wait()
                        continue
                    now = time.monotonic()
                    reason = self._reason(now)
                    if reason is not None:
                        break
                    deadline = self._queue[0].enqueued_at + self.max_delay
                    await wait_at_most(self._changed.wait(), deadline - now)
                batch, last_ticket = self._take()
                self._in_flight = batch
                self._changed.notify_all()
            try:
                await self._write(batch, reason)
            except Exception as error:
                # A bug past _write's own handling: answer the batch, then restart.
                for entry in batch:
                    _fail(entry, error)
                self._done = max(self._done, last_ticket)
                asyncio.get_running_loop().create_task(self._wake_all())
                raise
            finally:
                self._in_flight = []
            async with self._changed:
                self._done = max(self._done, last_ticket)
                self._changed.notify_all()

    def _flusher_done(self) -> None:
        """Closing and drained: tell the supervisor this return is the planned end."""
        if self._flusher is not None:
            self._flusher.stop_soon()

    def _take(self) -> tuple[list[_Pending[Request, Result]], int]:
        """The oldest calls up to ``max_messages`` (at least one), and the last ticket taken.

        Calls cancelled while queued are dropped: their callers were never told they were
        written. They still count as taken, so a flush does not wait for them.
        """
        batch: list[_Pending[Request, Result]] = []
        messages = 0
        last_ticket = self._done
        while self._queue:
            entry = self._queue[0]
            if batch and messages + entry.size > self.max_messages:
                break
            self._queue.popleft()
            self._pending_messages -= entry.size
            self._pending_tokens -= entry.tokens
            last_ticket = entry.ticket
            if entry.future.cancelled():
                continue
            batch.append(entry)
            messages += entry.size
        return batch, last_ticket

    async def _write(self, batch: list[_Pending[Request, Result]], reason: str) -> None:
        if not batch:
            return
        self.stats.batches[reason] += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            with self._monitor.track_operation("buffer_flush"):
                results = await self._write_batch([entry.request for entry in batch])
        except asyncio.CancelledError:
            for entry in batch:
                _fail(
                    entry,
                    ClosedError(
                        "the write buffer was cancelled during this call's commit; it may or "
                        "may not be stored: retry it with the same message ids"
                    ),
                )
            raise
        except Exception as error:
            if len(batch) == 1 or (self._fail_together is not None and self._fail_together(error)):
                self.stats.calls_failed += len(batch)
                for entry in batch:
                    _fail(entry, error)
                return
            logger.info("batch of %d calls failed (%s); writing them one by one", len(batch), error)
            for entry in batch:
                await self._write([entry], reason)
            return
        for entry, result in zip(batch, results, strict=True):
            self.stats.calls_written += 1
            self.stats.messages_written += entry.size
            if not entry.future.done():
                entry.future.set_result(result)


def _fail(entry: _Pending[Request, Result], error: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(error)
