"""The embedded server: started on demand, shared by handles, data kept across restarts, run
with memfuse's settings."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from memfuse.config import Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.db.embedded import (
    MAX_SHARED_BUFFERS_MB,
    MIN_SHARED_BUFFERS_MB,
    EmbeddedPostgres,
    database_url_for,
    shared_buffers_mb,
)


async def scalar(url: str, sql: str) -> object:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def test_data_survives_a_restart_and_handles_share_one_server(tmp_path: Path) -> None:
    first, second = EmbeddedPostgres(tmp_path), EmbeddedPostgres(tmp_path)
    url = await first.start()
    assert await second.start() == url
    await scalar(url, "CREATE TABLE kept AS SELECT 42 AS x")
    await first.stop()
    assert await scalar(url, "SELECT x FROM kept") == 42, "still up while a handle remains"
    await second.stop()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await scalar(url, "SELECT 1")

    third = EmbeddedPostgres(tmp_path)
    url = await third.start()
    try:
        assert await scalar(url, "SELECT x FROM kept") == 42
        assert (
            await scalar(url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            == 1
        )
    finally:
        await third.stop()


async def test_an_explicit_url_always_wins(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://db.example/app", data_dir=tmp_path)
    async with database_url_for(settings) as url:
        assert url == "postgresql://db.example/app"
    assert not (tmp_path / "pgdata").exists(), "no embedded server was started"


async def test_the_server_starts_with_memfuses_settings(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path, shared_buffers=160)
    url = await server.start()
    try:
        assert await scalar(url, "SHOW shared_buffers") == "160MB"
    finally:
        await server.stop()
    again = EmbeddedPostgres(tmp_path, shared_buffers=176)
    url = await again.start()
    try:
        assert await scalar(url, "SHOW shared_buffers") == "176MB", "each start writes them"
    finally:
        await again.stop()
    config = (tmp_path / "pgdata" / "postgresql.conf").read_text().splitlines()
    assert config.count("include_if_exists = 'memfuse.conf'") == 1


def test_shared_buffers_are_sized_to_the_machine() -> None:
    assert shared_buffers_mb(300) == 300, "a setting wins"
    sized = shared_buffers_mb()
    assert MIN_SHARED_BUFFERS_MB <= sized <= MAX_SHARED_BUFFERS_MB
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert sized == max(MIN_SHARED_BUFFERS_MB, min(MAX_SHARED_BUFFERS_MB, memory_mb // 8))


def test_the_setting_is_checked() -> None:
    from memfuse.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="embedded_shared_buffers_mb"):
        Settings(embedded_shared_buffers_mb=-1)


def overcommits_always() -> bool:
    """Linux maps any size when ``vm.overcommit_memory`` is 1: nothing is refused there."""
    setting = Path("/proc/sys/vm/overcommit_memory")
    return setting.exists() and setting.read_text().strip() == "1"


@pytest.mark.skipif(overcommits_always(), reason="this machine maps any size of memory")
async def test_a_machine_that_refuses_the_buffers_gets_the_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedPostgres(tmp_path, shared_buffers=4_000_000)  # 4 TB: refused here
    url = await server.start()
    try:
        assert await scalar(url, "SHOW shared_buffers") == f"{MIN_SHARED_BUFFERS_MB}MB"
    finally:
        await server.stop()
    assert "did not start with 4000000 MB of shared buffers" in caplog.text
