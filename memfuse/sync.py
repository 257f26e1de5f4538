"""``MemFuse`` without ``await``, for scripts: the async core on a private event loop thread.

Every call hands its coroutine to that loop (``asyncio.run_coroutine_threadsafe``) and waits
for the result, so several threads may share one client; the loop thread is the only one
that touches the pool, the buffer and the background tasks. A call made from a thread whose
own event loop is running is refused: blocking there would stall that loop, and the async
:class:`memfuse.MemFuse` is the API to ``await`` instead. ``close()`` (or leaving the ``with``
block, or the interpreter exiting) closes the core and stops the thread.

Methods mirror :class:`memfuse.MemFuse` and :class:`memfuse.Memory` (same arguments, same
results and errors); each is generated from its async twin by :func:`_blocking`.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
import uuid
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from memfuse import memory as core
from memfuse.errors import ClosedError, MemfuseError
from memfuse.types import MemoryScope

P = ParamSpec("P")
R = TypeVar("R")

CLOSE_TIMEOUT = 60.0
"""Seconds ``close()`` waits for the core to shut down (the buffer flushes, tasks stop)."""


class RunningLoopError(MemfuseError, RuntimeError):
    """A blocking call was made inside a running event loop; use the async API there."""


class _LoopThread:
    """One event loop running forever on a daemon thread, until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="memfuse-sync-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running in this thread: blocking is fine
        else:
            coroutine.close()
            raise RunningLoopError(
                "memfuse.sync cannot block inside a running event loop (an async function, "
                "a notebook cell); use `await` with memfuse.MemFuse there"
            )
        if not self._thread.is_alive():
            coroutine.close()
            raise ClosedError("this memfuse.sync.MemFuse is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        if not self.loop.is_closed():
            self.loop.close()


class _Bound:
    """What a generated method needs: the async object it calls and the loop that runs it."""

    _core: Any
    _runner: _LoopThread


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[_Bound, P], R]:
    """The blocking twin of an async method: same arguments, same result."""

    @functools.wraps(method)
    def call(self: _Bound, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.run(method(self._core, *args, **kwargs))

    return call


class Memory(_Bound):
    """:class:`memfuse.Memory` without ``await``: one user's memory seen from one session."""

    def __init__(self, memory: core.Memory, runner: _LoopThread) -> None:
        self._core = memory
        self._runner = runner

    @property
    def scope(self) -> MemoryScope:
        return self._core.scope  # type: ignore[no-any-return]

    @property
    def user(self) -> str:
        return self.scope.user

    @property
    def agent(self) -> str:
        return self.scope.agent

    @property
    def session(self) -> str:
        return self.scope.session

    def __repr__(self) -> str:
        return f"memfuse.sync.{self._core!r}"

    add = _blocking(core.Memory.add)
    query = _blocking(core.Memory.query)
    get_message = _blocking(core.Memory.get_message)
    list_messages = _blocking(core.Memory.list_messages)
    update_message = _blocking(core.Memory.update_message)
    delete_message = _blocking(core.Memory.delete_message)
    list_episodes = _blocking(core.Memory.list_episodes)
    list_facts = _blocking(core.Memory.list_facts)
    add_knowledge = _blocking(core.Memory.add_knowledge)
    get_knowledge = _blocking(core.Memory.get_knowledge)
    list_knowledge = _blocking(core.Memory.list_knowledge)
    update_knowledge = _blocking(core.Memory.update_knowledge)
    delete_knowledge = _blocking(core.Memory.delete_knowledge)
    delete_session = _blocking(core.Memory.delete_session)
    delete_user = _blocking(core.Memory.delete_user)


class MemFuse(_Bound):
    """:class:`memfuse.MemFuse` without ``await``; started on creation.

    Takes what :class:`memfuse.MemFuse` takes (a URL, ``settings``, a ``container``, or any
    setting as a keyword). Use it in a ``with`` block or call :meth:`close`; the interpreter's
    exit closes it otherwise.
    """

    def __init__(self, database_url: str | None = None, **options: Any) -> None:
        self._runner = _LoopThread()
        try:
            self._core = self._runner.run(_started(database_url, options))
        except BaseException:
            self._runner.stop()
            raise
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def init(self, user: str, agent: str | None = None, session: str | None = None) -> Memory:
        """The memory of ``user``'s ``session`` with ``agent``, created if missing."""
        return Memory(self._runner.run(self._core.init(user, agent, session)), self._runner)

    def session_memory(self, session_id: uuid.UUID) -> Memory:
        """The memory of an existing session given by id."""
        return Memory(self._runner.run(self._core.session_memory(session_id)), self._runner)

    search = _blocking(core.MemFuse.search)
    flush = _blocking(core.MemFuse.flush)
    analyze = _blocking(core.MemFuse.analyze)
    health = _blocking(core.MemFuse.health)
    metrics = _blocking(core.MemFuse.metrics)
    requeue_dead_letters = _blocking(core.MemFuse.requeue_dead_letters)

    def close(self) -> None:
        """Close the core (the buffer flushes, background tasks stop) and stop the loop
        thread; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        try:
            self._runner.run(self._core.close(), timeout=CLOSE_TIMEOUT)
        finally:
            self._runner.stop()


async def _started(database_url: str | None, options: dict[str, Any]) -> core.MemFuse:
    memfuse = core.MemFuse(database_url, **options)
    await memfuse.start()
    return memfuse
