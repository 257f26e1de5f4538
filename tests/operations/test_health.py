"""Health checks (``mf.health()`` and ``memfuse doctor``) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import parts
import pytest
from real_model import memfuse_with_model
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.container import resolve
from memfuse.db import migrate
from memfuse.db.engines import create_engine
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse
from memfuse.operations.health import check_health

NAMES = ["database", "pgvector", "schema", "dimension", "queue", "dead letters", "pipeline"]


class SizedEmbedder:
    """Only what the dimension check reads; nothing is embedded here."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self.model_name = f"a {dimension}-dimension model"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def test_a_migrated_database_is_healthy(database_url: str) -> None:
    async with MemFuse(database_url) as mf:
        report = await mf.health()
    assert report.ok, report.lines()
    assert [check.name for check in report.checks] == [*NAMES, "background"]
    assert report.to_dict()["ok"] is True
    assert json.dumps(report.to_dict(), default=str)


async def test_doctor_counts_the_workers_listening_in_any_process(
    database_url: str, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    """The queue check of another process (``doctor``) sees this process's LISTEN
    connection by its application name in pg_stat_activity."""
    await migrate.upgrade(engine)
    before = await check_health(engine, schema="memfuse", embedder=None)
    assert "0 worker(s) listening" in {c.name: c.detail for c in before.checks}["queue"]
    async with memfuse_with_model(database_url, model) as mf:
        assert (await resolve(mf.container.embedding_worker)) is not None
        for _ in range(200):
            if (await parts.worker(mf)).stats.listener_connects:
                break
            await asyncio.sleep(0.05)
        report = await check_health(engine, schema="memfuse", embedder=None)
    assert "1 worker(s) listening" in {c.name: c.detail for c in report.checks}["queue"]


async def test_health_reads_the_configured_schema(database_url: str) -> None:
    async with MemFuse(database_url, schema="tenant_a", pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "one queued job"}])
        report = await mf.health(max_queue_depth=0)
    failed = {check.name: check.detail for check in report.checks if not check.ok}
    assert set(failed) == {"queue"}, report.lines()
    assert failed["queue"].startswith("1 embedding jobs waiting")


async def test_an_unmigrated_database_fails_with_what_to_do(engine: AsyncEngine) -> None:
    report = await check_health(engine, schema="memfuse", embedder=SizedEmbedder(384))  # type: ignore[arg-type]
    checks = {check.name: check for check in report.checks}
    assert not report.ok
    assert checks["database"].ok
    assert not checks["schema"].ok and "memfuse db upgrade" in checks["schema"].detail
    assert not checks["dimension"].ok and "not migrated" in checks["dimension"].detail


async def test_dimension_queue_dead_letters_and_pipeline_failures_are_reported(
    database_url: str, engine: AsyncEngine
) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "one queued job"}])
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO memfuse.embedding_dead_letters "
                "(id, table_name, row_id, enqueued_at, attempts, last_error) "
                "SELECT id, table_name, row_id, enqueued_at, 5, 'boom' "
                "FROM memfuse.embedding_jobs LIMIT 1"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO memfuse.layer_progress (session_id, layer, user_id, failures, "
                "last_error) SELECT id, 'm2', user_id, 3, 'extractor down' FROM memfuse.sessions"
            )
        )
    report = await check_health(
        engine,
        schema="memfuse",
        embedder=SizedEmbedder(768),  # type: ignore[arg-type]
        max_queue_depth=0,
    )
    failed = {check.name: check.detail for check in report.checks if not check.ok}
    assert set(failed) == {"dimension", "queue", "dead letters", "pipeline"}
    assert "768" in failed["dimension"] and "384" in failed["dimension"]
    assert failed["queue"].startswith("1 embedding jobs waiting")
    assert "requeue-dead-letters" in failed["dead letters"]
    assert "1 session layer(s) failing" in failed["pipeline"]


async def test_an_unreachable_database_fails_one_check_and_raises_nothing() -> None:
    engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
    try:
        report = await check_health(engine, schema="memfuse", embedder=None, check_seconds=5)
    finally:
        await engine.dispose()
    assert [(c.name, c.ok) for c in report.checks] == [("database", False)]
    assert report.checks[0].detail


def test_memfuse_doctor_exits_non_zero_on_a_failing_check(database_url: str) -> None:
    command = [sys.executable, "-m", "memfuse.cli", "--database-url", database_url, "doctor"]
    unmigrated = subprocess.run([*command, "--json"], capture_output=True, text=True)
    assert unmigrated.returncode == 1
    report = json.loads(unmigrated.stdout)
    assert report["ok"] is False
    assert {c["name"] for c in report["checks"] if not c["ok"]} >= {"pgvector", "schema"}

    subprocess.run(
        [sys.executable, "-m", "memfuse.cli", "--database-url", database_url, "db", "upgrade"],
        check=True,
        capture_output=True,
    )
    healthy = subprocess.run(command, capture_output=True, text=True)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.splitlines()[-1] == "healthy"
    assert all(line.startswith("ok") for line in healthy.stdout.splitlines()[:-1])


@pytest.fixture
async def two_messages(database_url: str) -> str:
    async with MemFuse(database_url) as mf:
        memory = await mf.init("ana")
        await memory.add(
            [{"role": "user", "content": "I live in Porto."}, {"role": "user", "content": "Hi."}]
        )
        await mf.flush()
    return database_url


def test_memfuse_stats_counts_what_the_schema_holds(two_messages: str) -> None:
    database_url = two_messages
    command = [sys.executable, "-m", "memfuse.cli", "--database-url", database_url, "stats"]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    assert figures["users"] == 1 and figures["sessions"] == 1
    assert figures["messages"] == 2 and figures["episodes"] == 1
    assert figures["messages_embedded"] == 0, "the suite runs without an embedder"
    assert figures["queue_depth"] >= 3 and figures["dead_letters"] == 0
    assert figures["monitor"]["operations"]["db_query"]["count"] >= 1
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "messages                 2" in table and "db_query" in table
