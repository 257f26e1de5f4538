"""SQLAlchemy event hooks that time every statement an engine runs, failed ones included."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.monitor.performance import PerformanceMonitor

QUERY_OPERATION = "db_query"
_STARTS = "memfuse_query_starts"


def instrument_engine(engine: AsyncEngine, monitor: PerformanceMonitor) -> Callable[[], None]:
    """Feed the duration of each statement on ``engine`` to ``monitor`` as ``db_query``.

    Returns a function that removes the hooks again (used for engines a host app owns).
    """

    def before_cursor_execute(conn: Connection, *_: Any) -> None:
        conn.info.setdefault(_STARTS, []).append(time.perf_counter())

    def after_cursor_execute(conn: Connection, *_: Any) -> None:
        _finish(conn, success=True)

    def handle_error(context: ExceptionContext) -> None:
        if context.connection is not None:
            _finish(context.connection, success=False)

    def _finish(conn: Connection, *, success: bool) -> None:
        starts: list[float] | None = conn.info.get(_STARTS)
        if starts:
            elapsed_ms = (time.perf_counter() - starts.pop()) * 1000.0
            monitor.record(QUERY_OPERATION, elapsed_ms, success=success)

    hooks: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before_cursor_execute),
        ("after_cursor_execute", after_cursor_execute),
        ("handle_error", handle_error),
    ]
    target = engine.sync_engine
    for name, hook in hooks:
        event.listen(target, name, hook)

    def remove() -> None:
        for name, hook in hooks:
            if event.contains(target, name, hook):
                event.remove(target, name, hook)

    return remove
