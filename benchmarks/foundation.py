"""Foundation benchmark: pool checkout, statement overhead and service access, against raw asyncpg.

Run: ``.venv/bin/python -m benchmarks.foundation [--rounds 7] [--ops 500] [--output FILE.json]``
(database: ``MEMFUSE_DATABASE_URL``, else a fresh embedded server in a temporary directory).

Every figure is a per-operation latency collected over ``rounds x ops`` operations, reported as
median and p95, and each memfuse figure as a ratio to the raw asyncpg baseline measured in the
same run on the same server, with the rounds interleaved so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from dependency_injector import providers
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.harness import run_benchmark
from memfuse.config import PoolSettings, Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import Container, resolve, start, stop
from memfuse.db.engines import EngineRegistry, create_engine, warm_up
from memfuse.monitor import PerformanceMonitor, instrument_engine
from memfuse.monitor.performance import percentile

Operation = Callable[[], Awaitable[object]]


async def sample(operation: Operation, ops: int) -> list[float]:
    """Latencies in ms of ``ops`` sequential calls, after a short warm-up."""
    for _ in range(min(50, ops)):
        await operation()
    latencies = []
    for _ in range(ops):
        start = time.perf_counter()
        await operation()
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(percentile(ordered, 50), 4),
        "p95_ms": round(percentile(ordered, 95), 4),
        "p99_ms": round(percentile(ordered, 99), 4),
    }


async def compare(
    name: str, candidates: dict[str, Operation], baseline: str, rounds: int, ops: int
) -> dict[str, Any]:
    """Interleave rounds of every candidate; report each one's latency and ratio to baseline."""
    collected: dict[str, list[float]] = {key: [] for key in candidates}
    round_medians: dict[str, list[float]] = {key: [] for key in candidates}
    for _ in range(rounds):
        for key, operation in candidates.items():
            latencies = await sample(operation, ops)
            collected[key].extend(latencies)
            round_medians[key].append(statistics.median(latencies))
    result: dict[str, Any] = {"baseline": baseline}
    base = summary(collected[baseline])
    for key, latencies in collected.items():
        figures: dict[str, Any] = dict(summary(latencies))
        ratios = [
            mine / theirs
            for mine, theirs in zip(round_medians[key], round_medians[baseline], strict=True)
        ]
        figures["p50_ratio_vs_baseline"] = round(figures["p50_ms"] / base["p50_ms"], 3)
        figures["p95_ratio_vs_baseline"] = round(figures["p95_ms"] / base["p95_ms"], 3)
        figures["round_ratio_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
        result[key] = figures
    print(f"{name}: {json.dumps(result)}", flush=True)  # noqa: T201 - benchmark output
    return result


async def measure(url: str, rounds: int, ops: int) -> dict[str, Any]:
    raw_pool = await asyncpg.create_pool(**asyncpg_connect_args(url), min_size=5, max_size=5)
    monitor = PerformanceMonitor(history_size=100_000)
    registry = EngineRegistry(monitor)
    no_ping = create_engine(url, PoolSettings(pool_pre_ping=False))
    with_ping = registry.get_engine(url, PoolSettings(pool_pre_ping=True))
    bare = create_engine(url, PoolSettings(pool_pre_ping=False))  # no statement hooks
    hooked = create_engine(url, PoolSettings(pool_pre_ping=False))
    remove_hooks = instrument_engine(hooked, monitor)

    async def raw_acquire() -> None:
        async with raw_pool.acquire():
            pass

    def checkout(engine: AsyncEngine) -> Operation:
        async def operation() -> None:
            async with engine.connect():
                pass

        return operation

    async def raw_select() -> object:
        async with raw_pool.acquire() as connection:
            return await connection.fetchval("SELECT 1")

    def select(engine: AsyncEngine) -> Operation:
        async def operation() -> object:
            async with engine.connect() as connection:
                return (await connection.execute(text("SELECT 1"))).scalar_one()

        return operation

    results: dict[str, Any] = {}
    results["pool_checkout"] = await compare(
        "pool_checkout",
        {
            "asyncpg_pool_acquire": raw_acquire,
            "memfuse_checkout_no_pre_ping": checkout(no_ping),
            "memfuse_checkout_pre_ping": checkout(with_ping),
        },
        "asyncpg_pool_acquire",
        rounds,
        ops,
    )
    results["select_1"] = await compare(
        "select_1",
        {
            "asyncpg_fetchval": raw_select,
            "sqlalchemy_without_hooks": select(bare),
            "sqlalchemy_with_monitor_hooks": select(hooked),
        },
        "asyncpg_fetchval",
        rounds,
        ops,
    )

    container = Container()
    # Only the container's resolution is timed: no background worker or pipeline, which would
    # run against a schema this benchmark never migrates.
    settings = Settings(database_url=url, worker_enabled=False, pipeline_auto=False)
    container.settings.override(providers.Object(settings))
    container.engine_registry.override(providers.Object(EngineRegistry()))
    await start(container)
    await resolve(container.tenancy_service)

    async def service_access() -> object:
        return await resolve(container.tenancy_service)

    async def dict_lookup() -> object:
        return results.get("select_1")

    results["service_access"] = await compare(
        "service_access",
        {"dict_lookup": dict_lookup, "container_resolve_tenancy_service": service_access},
        "dict_lookup",
        rounds,
        ops,
    )
    await stop(container)
    results["first_request"] = await first_request(url, rounds * 5)
    remove_hooks()
    for engine in (no_ping, bare, hooked):
        await engine.dispose()
    await registry.dispose_all()
    await raw_pool.close()
    return results


async def first_request(url: str, samples: int) -> dict[str, Any]:
    """The first ``SELECT 1`` through a new engine (pool of 5, pgvector's codec registered on
    connect), with and without :func:`memfuse.db.engines.warm_up` before it, interleaved."""
    latencies: dict[str, list[float]] = {"cold": [], "warmed": []}
    for _ in range(samples):
        for kind in ("cold", "warmed"):
            engine = create_engine(url, PoolSettings(pool_pre_ping=True))
            try:
                if kind == "warmed":
                    await warm_up(engine, PoolSettings().pool_size)
                started = time.perf_counter()
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
                latencies[kind].append((time.perf_counter() - started) * 1000.0)
            finally:
                await engine.dispose()
    cold, warmed = summary(latencies["cold"]), summary(latencies["warmed"])
    result = {
        "samples": samples,
        "cold": cold,
        "warmed": warmed,
        "warmed_p50_ratio_vs_cold": round(warmed["p50_ms"] / cold["p50_ms"], 3),
    }
    print(f"first_request: {json.dumps(result)}", flush=True)  # noqa: T201 - benchmark output
    return result


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    machine = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "database": source,
    }
    return {"machine": machine, **await measure(url, args.rounds, args.ops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--output", type=Path)
    run_benchmark("benchmarks.foundation", run, parser.parse_args())


if __name__ == "__main__":
    main()
