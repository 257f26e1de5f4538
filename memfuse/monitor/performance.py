"""In-process timing statistics, threshold alerts and regression checks.

Timings arrive from SQLAlchemy engine event hooks (every SQL statement) and from
services, on the event loop thread and on worker threads. Recording therefore has to be
thread-safe and cheap: an O(1) append to a bounded deque plus a few counters under one
lock. Percentiles are only computed when statistics are asked for.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar, cast

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_THRESHOLDS_MS: Mapping[str, float] = MappingProxyType(
    {
        "connection_pool_access": 10.0,
        "m0_operation": 100.0,
        "m1_operation": 150.0,
        "m2_operation": 150.0,
        "buffer_flush": 50.0,
        "service_access": 10.0,
        "health_check": 1000.0,
    }
)
"""Latency budgets (ms); a sample above its budget raises an :class:`Alert`."""

MAX_ALERTS: Final = 100
"""How many recent alerts are kept; older ones are dropped so memory stays bounded."""

REGRESSION_METRICS: Final = frozenset({"p50_ms", "p95_ms", "p99_ms", "avg_ms"})


@dataclass(frozen=True)
class OperationStats:
    """Snapshot of one operation's timings.

    ``count``/``errors``/``avg_ms``/``min_ms``/``max_ms`` cover every sample since the last
    clear; the percentiles only cover the most recent ``window`` samples so they follow
    current behaviour instead of being diluted by old history.
    """

    operation: str
    count: int
    errors: int
    success_rate: float
    avg_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    window: int

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain JSON-able form, for exports and baselines stored on disk."""
        return {
            "operation": self.operation,
            "count": self.count,
            "errors": self.errors,
            "success_rate": self.success_rate,
            "avg_ms": self.avg_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "window": self.window,
        }


@dataclass(frozen=True)
class Alert:
    """One sample that exceeded its operation's threshold."""

    operation: str
    duration_ms: float
    threshold_ms: float
    at: datetime

    def to_dict(self) -> dict[str, float | str]:
        """JSON-able form (``at`` as ISO 8601)."""
        return {
            "operation": self.operation,
            "duration_ms": self.duration_ms,
            "threshold_ms": self.threshold_ms,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class Regression:
    """A metric that got worse than the baseline by more than the tolerance."""

    operation: str
    metric: str
    baseline_ms: float
    current_ms: float
    change_pct: float


AlertCallback = Callable[[Alert], None]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default 'linear').

    The rank is ``pct / 100 * (n - 1)``; the result interpolates between the two samples
    around it, so it is stable for small windows and exact for the min/max ends.
    ``sorted_values`` must be non-empty and sorted ascending.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    rank = pct / 100.0 * (len(sorted_values) - 1)
    lo = math.floor(rank)
    hi = math.ceil(rank)
    low_value = sorted_values[lo]
    if lo == hi:
        return low_value
    return low_value + (sorted_values[hi] - low_value) * (rank - lo)


@dataclass
class _OperationData:
    """Mutable per-operation accumulator; only touched while holding the monitor lock."""

    history: deque[float]
    count: int = 0
    errors: int = 0
    total_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0


class _Snapshot(NamedTuple):
    operation: str
    samples: int  # not "count": that would shadow tuple.count
    errors: int
    total_ms: float
    min_ms: float
    max_ms: float
    history: list[float]


@dataclass
class _OperationTimer:
    """Context manager behind :meth:`PerformanceMonitor.track_operation`.

    A class rather than ``@contextmanager`` keeps the hot path free of generator overhead.
    """

    monitor: PerformanceMonitor
    operation: str
    _start: float = field(default=0.0, init=False)

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_ms = (time.perf_counter() - self._start) * 1000.0
        self.monitor.record(self.operation, elapsed_ms, success=exc_type is None)


def _validate_threshold(operation: str, threshold_ms: float) -> float:
    # `not >` also rejects NaN, which would silently disable alerting.
    if not threshold_ms > 0:
        raise ValueError(f"threshold for {operation!r} must be > 0 ms, got {threshold_ms!r}")
    return float(threshold_ms)


