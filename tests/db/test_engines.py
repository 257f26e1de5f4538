"""Shared engines: one per database, pgvector on every connection, stats, masking, disposal."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from memfuse.config import PoolSettings
from memfuse.config.urls import asyncpg_connect_args, engine_key, mask_url, normalize_url
from memfuse.db.engines import EngineRegistry, create_engine
from memfuse.errors import ConfigurationError, MemfuseError
from memfuse.monitor import QUERY_OPERATION, PerformanceMonitor


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def test_two_spellings_of_one_url_normalize_equal() -> None:
    a = normalize_url(
        "postgresql://alice:pw@DB.example.com/app?target_session_attrs=primary&sslmode=require"
    )
    b = normalize_url(
        "postgres://alice:pw@db.example.com:5432/app?ssl=require&target_session_attrs=primary"
    )
    assert a == b
    assert a.drivername == "postgresql+asyncpg"
    assert engine_key(a) == (
        "postgresql+asyncpg://alice:***@db.example.com:5432/app"
        "?ssl=require&target_session_attrs=primary"
    )


@pytest.mark.parametrize(
    "bad", ["", "   ", "not a url", "mysql://u:p@h/db", "sqlite:///x.db", "http://h/x"]
)
def test_malformed_or_foreign_urls_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        normalize_url(bad)
    assert raised.value.setting == "database_url"


def test_rejection_never_echoes_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        normalize_url("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in mask_url("postgresql://u:hunter2@h/db")


async def test_registry_shares_one_engine_per_database(database_url: str) -> None:
    registry = EngineRegistry()
    parsed = make_url(database_url)
    respelled = parsed.set(drivername="postgresql", query=dict(reversed(parsed.query.items())))
    first = registry.get_engine(database_url)
    second = registry.get_engine(respelled.render_as_string(hide_password=False))
    assert first is second
    assert len(registry) == 1
    await registry.dispose_all()
    assert len(registry) == 0


async def test_pool_options_use_sqlalchemy_names(database_url: str) -> None:
    registry = EngineRegistry()
    pool = PoolSettings(pool_size=3, max_overflow=2, pool_timeout=7.0, pool_recycle=60)
    engine = registry.get_engine(database_url, pool)
    sync_pool = engine.sync_engine.pool
    assert sync_pool.size() == 3  # type: ignore[attr-defined]
    assert sync_pool.timeout() == 7.0  # type: ignore[attr-defined]
    assert sync_pool._max_overflow == 2  # type: ignore[attr-defined]
    assert sync_pool._recycle == 60
    assert sync_pool._pre_ping is False, "memfuse pings with one round trip of its own"
    stats = registry.stats()[engine_key(database_url)]
    assert stats.pool_size == 3
    await registry.dispose_all()


async def test_password_never_in_keys_stats_logs_or_repr(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    registry = EngineRegistry(PerformanceMonitor())
    with caplog.at_level(logging.DEBUG):
        # trust authentication: the server ignores the password, so the engine works
        engine = registry.get_engine(with_password(database_url, secret))
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        await registry.dispose_all()
    assert all(secret not in key for key in registry.stats())
    assert secret not in repr(engine)
    assert secret not in caplog.text
    assert "***" in caplog.text


async def test_vector_codec_on_every_pooled_connection(
    migrated_engine: AsyncEngine,
) -> None:
    """Round-trip a vector on several distinct connections held at the same time."""
    await migrated_engine.dispose()  # start with connections opened after the migration

    async def round_trip(value: float) -> tuple[int, list[float]]:
        async with migrated_engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            back = (
                await connection.execute(
                    text("SELECT CAST(:v AS vector) AS v, pg_sleep(0.05)"),
                    {"v": [value, value + 1, value + 2]},
                )
            ).scalar_one()
            return pid, back.to_list()

    results = await asyncio.gather(*(round_trip(float(i)) for i in range(4)))
    assert len({pid for pid, _ in results}) == 4
    assert [vector for _, vector in results] == [[i, i + 1.0, i + 2.0] for i in range(4)]


async def test_connections_opened_before_the_extension_get_the_codec_later(
    engine: AsyncEngine,
) -> None:
    from memfuse.db import migrate

    async with engine.connect() as connection:  # opened before `vector` exists
        await connection.execute(text("SELECT 1"))
    await migrate.upgrade(engine)
    async with engine.connect() as connection:  # the same pooled connection, now with codec
        value = (
            await connection.execute(text("SELECT CAST(:v AS vector)"), {"v": [1.5, 2.5]})
        ).scalar_one()
    assert value.to_list() == [1.5, 2.5]


async def test_stats_count_connections_and_checkouts(database_url: str) -> None:
    registry = EngineRegistry(PerformanceMonitor())
    engine = registry.get_engine(database_url, PoolSettings(pool_size=2, max_overflow=1))
    key = engine_key(database_url)

    async def hold() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(0.1)"))

    holding = asyncio.gather(hold(), hold(), hold())
    await asyncio.sleep(0.05)
    busy = registry.stats()[key]
    await holding
    idle = registry.stats()[key]
    await registry.dispose_all()
    assert busy.checked_out == 3
    assert busy.overflow == 1
    assert idle.checked_out == 0
    assert idle.connections_opened == 3
    assert registry.monitor is not None
    pool_access = registry.monitor.stats("connection_pool_access")
    assert pool_access is not None and pool_access.count == 3


async def test_acquire_release_disposes_with_the_last_holder(database_url: str) -> None:
    registry = EngineRegistry()
    first = registry.acquire(database_url)
    second = registry.acquire(database_url)
    assert first is second
    await registry.release(first)
    assert database_url in registry
    await registry.release(second)
    assert database_url not in registry


async def test_host_engine_is_instrumented_but_never_disposed(
    database_url: str, monitor: PerformanceMonitor
) -> None:
    host_engine = create_async_engine(normalize_url(database_url))
    registry = EngineRegistry(monitor)
    assert registry.adopt(host_engine) is host_engine
    assert registry.get_engine(database_url) is host_engine
    async with host_engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    query_stats = monitor.stats(QUERY_OPERATION)
    assert query_stats is not None and query_stats.count >= 1
    await registry.dispose_all()
    assert host_engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    async with host_engine.connect() as connection:  # still usable: memfuse did not dispose it
        assert (await connection.execute(text("SELECT 2"))).scalar_one() == 2
    before = monitor.stats(QUERY_OPERATION)
    assert before is not None
    async with host_engine.connect() as connection:
        await connection.execute(text("SELECT 3"))
    after = monitor.stats(QUERY_OPERATION)
    assert after is not None and after.count == before.count, "hooks removed after dispose_all"
    await host_engine.dispose()


async def test_adopting_a_second_engine_for_one_database_is_refused(database_url: str) -> None:
    registry = EngineRegistry()
    registry.get_engine(database_url)
    with pytest.raises(MemfuseError, match="already registered"):
        registry.adopt(create_async_engine(normalize_url(database_url)))
    await registry.dispose_all()


async def test_create_engine_rejects_bad_urls() -> None:
    with pytest.raises(ConfigurationError):
        create_engine("mysql://root@localhost/db")


async def test_health_reports_up_and_down_engines_and_keeps_them(
    database_url: str, server_url: str
) -> None:
    registry = EngineRegistry()
    registry.get_engine(database_url)
    missing = make_url(server_url).set(database="memfuse_no_such_database")
    registry.get_engine(missing.render_as_string(hide_password=False))
    health = await registry.health()
    up, down = health[engine_key(database_url)], health[engine_key(missing)]
    assert up.ok and up.error is None and up.latency_ms > 0
    assert not down.ok and down.error is not None
    assert "memfuse_no_such_database" in down.error
    assert len(registry) == 2, "a failed check keeps the engine (it is disposed on shutdown)"
    await registry.dispose_all()


async def test_a_dead_pooled_connection_is_replaced_at_checkout(database_url: str) -> None:
    """The ping at checkout finds a connection whose server process is gone; the pool opens
    another before the caller sees an error."""
    registry = EngineRegistry()
    engine = registry.get_engine(database_url, PoolSettings(pool_size=1, max_overflow=0))
    try:
        async with engine.connect() as connection:
            old_pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(**asyncpg_connect_args(database_url))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        async with engine.connect() as connection:
            new_pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert new_pid != old_pid
    finally:
        await registry.dispose_all()
