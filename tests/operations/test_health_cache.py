"""Cached health checks and pool warm-up (issue 18): what a server's probes and first requests
rely on."""

from __future__ import annotations

import asyncio

import pytest

from memfuse.errors import ValidationError
from memfuse.memory import MemFuse


async def test_a_recent_report_is_served_again_and_callers_share_a_check(
    database_url: str,
) -> None:
    async with MemFuse(database_url, embedder="none", pipeline_auto=False) as mf:

        def checks_run() -> int:  # the monitor is shared by the process: count from here
            stats = mf.monitor.stats("health_check")
            return 0 if stats is None else stats.count

        before = checks_run()
        first = await mf.health(max_age=60)
        assert first.ok and checks_run() == before + 1
        assert await mf.health(max_age=60) is first
        assert checks_run() == before + 1  # served again, not checked
        together = await asyncio.gather(*(mf.health(max_age=0) for _ in range(5)))
        assert all(report.ok for report in together)
        assert checks_run() == before + 6  # one at a time, each fresh (max_age 0)
        fresh = await mf.health()  # health_cache_seconds defaults to 0: always fresh
        assert fresh is not first
        with pytest.raises(ValidationError):
            await mf.health(max_age=-1)


async def test_the_setting_sets_the_default_age(database_url: str) -> None:
    async with MemFuse(
        database_url, embedder="none", pipeline_auto=False, health_cache_seconds=60
    ) as mf:
        assert await mf.health() is await mf.health()


async def test_warm_up_opens_the_pool_before_the_first_request(database_url: str) -> None:
    async with MemFuse(database_url, embedder="none", pipeline_auto=False, pool_warmup=True) as mf:
        [stats] = mf.container.engine_registry().stats().values()
        assert stats.checked_in >= mf.settings.pool.pool_size
        assert mf.monitor.stats("pool_warmup") is not None
    async with MemFuse(database_url, embedder="none", pipeline_auto=False) as cold:
        [stats] = cold.container.engine_registry().stats().values()
        assert stats.checked_in < cold.settings.pool.pool_size
