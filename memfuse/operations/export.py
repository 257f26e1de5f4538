"""The monitor and the pools as JSON, or in Prometheus' text format (the ``metrics`` extra).

Prometheus names: per operation ``memfuse_operation_duration_ms{operation, quantile}`` (gauges of
the recent window's p50/p95/p99), ``memfuse_operation_calls_total`` and
``memfuse_operation_errors_total``; each monitor gauge as ``memfuse_<name>``, each counter as
``memfuse_<name>_total``; per engine ``memfuse_pool_size``, ``memfuse_pool_checked_out``,
``memfuse_pool_overflow`` and ``memfuse_pool_connections_opened_total``, labelled by the masked
URL; ``memfuse_operation_threshold_ms{operation}`` (each operation's latency budget) and
``memfuse_background_task_up{task}`` (1 running, 0 restarting or stopped). The Grafana dashboard
and alert rules in docs/dashboards/ query these names (a test checks each is exported).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memfuse.db.engines import EngineStats
from memfuse.errors import ConfigurationError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.types import TaskState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def metrics_json(monitor: PerformanceMonitor, pools: Mapping[str, EngineStats]) -> dict[str, Any]:
    """Everything the monitor holds, and each pool's figures."""
    return {
        "monitor": monitor.export(),
        "pools": {url: stats.to_dict() for url, stats in pools.items()},
    }


def prometheus_text(
    monitor: PerformanceMonitor,
    pools: Mapping[str, EngineStats],
    tasks: Sequence[TaskState] = (),
) -> str:
    """The same figures in Prometheus' text exposition format."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        raise ConfigurationError(
            "metrics", "Prometheus export needs the metrics extra: pip install 'memfuse[metrics]'"
        ) from None

    class _Collector:
        def collect(self) -> Iterator[Metric]:
            return _metrics(monitor, pools, tasks)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry).decode()


def _metrics(
    monitor: PerformanceMonitor, pools: Mapping[str, EngineStats], tasks: Sequence[TaskState]
) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    duration = GaugeMetricFamily(
        "memfuse_operation_duration_ms",
        "Recent latency percentiles of an operation, in milliseconds",
        labels=["operation", "quantile"],
    )
    calls = CounterMetricFamily(
        "memfuse_operation_calls", "Samples recorded for an operation", labels=["operation"]
    )
    errors = CounterMetricFamily(
        "memfuse_operation_errors", "Failed samples of an operation", labels=["operation"]
    )
    for name, stats in monitor.all_stats().items():
        for quantile, value in (
            ("0.5", stats.p50_ms),
            ("0.95", stats.p95_ms),
            ("0.99", stats.p99_ms),
        ):
            duration.add_metric([name, quantile], value)
        calls.add_metric([name], stats.count)
        errors.add_metric([name], stats.errors)
    yield from (duration, calls, errors)
    threshold = GaugeMetricFamily(
        "memfuse_operation_threshold_ms",
        "The latency budget of an operation, in milliseconds (alerts compare p95 with it)",
        labels=["operation"],
    )
    for name, budget in monitor.thresholds.items():
        threshold.add_metric([name], budget)
    yield threshold
    up = GaugeMetricFamily(
        "memfuse_background_task_up",
        "1 while a background task runs, 0 while it restarts or is stopped",
        labels=["task"],
    )
    for task in tasks:
        up.add_metric([task.name], 1.0 if task.status == "running" else 0.0)
    yield up
    for name, level in monitor.gauges().items():
        yield GaugeMetricFamily(f"memfuse_{_safe(name)}", f"memfuse gauge {name}", value=level)
    for name, total in monitor.counters().items():
        yield CounterMetricFamily(f"memfuse_{_safe(name)}", f"memfuse counter {name}", value=total)
    size = GaugeMetricFamily("memfuse_pool_size", "Pool size of an engine", labels=["engine"])
    checked_out = GaugeMetricFamily(
        "memfuse_pool_checked_out", "Connections in use", labels=["engine"]
    )
    overflow = GaugeMetricFamily(
        "memfuse_pool_overflow", "Connections beyond pool_size", labels=["engine"]
    )
    opened = CounterMetricFamily(
        "memfuse_pool_connections_opened", "Connections opened", labels=["engine"]
    )
    for url, pool in pools.items():
        size.add_metric([url], pool.pool_size)
        checked_out.add_metric([url], pool.checked_out)
        overflow.add_metric([url], pool.overflow)
        opened.add_metric([url], pool.connections_opened)
    yield from (size, checked_out, overflow, opened)


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)
