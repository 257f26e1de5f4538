"""Performance monitoring: operation timings, thresholds, alerts and regression detection."""

from memfuse.monitor.engine_hooks import QUERY_OPERATION, instrument_engine
from memfuse.monitor.performance import (
    DEFAULT_THRESHOLDS_MS,
    Alert,
    OperationStats,
    PerformanceMonitor,
    Regression,
    process_monitor,
)

__all__ = [
    "DEFAULT_THRESHOLDS_MS",
    "QUERY_OPERATION",
    "Alert",
    "OperationStats",
    "PerformanceMonitor",
    "Regression",
    "instrument_engine",
    "process_monitor",
]
