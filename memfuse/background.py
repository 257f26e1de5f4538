"""Supervised background tasks: a loop that dies on an unexpected error comes back.

Every long-running task of memfuse (the LISTEN connection, the embedding worker's loops, the
layer pipeline's runner, the write buffer's flusher) runs under :class:`SupervisedTask`. When
its body raises, the failure is logged once at WARNING with its cause, counted in the monitor
as ``<name>_restarts``, and the body runs again after a backoff that doubles from
``initial_backoff`` up to ``max_backoff`` (and starts over once a run lasted ``healthy_after``
seconds). So no background task ends silently: it is either running, waiting to restart
(``state`` says why), or stopped on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from memfuse.db.errors import describe_unavailable, is_unavailable
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.types import TaskState, TaskStatus
from memfuse.waiting import wait_at_most

logger = logging.getLogger(__name__)


class SupervisedTask:
    """Runs ``body()`` in the background until :meth:`stop`, restarting it after failures.

    ``body`` should run until cancelled (or return once its own stop condition holds); a
    return while the task is not stopping counts as a failure, since a background loop that
    quietly ends is exactly what supervision exists to catch.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        monitor: PerformanceMonitor,
        *,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        healthy_after: float = 30.0,
        metric: str | None = None,
    ) -> None:
        """``metric`` is the monitor counter of restarts (default ``<name>_restarts``)."""
        self.name = name
        self.metric = metric if metric is not None else f"{name}_restarts"
        self._body = body
        self._monitor = monitor
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.restarts = 0
        self.last_error: str | None = None
        self._restarting = False
        self._backoff = initial_backoff
        self._stopping = asyncio.Event()
        self._retry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> TaskState:
        if self._task is None or self._task.done():
            status: TaskStatus = "stopped"
        elif self._restarting:
            status = "restarting"
        else:
            status = "running"
        return TaskState(self.name, status, self.restarts, self.last_error)

    def start(self) -> None:
        """Start supervising (again after a stop is not allowed: make a new one)."""
        if self._stopping.is_set():
            raise RuntimeError(f"{self.name} was stopped")
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"memfuse-{self.name}")

    async def _supervise(self) -> None:
        self._backoff = self.initial_backoff
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._body()
                if self._stopping.is_set():
                    return
                error: BaseException = RuntimeError("the loop returned while not stopping")
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    raise
                # Cancelled from inside (a body's own task), not by stop(): restart.
                error = RuntimeError("the loop was cancelled")
            except Exception as failure:
                error = failure
            if time.monotonic() - started >= self.healthy_after:
                self._backoff = self.initial_backoff
            described = (
                describe_unavailable(error)
                if is_unavailable(error)
                else f"{type(error).__name__}: {error}"
            )
            # The same failure again before any healthy run (a database that stays down) is
            # logged at DEBUG: one WARNING per cause, not one per retry.
            repeated = described == self.last_error and self._backoff > self.initial_backoff
            self.restarts += 1
            self.last_error = described
            self._monitor.increment(self.metric)
            logger.log(
                logging.DEBUG if repeated else logging.WARNING,
                "background task %s failed (%s); restarting in %.1f s",
                self.name,
                described,
                self._backoff,
            )
            logger.debug("background task %s failure", self.name, exc_info=error)
            self._restarting = True
            self._retry.clear()
            try:
                await wait_at_most(_either(self._stopping, self._retry), self._backoff)
            finally:
                self._restarting = False
            self._backoff = min(self._backoff * 2, self.max_backoff)

    def retry_now(self) -> None:
        """End a backoff early: something showed the cause is gone (a write succeeded)."""
        self._retry.set()

    def healthy(self) -> None:
        """The body reached a good state (e.g. connected): the next failure restarts fast."""
        self._backoff = self.initial_backoff

    def stop_soon(self) -> None:
        """Ask the task to stop without waiting (its body sees ``stopping``)."""
        self._stopping.set()

    async def stop(self, grace: float | None = 0.0) -> None:
        """Stop: let the body finish for up to ``grace`` seconds (``None``: as long as it
        takes), then cancel it. Cancelling this call cancels the body too."""
        self._stopping.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            if grace is None or grace > 0:
                await asyncio.wait({task}, timeout=grace)
        finally:
            if not task.done():
                task.cancel()
        await asyncio.wait({task})


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Return once either event is set."""
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
