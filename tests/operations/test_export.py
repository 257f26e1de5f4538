"""Metrics export: JSON and Prometheus text, from a monitor and real pool figures."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from memfuse.db.engines import EngineStats
from memfuse.memory import MemFuse
from memfuse.monitor import PerformanceMonitor
from memfuse.operations.export import metrics_json, prometheus_text

POOL = EngineStats(
    url="postgresql+asyncpg://app:***@db/app",
    owned=True,
    pool_size=5,
    checked_out=2,
    checked_in=3,
    overflow=0,
    connections_opened=7,
)


def monitor_with_samples() -> PerformanceMonitor:
    monitor = PerformanceMonitor()
    for ms in (1.0, 2.0, 3.0, 4.0):
        monitor.record("m0_operation", ms)
    monitor.record("m0_operation", 9.0, success=False)
    monitor.set_gauge("embedding_queue_depth", 12)
    monitor.increment("embedding_vectors_written", 40)
    return monitor


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_text_parses_and_holds_every_figure() -> None:
    found = samples(prometheus_text(monitor_with_samples(), {POOL.url: POOL}))
    operation = (("operation", "m0_operation"),)
    assert found[("memfuse_operation_calls_total", operation)] == 5
    assert found[("memfuse_operation_errors_total", operation)] == 1
    assert found[("memfuse_operation_duration_ms", (*operation, ("quantile", "0.5")))] == 3.0
    assert found[("memfuse_embedding_queue_depth", ())] == 12
    assert found[("memfuse_embedding_vectors_written_total", ())] == 40
    engine = (("engine", POOL.url),)
    assert found[("memfuse_pool_checked_out", engine)] == 2
    assert found[("memfuse_pool_connections_opened_total", engine)] == 7


def test_json_export_is_the_monitor_and_the_pools() -> None:
    exported = metrics_json(monitor_with_samples(), {POOL.url: POOL})
    assert exported["monitor"]["operations"]["m0_operation"]["count"] == 5
    assert exported["monitor"]["gauges"] == {"embedding_queue_depth": 12.0}
    assert exported["pools"][POOL.url]["checked_out"] == 2


async def test_memfuse_exports_its_own_monitor_and_pool(database_url: str) -> None:
    async with MemFuse(database_url) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "hello"}])
        exported = await mf.metrics()
        text = await mf.metrics_text()
    assert exported["monitor"]["operations"]["m0_operation"]["count"] >= 1
    assert any(pool["pool_size"] == 5 for pool in exported["pools"].values())
    assert "password" not in text and "memfuse_pool_checked_out{" in text
    assert samples(text)