class PerformanceMonitor:
    """Thread-safe recorder of operation timings with alerts and regression detection."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        thresholds: Mapping[str, float] | None = None,
        enabled: bool = True,
    ) -> None:
        """Create a monitor.

        ``thresholds`` is merged over :data:`DEFAULT_THRESHOLDS_MS` (``None`` keeps just the
        defaults) so callers only name the budgets they want to change.
        """
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size!r}")
        merged = dict(DEFAULT_THRESHOLDS_MS)
        if thresholds is not None:
            merged.update(thresholds)
        self._thresholds: dict[str, float] = {
            name: _validate_threshold(name, value) for name, value in merged.items()
        }
        self._history_size = history_size
        self._enabled = enabled
        self._lock = threading.Lock()
        self._ops: dict[str, _OperationData] = {}
        self._gauges: dict[str, float] = {}
        self._counters: dict[str, int] = {}
        self._alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)
        self._callbacks: list[AlertCallback] = []
        self._baseline: dict[str, OperationStats] | None = None

    # -- switches -------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether :meth:`record` stores samples."""
        return self._enabled

    @property
    def history_size(self) -> int:
        """Maximum number of recent samples kept per operation for percentiles."""
        return self._history_size

    def set_history_size(self, history_size: int) -> None:
        """Change the percentile window; each operation keeps its most recent samples."""
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size!r}")
        with self._lock:
            self._history_size = history_size
            for data in self._ops.values():
                data.history = deque(data.history, maxlen=history_size)

    def enable(self) -> None:
        """Resume recording."""
        self._enabled = True

    def disable(self) -> None:
        """Turn :meth:`record` into a no-op, e.g. to shave overhead in production."""
        self._enabled = False

    # -- recording ------------------------------------------------------------------------

    def record(self, operation: str, duration_ms: float, *, success: bool = True) -> None:
        """Record one sample and fire alert callbacks if it exceeds the threshold.

        Callbacks run outside the lock so they may call back into the monitor; one that
        raises is logged and never breaks the caller's operation or the other callbacks.
        """
        if not duration_ms >= 0:  # also rejects NaN
            raise ValueError(f"duration_ms must be >= 0, got {duration_ms!r}")
        if not self._enabled:
            return
        alert: Alert | None = None
        callbacks: list[AlertCallback] = []
        with self._lock:
            data = self._ops.get(operation)
            if data is None:
                data = _OperationData(history=deque(maxlen=self._history_size))
                self._ops[operation] = data
            data.history.append(duration_ms)
            data.count += 1
            if not success:
                data.errors += 1
            data.total_ms += duration_ms
            if duration_ms < data.min_ms:
                data.min_ms = duration_ms
            if duration_ms > data.max_ms:
                data.max_ms = duration_ms
            threshold = self._thresholds.get(operation)
            if threshold is not None and duration_ms > threshold:
                alert = Alert(operation, duration_ms, threshold, datetime.now(UTC))
                self._alerts.append(alert)
                callbacks = list(self._callbacks)
        if alert is not None:
            for callback in callbacks:
                try:
                    callback(alert)
                except Exception:
                    logger.exception("performance alert callback %r failed", callback)

    def set_gauge(self, name: str, value: float) -> None:
        """Store the current value of a level (a queue's depth, say); the last value wins."""
        if not math.isfinite(value):
            raise ValueError(f"gauge {name!r} must be finite, got {value!r}")
        if self._enabled:
            with self._lock:
                self._gauges[name] = float(value)

    def gauges(self) -> dict[str, float]:
        """Current gauge values by name, sorted."""
        with self._lock:
            return dict(sorted(self._gauges.items()))

    def increment(self, name: str, amount: int = 1) -> None:
        """Add to a counter of events (jobs failed, say); counters only go up."""
        if amount < 0:
            raise ValueError(f"counter {name!r} cannot decrease (amount {amount!r})")
        if self._enabled:
            with self._lock:
                self._counters[name] = self._counters.get(name, 0) + amount

    def counters(self) -> dict[str, int]:
        """Counter totals by name, sorted."""
        with self._lock:
            return dict(sorted(self._counters.items()))

    def track_operation(self, operation: str) -> AbstractContextManager[None]:
        """Time a ``with`` block (works inside coroutines too); failures are recorded.

        If the block raises, the sample is recorded with ``success=False`` and the exception
        propagates unchanged.
        """
        return _OperationTimer(self, operation)

    def timed(self, operation: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator timing every call of a sync or ``async`` function.

        For coroutine functions the await happens inside the timing, so the sample covers
        the real work, not just coroutine creation. The default name is ``__qualname__``.
        """

        def decorator(func: Callable[P, R]) -> Callable[P, R]:
            name = operation if operation is not None else func.__qualname__

            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    with self.track_operation(name):
                        return await func(*args, **kwargs)

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.track_operation(name):
                    return func(*args, **kwargs)

            return wrapper

        return decorator

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def _snapshot(operation: str, data: _OperationData) -> _Snapshot:
        # Called under the lock: copy just enough to build stats after releasing it, so the
        # sort never blocks the recording threads.
        return _Snapshot(
            operation,
            data.count,
            data.errors,
            data.total_ms,
            data.min_ms,
            data.max_ms,
            list(data.history),
        )

    @staticmethod
    def _build_stats(snapshot: _Snapshot) -> OperationStats:
        operation, count, errors, total_ms, min_ms, max_ms, history = snapshot
        window = sorted(history)
        return OperationStats(
            operation=operation,
            count=count,
            errors=errors,
            success_rate=(count - errors) / count,
            avg_ms=total_ms / count,
            min_ms=min_ms,
            max_ms=max_ms,
            p50_ms=percentile(window, 50.0),
            p95_ms=percentile(window, 95.0),
            p99_ms=percentile(window, 99.0),
            window=len(window),
        )

    def stats(self, operation: str) -> OperationStats | None:
        """Statistics for one operation, or ``None`` if it was never recorded."""
        with self._lock:
            data = self._ops.get(operation)
            if data is None:
                return None
            snapshot = self._snapshot(operation, data)
        return self._build_stats(snapshot)

    def history(self, operation: str) -> list[float]:
        """The recent samples of ``operation`` in ms, oldest first (the percentiles' window)."""
        with self._lock:
            data = self._ops.get(operation)
            return [] if data is None else list(data.history)

    def all_stats(self) -> dict[str, OperationStats]:
        """Statistics for every recorded operation, keyed and ordered by name."""
        with self._lock:
            snapshots = [self._snapshot(name, data) for name, data in sorted(self._ops.items())]
        return {snap.operation: self._build_stats(snap) for snap in snapshots}

    def operations(self) -> list[str]:
        """Names of recorded operations, sorted."""
        with self._lock:
            return sorted(self._ops)

    # -- thresholds and alerts ------------------------------------------------------------

    @property
    def thresholds(self) -> dict[str, float]:
        """A copy of the current thresholds (ms); mutate via :meth:`set_threshold`."""
        with self._lock:
            return dict(self._thresholds)

    def set_threshold(self, operation: str, threshold_ms: float | None) -> None:
        """Set an operation's alert threshold; ``None`` removes it (no alerts)."""
        with self._lock:
            if threshold_ms is None:
                self._thresholds.pop(operation, None)
            else:
                self._thresholds[operation] = _validate_threshold(operation, threshold_ms)

    def add_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` for each future alert; adding it twice is a no-op."""
        with self._lock:
            if callback not in self._callbacks:
                self._callbacks.append(callback)

    def remove_alert_callback(self, callback: AlertCallback) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored so cleanup is idempotent."""
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def alerts(self) -> list[Alert]:
        """The most recent alerts (at most :data:`MAX_ALERTS`), oldest first."""
        with self._lock:
            return list(self._alerts)

    # -- baselines and regressions --------------------------------------------------------

    def set_baseline(self, baseline: Mapping[str, OperationStats] | None = None) -> None:
        """Remember reference stats to compare against; ``None`` snapshots the current ones."""
        snapshot = self.all_stats() if baseline is None else dict(baseline)
        with self._lock:
            self._baseline = snapshot

    @property
    def baseline(self) -> dict[str, OperationStats] | None:
        """A copy of the baseline, or ``None`` if none was set."""
        with self._lock:
            return None if self._baseline is None else dict(self._baseline)

    def detect_regressions(
        self,
        *,
        tolerance_pct: float = 20.0,
        metric: str = "p95_ms",
        min_samples: int = 1,
    ) -> list[Regression]:
        """Operations whose ``metric`` grew beyond ``tolerance_pct`` over the baseline.

        Operations with fewer than ``min_samples`` current samples are skipped (too noisy),
        as are baseline values of 0 (no meaningful percentage). Sorted by operation name.
        """
        if metric not in REGRESSION_METRICS:
            raise ValueError(
                f"unknown metric {metric!r}; expected one of {sorted(REGRESSION_METRICS)}"
            )
        with self._lock:
            baseline = None if self._baseline is None else dict(self._baseline)
        if baseline is None:
            raise RuntimeError("no baseline: call set_baseline() first")
        current = self.all_stats()
        limit = 1.0 + tolerance_pct / 100.0
        regressions: list[Regression] = []
        for name in sorted(baseline.keys() & current.keys()):
            now = current[name]
            if now.count < min_samples:
                continue
            base_value = float(getattr(baseline[name], metric))
            now_value = float(getattr(now, metric))
            if base_value <= 0:
                continue
            if now_value > base_value * limit:
                regressions.append(
                    Regression(
                        operation=name,
                        metric=metric,
                        baseline_ms=base_value,
                        current_ms=now_value,
                        change_pct=(now_value - base_value) / base_value * 100.0,
                    )
                )
        return regressions

    # -- export ---------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything as JSON-able builtins, for dashboards or saving a baseline."""
        stats = self.all_stats()
        gauges = self.gauges()
        counters = self.counters()
        with self._lock:
            thresholds = dict(self._thresholds)
            alerts = list(self._alerts)
            baseline = None if self._baseline is None else dict(self._baseline)
        return {
            "enabled": self._enabled,
            "history_size": self._history_size,
            "thresholds": thresholds,
            "operations": {name: s.to_dict() for name, s in stats.items()},
            "gauges": gauges,
            "counters": counters,
            "alerts": [alert.to_dict() for alert in alerts],
            "baseline": (
                None
                if baseline is None
                else {name: s.to_dict() for name, s in sorted(baseline.items())}
            ),
        }

    def export_json(self, **json_kwargs: Any) -> str:
        """:meth:`export` serialised with :func:`json.dumps` (kwargs passed through)."""
        return json.dumps(self.export(), **json_kwargs)

    def report(self) -> str:
        """Fixed-width table for logs and CLI output; ``!`` marks p95 above threshold."""
        stats = self.all_stats()
        levels = {**self.gauges(), **self.counters()}
        if not stats and not levels:
            return "No operations recorded."
        level_lines = [f"{name} = {value:g}" for name, value in sorted(levels.items())]
        if not stats:
            return "\n".join(level_lines)
        thresholds = self.thresholds
        name_width = max(len("operation"), *(len(name) for name in stats))
        header = (
            f"{'operation':<{name_width}} {'count':>8} {'success%':>8} {'avg':>10} "
            f"{'p50':>10} {'p95':>10} {'p99':>10} {'max':>10} {'threshold':>10}  "
        )
        lines = [header.rstrip(), "-" * len(header.rstrip())]
        for name, s in stats.items():
            threshold = thresholds.get(name)
            threshold_text = "-" if threshold is None else f"{threshold:.2f}"
            marker = "!" if threshold is not None and s.p95_ms > threshold else ""
            row = (
                f"{name:<{name_width}} {s.count:>8} {s.success_rate * 100:>7.1f}% "
                f"{s.avg_ms:>10.2f} {s.p50_ms:>10.2f} {s.p95_ms:>10.2f} {s.p99_ms:>10.2f} "
                f"{s.max_ms:>10.2f} {threshold_text:>10}  {marker}"
            )
            lines.append(row.rstrip())
        lines.append("(times in ms; ! = p95 above threshold)")
        return "\n".join(lines + level_lines)

    def clear(self, operation: str | None = None) -> None:
        """Forget samples (one operation, or everything recorded); config and baseline stay."""
        with self._lock:
            if operation is None:
                self._ops.clear()
                self._gauges.clear()
                self._counters.clear()
                self._alerts.clear()
            else:
                self._ops.pop(operation, None)


_process_monitor: PerformanceMonitor | None = None
_process_monitor_lock = threading.Lock()


def process_monitor() -> PerformanceMonitor:
    """The process-wide monitor that memfuse's shared engines and services report to."""
    global _process_monitor
    with _process_monitor_lock:
        if _process_monitor is None:
            _process_monitor = PerformanceMonitor()
        return _process_monitor
