"""The embedded server: started on demand, shared by handles, data kept across restarts."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from memfuse.config import Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.db.embedded import EmbeddedPostgres, database_url_for


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
