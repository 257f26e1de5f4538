"""Behaviour of PerformanceMonitor, written as usage examples."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from memfuse.monitor.performance import (
    DEFAULT_THRESHOLDS_MS,
    MAX_ALERTS,
    Alert,
    OperationStats,
    PerformanceMonitor,
    percentile,
)

# Hand-computed linear interpolation on 1..100 (rank = p/100 * 99):
# p50 -> rank 49.5 -> 50 + 0.5 * 1 = 50.5; p95 -> rank 94.05 -> 95.05; p99 -> rank 98.01 -> 99.01.
P50_1_TO_100 = 50.5
P95_1_TO_100 = 95.05
P99_1_TO_100 = 99.01


def record_many(monitor: PerformanceMonitor, operation: str, values: list[float]) -> None:
    for value in values:
        monitor.record(operation, value)


# -- recording and statistics ------------------------------------------------------------


def test_stats_for_known_inputs() -> None:
    monitor = PerformanceMonitor()
    record_many(monitor, "db_query", [4.0, 1.0, 7.0])

    stats = monitor.stats("db_query")

    assert stats is not None
    assert stats.operation == "db_query"
    assert stats.count == 3
    assert stats.errors == 0
    assert stats.success_rate == 1.0
    assert stats.avg_ms == pytest.approx(4.0)
    assert stats.min_ms == 1.0
    assert stats.max_ms == 7.0
    assert stats.p50_ms == 4.0
    assert stats.window == 3


def test_percentiles_use_linear_interpolation() -> None:
    monitor = PerformanceMonitor()
    # Record shuffled so the monitor has to sort.
    values = [float(v) for v in range(100, 0, -1)]
    record_many(monitor, "db_query", values)

    stats = monitor.stats("db_query")

    assert stats is not None
    assert stats.p50_ms == pytest.approx(P50_1_TO_100)
    assert stats.p95_ms == pytest.approx(P95_1_TO_100)
    assert stats.p99_ms == pytest.approx(P99_1_TO_100)
    assert stats.avg_ms == pytest.approx(50.5)
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)


def test_percentile_helper_edges() -> None:
    assert percentile([3.0], 99.0) == 3.0
    assert percentile([1.0, 2.0], 0.0) == 1.0
    assert percentile([1.0, 2.0], 100.0) == 2.0
    assert percentile([0.0, 10.0], 25.0) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        percentile([], 50.0)


def test_single_sample_percentiles_equal_the_sample() -> None:
    monitor = PerformanceMonitor()
    monitor.record("m0_operation", 12.5)

    stats = monitor.stats("m0_operation")

    assert stats is not None
    assert stats.p50_ms == stats.p95_ms == stats.p99_ms == 12.5


def test_unknown_operation_has_no_stats() -> None:
    monitor = PerformanceMonitor()

    assert monitor.stats("never") is None
    assert monitor.all_stats() == {}
    assert monitor.operations() == []


def test_all_stats_and_operations_are_sorted_by_name() -> None:
    monitor = PerformanceMonitor()
    monitor.record("zeta", 1.0)
    monitor.record("alpha", 2.0)

    assert monitor.operations() == ["alpha", "zeta"]
    assert list(monitor.all_stats()) == ["alpha", "zeta"]
    assert monitor.all_stats()["alpha"].max_ms == 2.0


def test_history_is_bounded_but_lifetime_counters_are_not() -> None:
    monitor = PerformanceMonitor(history_size=10)
    record_many(monitor, "db_query", [1000.0] * 10)  # old, slow samples
    record_many(monitor, "db_query", [float(v) for v in range(1, 11)])  # recent, fast

    stats = monitor.stats("db_query")

    assert stats is not None
    assert stats.window == 10
    assert stats.count == 20
    # Lifetime aggregates still see the old samples...
    assert stats.max_ms == 1000.0
    assert stats.avg_ms == pytest.approx((10 * 1000.0 + 55.0) / 20)
    # ...but percentiles only the 10 most recent: 1..10, p99 rank 8.91 -> 9.91.
    assert stats.p50_ms == pytest.approx(5.5)
    assert stats.p99_ms == pytest.approx(9.91)
    assert monitor.history_size == 10


def test_success_rate_counts_failures() -> None:
    monitor = PerformanceMonitor()
    for i in range(4):
        monitor.record("db_query", 1.0, success=i != 0)

    stats = monitor.stats("db_query")

    assert stats is not None
    assert stats.count == 4
    assert stats.errors == 1
    assert stats.success_rate == pytest.approx(0.75)


def test_to_dict_has_every_field() -> None:
    monitor = PerformanceMonitor()
    monitor.record("db_query", 2.0, success=False)
    stats = monitor.stats("db_query")
    assert stats is not None

    data = stats.to_dict()

    assert data["operation"] == "db_query"
    assert data["count"] == 1
    assert data["errors"] == 1
    assert data["success_rate"] == 0.0
    assert data["p95_ms"] == 2.0
    assert data["window"] == 1
    assert set(data) == {
        "operation",
        "count",
        "errors",
        "success_rate",
        "avg_ms",
        "min_ms",
        "max_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "window",
    }


# -- track_operation and timed -----------------------------------------------------------


def test_track_operation_records_duration() -> None:
    monitor = PerformanceMonitor()

    with monitor.track_operation("buffer_flush"):
        time.sleep(0.02)

    stats = monitor.stats("buffer_flush")
    assert stats is not None
    assert stats.count == 1
    assert stats.errors == 0
    assert stats.max_ms >= 15.0


def test_track_operation_records_failure_and_reraises() -> None:
    monitor = PerformanceMonitor()

    with pytest.raises(KeyError, match="boom"), monitor.track_operation("db_query"):
        raise KeyError("boom")

    stats = monitor.stats("db_query")
    assert stats is not None
    assert stats.count == 1
    assert stats.errors == 1


async def test_track_operation_inside_coroutine() -> None:
    monitor = PerformanceMonitor()

    with monitor.track_operation("m1_operation"):
        await asyncio.sleep(0.02)

    stats = monitor.stats("m1_operation")
    assert stats is not None
    assert stats.count == 1
    assert stats.max_ms >= 15.0


def test_timed_sync_function_defaults_to_qualname() -> None:
    monitor = PerformanceMonitor()

    class Repo:
        @monitor.timed()
        def fetch(self, key: str, *, upper: bool = False) -> str:
            return key.upper() if upper else key

    assert Repo().fetch("a", upper=True) == "A"
    assert Repo.fetch.__name__ == "fetch"  # functools.wraps keeps metadata

    name = Repo.fetch.__qualname__
    assert name.endswith("Repo.fetch")
    assert monitor.operations() == [name]
    stats = monitor.stats(name)
    assert stats is not None
    assert stats.count == 1


def test_timed_sync_function_records_failure() -> None:
    monitor = PerformanceMonitor()

    @monitor.timed("m2_operation")
    def explode() -> None:
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError, match="nope"):
        explode()

    stats = monitor.stats("m2_operation")
    assert stats is not None
    assert (stats.count, stats.errors) == (1, 1)


async def test_timed_async_function_awaits_inside_timing() -> None:
    monitor = PerformanceMonitor()

    @monitor.timed("service_access")
    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.02)
        return x * 2

    assert asyncio.iscoroutinefunction(slow_double)
    assert await slow_double(21) == 42

    stats = monitor.stats("service_access")
    assert stats is not None
    assert stats.count == 1
    assert stats.errors == 0
    # Would be ~0 ms if only the coroutine creation were timed.
    assert stats.max_ms >= 15.0


async def test_timed_async_function_default_name_and_failure() -> None:
    monitor = PerformanceMonitor()

    @monitor.timed()
    async def failing() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await failing()

    stats = monitor.stats(failing.__qualname__)
    assert stats is not None
    assert failing.__qualname__.endswith("failing")
    assert (stats.count, stats.errors) == (1, 1)


# -- thresholds and alerts ---------------------------------------------------------------


def test_default_thresholds_match_documented_values() -> None:
    expected = {
        "connection_pool_access": 10.0,
        "m0_operation": 100.0,
        "m1_operation": 150.0,
        "m2_operation": 150.0,
        "buffer_flush": 50.0,
        "service_access": 10.0,
        "health_check": 1000.0,
    }
    assert dict(DEFAULT_THRESHOLDS_MS) == expected
    assert PerformanceMonitor().thresholds == expected


def test_custom_thresholds_are_merged_over_defaults() -> None:
    monitor = PerformanceMonitor(thresholds={"m0_operation": 5.0, "db_query": 20.0})

    assert monitor.thresholds["m0_operation"] == 5.0
    assert monitor.thresholds["db_query"] == 20.0
    assert monitor.thresholds["buffer_flush"] == 50.0
    assert DEFAULT_THRESHOLDS_MS["m0_operation"] == 100.0  # defaults untouched


def test_thresholds_property_is_a_copy() -> None:
    monitor = PerformanceMonitor()
    monitor.thresholds["m0_operation"] = 1.0

    assert monitor.thresholds["m0_operation"] == 100.0


def test_alert_callback_fires_only_above_threshold() -> None:
    monitor = PerformanceMonitor()
    received: list[Alert] = []
    monitor.add_alert_callback(received.append)
    before = datetime.now(UTC)

    monitor.record("connection_pool_access", 10.0)  # equal: not above
    monitor.record("connection_pool_access", 9.0)
    monitor.record("db_query", 10_000.0)  # no threshold for db_query
    monitor.record("connection_pool_access", 12.5)

    assert len(received) == 1
    alert = received[0]
    assert alert.operation == "connection_pool_access"
    assert alert.duration_ms == 12.5
    assert alert.threshold_ms == 10.0
    assert alert.at.tzinfo is not None
    assert alert.at.utcoffset() == timedelta(0)
    assert before <= alert.at <= datetime.now(UTC)
    assert monitor.alerts() == [alert]


def test_raising_callback_is_logged_and_does_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = PerformanceMonitor()
    received: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("callback bug")

    monitor.add_alert_callback(broken)
    monitor.add_alert_callback(received.append)

    with caplog.at_level(logging.ERROR, logger="memfuse.monitor.performance"):
        monitor.record("buffer_flush", 51.0)  # must not raise

    assert len(received) == 1
    assert any(r.exc_info is not None and "callback" in r.getMessage() for r in caplog.records)
    stats = monitor.stats("buffer_flush")
    assert stats is not None
    assert stats.count == 1


def test_callback_may_call_back_into_monitor() -> None:
    """Callbacks run outside the lock; re-entering the monitor must not deadlock."""
    monitor = PerformanceMonitor()
    seen: list[int] = []

    def reentrant(alert: Alert) -> None:
        stats = monitor.stats(alert.operation)
        assert stats is not None
        seen.append(stats.count)

    monitor.add_alert_callback(reentrant)
    monitor.record("m0_operation", 101.0)

    assert seen == [1]


def test_remove_alert_callback() -> None:
    monitor = PerformanceMonitor()
    received: list[Alert] = []
    monitor.add_alert_callback(received.append)
    monitor.add_alert_callback(received.append)  # duplicate is ignored

    monitor.record("buffer_flush", 60.0)
    assert len(received) == 1

    monitor.remove_alert_callback(received.append)
    monitor.remove_alert_callback(received.append)  # unknown: ignored
    monitor.record("buffer_flush", 60.0)

    assert len(received) == 1
    assert len(monitor.alerts()) == 2  # alerts are still kept


def test_alert_history_is_bounded() -> None:
    monitor = PerformanceMonitor()
    for i in range(MAX_ALERTS + 5):
        monitor.record("buffer_flush", 100.0 + i)

    alerts = monitor.alerts()

    assert MAX_ALERTS == 100
    assert len(alerts) == MAX_ALERTS
    assert alerts[0].duration_ms == 105.0  # oldest five dropped
    assert alerts[-1].duration_ms == 100.0 + MAX_ALERTS + 4


def test_set_threshold_adds_changes_and_removes() -> None:
    monitor = PerformanceMonitor()
    received: list[Alert] = []
    monitor.add_alert_callback(received.append)

    monitor.set_threshold("db_query", 5.0)
    monitor.record("db_query", 6.0)
    assert [a.threshold_ms for a in received] == [5.0]

    monitor.set_threshold("db_query", None)
    monitor.record("db_query", 600.0)
    assert "db_query" not in monitor.thresholds
    assert len(received) == 1

    monitor.set_threshold("m0_operation", None)
    monitor.record("m0_operation", 1_000.0)
    assert len(received) == 1

    monitor.set_threshold("never_set", None)  # removing a missing threshold is fine


# -- enable / disable --------------------------------------------------------------------


def test_disabled_monitor_records_nothing_but_still_runs_code() -> None:
    monitor = PerformanceMonitor(enabled=False)
    received: list[Alert] = []
    monitor.add_alert_callback(received.append)
    assert monitor.enabled is False

    monitor.record("buffer_flush", 1_000.0)
    with monitor.track_operation("buffer_flush"):
        ran = True

    @monitor.timed("m0_operation")
    def work() -> int:
        return 7

    assert ran
    assert work() == 7
    assert monitor.operations() == []
    assert received == []
    assert monitor.alerts() == []

    monitor.enable()
    assert monitor.enabled is True
    monitor.record("buffer_flush", 1_000.0)
    assert monitor.operations() == ["buffer_flush"]
    assert len(received) == 1

    monitor.disable()
    monitor.record("buffer_flush", 1.0)
    stats = monitor.stats("buffer_flush")
    assert stats is not None
    assert stats.count == 1


# -- baselines and regressions -----------------------------------------------------------


def test_detect_regressions_reports_percentage() -> None:
    monitor = PerformanceMonitor()
    record_many(monitor, "db_query", [10.0] * 5)
    record_many(monitor, "m0_operation", [20.0] * 5)
    monitor.set_baseline()

    monitor.clear()
    record_many(monitor, "db_query", [15.0] * 5)  # +50 %
    record_many(monitor, "m0_operation", [21.0] * 5)  # +5 %: within tolerance

    regressions = monitor.detect_regressions()

    assert [r.operation for r in regressions] == ["db_query"]
    [regression] = regressions
    assert regression.metric == "p95_ms"
    assert (regression.baseline_ms, regression.current_ms) == (10.0, 15.0)
    assert regression.change_pct == pytest.approx(50.0)


def test_detect_regressions_respects_tolerance_and_metric() -> None:
    monitor = PerformanceMonitor()
    record_many(monitor, "db_query", [10.0] * 5)
    monitor.set_baseline()
    monitor.clear()
    record_many(monitor, "db_query", [12.0] * 5)  # +20 %

    assert monitor.detect_regressions(tolerance_pct=20.0) == []  # not strictly above
    assert monitor.detect_regressions(tolerance_pct=25.0) == []
    found = monitor.detect_regressions(tolerance_pct=10.0, metric="avg_ms")
    assert [r.metric for r in found] == ["avg_ms"]
    assert found[0].change_pct == pytest.approx(20.0)


def test_detect_regressions_respects_min_samples() -> None:
    monitor = PerformanceMonitor()
    record_many(monitor, "db_query", [10.0] * 5)
    monitor.set_baseline()
    monitor.clear()
    record_many(monitor, "db_query", [100.0] * 3)

    assert monitor.detect_regressions(min_samples=4) == []
    assert len(monitor.detect_regressions(min_samples=3)) == 1


def test_detect_regressions_with_explicit_baseline_skips_zero_and_missing() -> None:
    monitor = PerformanceMonitor()
    zero = OperationStats("zero_op", 1, 0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1)
    old_only = OperationStats("gone_op", 1, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)
    monitor.set_baseline({"zero_op": zero, "gone_op": old_only})
    monitor.record("zero_op", 50.0)  # baseline 0 -> no percentage possible
    monitor.record("new_op", 50.0)  # not in baseline

    assert monitor.detect_regressions() == []
    baseline = monitor.baseline
    assert baseline is not None
    assert set(baseline) == {"zero_op", "gone_op"}


def test_detect_regressions_requires_baseline() -> None:
    monitor = PerformanceMonitor()
    monitor.record("db_query", 1.0)

    assert monitor.baseline is None
    with pytest.raises(RuntimeError, match="no baseline"):
        monitor.detect_regressions()


def test_detect_regressions_rejects_unknown_metric() -> None:
    monitor = PerformanceMonitor()
    monitor.set_baseline()

    with pytest.raises(ValueError, match="metric"):
        monitor.detect_regressions(metric="max_ms")


def test_baseline_survives_clear() -> None:
    monitor = PerformanceMonitor()
    monitor.record("db_query", 1.0)
    monitor.set_baseline()

    monitor.clear()

    baseline = monitor.baseline
    assert baseline is not None
    assert baseline["db_query"].count == 1


# -- export and report -------------------------------------------------------------------


def test_export_is_json_serialisable_and_complete() -> None:
    monitor = PerformanceMonitor(history_size=50)
    monitor.record("db_query", 3.0)
    monitor.record("buffer_flush", 75.0, success=False)
    monitor.set_baseline()

    data = monitor.export()
    round_tripped = json.loads(json.dumps(data))

    assert round_tripped == data
    assert data["enabled"] is True
    assert data["history_size"] == 50
    assert data["thresholds"]["buffer_flush"] == 50.0
    assert set(data["operations"]) == {"buffer_flush", "db_query"}
    assert data["operations"]["buffer_flush"]["errors"] == 1
    [alert] = data["alerts"]
    assert alert["operation"] == "buffer_flush"
    assert alert["duration_ms"] == 75.0
    assert alert["threshold_ms"] == 50.0
    assert datetime.fromisoformat(alert["at"]).tzinfo is not None
    assert data["baseline"]["db_query"]["count"] == 1


def test_export_without_baseline_and_export_json() -> None:
    monitor = PerformanceMonitor()

    assert monitor.export()["baseline"] is None
    text = monitor.export_json(indent=2, sort_keys=True)
    assert "\n" in text
    assert json.loads(text) == monitor.export()


def test_report_lists_operations_and_marks_slow_ones() -> None:
    monitor = PerformanceMonitor()
    record_many(monitor, "db_query", [1.0, 2.0, 3.0])
    record_many(monitor, "connection_pool_access", [50.0] * 3)  # p95 over 10 ms budget
    monitor.record("m0_operation", 1.0)

    report = monitor.report()
    rows = {line.split()[0]: line for line in report.splitlines() if line.strip()}

    assert "operation" in rows
    assert "db_query" in rows
    assert rows["connection_pool_access"].rstrip().endswith("!")
    assert not rows["m0_operation"].rstrip().endswith("!")
    assert "50.00" in rows["connection_pool_access"]
    assert "100.0%" in rows["db_query"]
    # Rows sorted by name.
    names = [
        line.split()[0]
        for line in report.splitlines()
        if line.split() and line.split()[0] in monitor.operations()
    ]
    assert names == sorted(names) == ["connection_pool_access", "db_query", "m0_operation"]


def test_report_when_empty() -> None:
    assert PerformanceMonitor().report() == "No operations recorded."


# -- clear -------------------------------------------------------------------------------


def test_clear_one_operation_keeps_others_and_alerts() -> None:
    monitor = PerformanceMonitor()
    monitor.record("buffer_flush", 99.0)
    monitor.record("db_query", 1.0)

    monitor.clear("buffer_flush")
    monitor.clear("never_recorded")

    assert monitor.operations() == ["db_query"]
    assert len(monitor.alerts()) == 1


def test_clear_all_keeps_configuration() -> None:
    monitor = PerformanceMonitor()
    received: list[Alert] = []
    monitor.add_alert_callback(received.append)
    monitor.set_threshold("db_query", 1.0)
    monitor.record("db_query", 5.0)

    monitor.clear()

    assert monitor.operations() == []
    assert monitor.alerts() == []
    assert monitor.thresholds["db_query"] == 1.0
    monitor.record("db_query", 5.0)  # callback still registered
    assert len(received) == 2
    stats = monitor.stats("db_query")
    assert stats is not None
    assert stats.count == 1  # counters restarted


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1])
def test_history_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="history_size"):
        PerformanceMonitor(history_size=size)


def test_history_size_one_is_allowed() -> None:
    monitor = PerformanceMonitor(history_size=1)
    record_many(monitor, "db_query", [1.0, 9.0])
    stats = monitor.stats("db_query")
    assert stats is not None
    assert (stats.window, stats.p50_ms, stats.count) == (1, 9.0, 2)


@pytest.mark.parametrize("duration", [-0.001, float("nan")])
def test_record_rejects_invalid_duration(duration: float) -> None:
    monitor = PerformanceMonitor()
    with pytest.raises(ValueError, match="duration_ms"):
        monitor.record("db_query", duration)
    assert monitor.operations() == []


def test_record_accepts_zero_duration() -> None:
    monitor = PerformanceMonitor()
    monitor.record("db_query", 0.0)
    stats = monitor.stats("db_query")
    assert stats is not None
    assert stats.max_ms == 0.0


@pytest.mark.parametrize("threshold", [0.0, -5.0, float("nan")])
def test_thresholds_must_be_positive(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        PerformanceMonitor(thresholds={"db_query": threshold})
    monitor = PerformanceMonitor()
    with pytest.raises(ValueError, match="threshold"):
        monitor.set_threshold("db_query", threshold)
    assert "db_query" not in monitor.thresholds


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_records_are_not_lost() -> None:
    monitor = PerformanceMonitor(history_size=500)
    alerts: list[Alert] = []
    alerts_lock = threading.Lock()

    def on_alert(alert: Alert) -> None:
        with alerts_lock:
            alerts.append(alert)

    monitor.add_alert_callback(on_alert)
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        start.wait()
        for i in range(1000):
            # Every 100th sample breaches the 10 ms connection pool budget.
            duration = 11.0 if i % 100 == 0 else 1.0
            monitor.record("connection_pool_access", duration, success=i % 10 != 0)
            if i % 250 == 0:
                monitor.stats("connection_pool_access")  # readers interleaved with writers

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = monitor.stats("connection_pool_access")
    assert stats is not None
    assert stats.count == 8000
    assert stats.errors == 800
    assert stats.window == 500
    assert stats.avg_ms == pytest.approx((80 * 11.0 + 7920 * 1.0) / 8000)
    assert len(alerts) == 80
    assert len(monitor.alerts()) == 80


def test_history_can_be_resized_keeping_recent_samples() -> None:
    monitor = PerformanceMonitor(history_size=10)
    for value in range(10):
        monitor.record("op", float(value))
    monitor.set_history_size(3)
    stats = monitor.stats("op")
    assert stats is not None
    assert (stats.window, stats.count, stats.p50_ms) == (3, 10, 8.0)
    with pytest.raises(ValueError, match="history_size"):
        monitor.set_history_size(0)


# -- gauges and counters -----------------------------------------------------------------


def test_a_gauge_keeps_the_last_value_and_a_counter_adds_up() -> None:
    monitor = PerformanceMonitor()
    monitor.set_gauge("queue_depth", 7)
    monitor.set_gauge("queue_depth", 3)
    monitor.increment("jobs_failed")
    monitor.increment("jobs_failed", 4)
    assert monitor.gauges() == {"queue_depth": 3.0}
    assert monitor.counters() == {"jobs_failed": 5}
    exported = monitor.export()
    assert exported["gauges"] == {"queue_depth": 3.0}
    assert exported["counters"] == {"jobs_failed": 5}
    assert monitor.report() == "jobs_failed = 5\nqueue_depth = 3"


def test_gauges_and_counters_reject_bad_values_and_clear_with_everything() -> None:
    monitor = PerformanceMonitor()
    with pytest.raises(ValueError, match="finite"):
        monitor.set_gauge("depth", math.nan)
    with pytest.raises(ValueError, match="cannot decrease"):
        monitor.increment("failed", -1)
    monitor.set_gauge("depth", 1)
    monitor.increment("failed")
    monitor.clear("depth")
    assert monitor.gauges() == {"depth": 1.0}, "clearing one operation leaves levels alone"
    monitor.clear()
    assert monitor.gauges() == {} and monitor.counters() == {}


def test_a_disabled_monitor_keeps_no_levels() -> None:
    monitor = PerformanceMonitor(enabled=False)
    monitor.set_gauge("depth", 1)
    monitor.increment("failed")
    assert monitor.gauges() == {} and monitor.counters() == {}
