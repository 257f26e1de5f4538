"""The engine hooks count and time exactly the statements that run, failures included."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.db.engines import CODEC_OPERATION, POOL_ACCESS_OPERATION
from memfuse.monitor import QUERY_OPERATION, PerformanceMonitor, instrument_engine


def query_count(monitor: PerformanceMonitor) -> tuple[int, int]:
    stats = monitor.stats(QUERY_OPERATION)
    return (0, 0) if stats is None else (stats.count, stats.errors)


async def test_each_statement_is_counted_once(
    engine: AsyncEngine, monitor: PerformanceMonitor
) -> None:
    remove = instrument_engine(engine, monitor)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))  # warm up: first-connect dialect queries
    before, _ = query_count(monitor)
    async with engine.connect() as connection:
        for i in range(7):
            await connection.execute(text("SELECT CAST(:i AS integer)"), {"i": i})
    after, errors = query_count(monitor)
    remove()
    assert after - before == 7
    assert errors == 0


async def test_failed_statements_are_recorded_as_failures(
    engine: AsyncEngine, monitor: PerformanceMonitor
) -> None:
    remove = instrument_engine(engine, monitor)
    async with engine.connect() as connection:
        with pytest.raises(DBAPIError):
            await connection.execute(text("SELECT * FROM no_such_table"))
    remove()
    count, errors = query_count(monitor)
    assert (count, errors) == (1, 1)
    stats = monitor.stats(QUERY_OPERATION)
    assert stats is not None and stats.success_rate == 0.0


async def test_removed_hooks_stop_recording(
    engine: AsyncEngine, monitor: PerformanceMonitor
) -> None:
    remove = instrument_engine(engine, monitor)
    remove()
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert monitor.stats(QUERY_OPERATION) is None


async def test_pool_checkout_and_connection_setup_are_timed(
    migrated_engine: AsyncEngine, monitor: PerformanceMonitor
) -> None:
    """The ``engine`` fixture is built with ``create_engine(url, monitor=monitor)``."""
    await migrated_engine.dispose()
    monitor.clear()
    for _ in range(3):
        async with migrated_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    checkouts = monitor.stats(POOL_ACCESS_OPERATION)
    setups = monitor.stats(CODEC_OPERATION)
    assert checkouts is not None and checkouts.count == 3
    assert setups is not None and setups.count == 1, "one new connection, codec registered once"
