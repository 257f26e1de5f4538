"""Faults the background machinery must survive: a killed LISTEN connection, a loop that
raises, a ``close()`` that is cancelled. Real PostgreSQL, the real model where vectors matter.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from real_model import memfuse_with_model

from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.engines import create_engine
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.errors import (
    ClosedError,
    ConfigurationError,
    DatabaseUnavailableError,
    ValidationError,
)
from memfuse.memory import MemFuse, Memory
from memfuse.monitor import PerformanceMonitor


async def terminate(url: str, pid: int) -> None:
    """What a network blip or an administrator does to one backend."""
    admin = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def wait_until(predicate: object, seconds: float) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``seconds``."""
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def embedded(memory: Memory, message_id: uuid.UUID) -> bool:
    row = await memory.get_message(message_id)
    return row is not None and row.embedded


@pytest.mark.slow
async def test_the_listener_comes_back_after_every_kill_and_wakes_the_worker(
    database_url: str, model: LocalEmbedder
) -> None:
    """Polling every 60 s would hide a dead listener; a vector within seconds proves the
    NOTIFY path works again after each kill."""
    async with memfuse_with_model(
        database_url, model, worker_poll_interval=60.0, pipeline_auto=False
    ) as mf:
        worker = await resolve(mf.container.embedding_worker)
        assert worker is not None
        memory = await mf.init("watcher")
        await wait_until(lambda: worker._listener is not None, 10)
        for round_ in range(5):
            connects = worker.stats.listener_connects
            listener = worker._listener
            assert listener is not None
            await terminate(database_url, listener.get_server_pid())
            await wait_until(lambda c=connects: worker.stats.listener_connects > c, 10)
            # A writer in another process: the worker learns of it only through NOTIFY.
            outsider = await asyncpg.connect(**asyncpg_connect_args(database_url))
            try:
                row_id = uuid.uuid4()
                await outsider.execute(
                    "INSERT INTO memfuse.messages (id, user_id, agent_id, session_id, seq, role,"
                    " content, token_count) SELECT $1, user_id, agent_id, id, $2, 'user', $3, 3"
                    " FROM memfuse.sessions WHERE id = $4",
                    row_id,
                    round_ + 1,
                    f"outside write {round_}",
                    memory.scope.session_id,
                )
            finally:
                await outsider.close()
            started = time.monotonic()
            while not await embedded(memory, row_id):
                assert time.monotonic() - started < 10, f"round {round_}: no wake-up"
                await asyncio.sleep(0.05)
        assert mf.monitor.counters().get("listener_restarts", 0) >= 5
        health = await mf.health()
        assert health.ok, health.lines()


@pytest.mark.slow
async def test_a_worker_loop_that_raises_restarts_and_health_shows_it(
    database_url: str,
    model: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with memfuse_with_model(database_url, model, pipeline_auto=False) as mf:
        worker = await resolve(mf.container.embedding_worker)
        assert worker is not None
        original = EmbeddingWorker.process_batch

        async def broken(self: EmbeddingWorker) -> int:
            raise RuntimeError("a bug in one batch")

        monkeypatch.setattr(EmbeddingWorker, "process_batch", broken)
        memory = await mf.init("ana")
        with caplog.at_level(logging.DEBUG, logger="memfuse.background"):
            ids = await memory.add([{"role": "user", "content": "I adopted a cat."}])
            worker.notify()
            await wait_until(lambda: worker.task_states()[0].restarts >= 3, 10)
            # Failing again and again: the loop spends its time in backoff, and health says so.
            report = await mf.health()
            background = next(c for c in report.checks if c.name == "background")
            assert not background.ok
            assert "embedding_worker-0 restarting after RuntimeError: a bug in one batch" in (
                background.detail
            )
            monkeypatch.setattr(EmbeddingWorker, "process_batch", original)
            await mf.flush()
            assert await embedded(memory, ids[0])
        warnings = [
            r
            for r in caplog.records
            if "a bug in one batch" in r.getMessage() and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1, "the same cause is logged once at WARNING, repeats at DEBUG"
        assert mf.monitor.counters()["embedding_worker_restarts"] >= 1
        await wait_until(lambda: worker.task_states()[0].status == "running", 10)
        assert (await mf.health()).ok


async def test_a_cancelled_close_leaves_no_caller_hanging(database_url: str) -> None:
    """The issue's reproduction: 200 adds queued in the buffer, close() cancelled while the
    flusher works through them (one hundred transactions)."""
    mf = MemFuse(database_url, pipeline_auto=False, buffer_max_delay=5.0, buffer_max_messages=40)
    await mf.start()
    memory = await mf.init("ana")
    calls = [
        asyncio.create_task(
            memory.add([{"role": "user", "content": f"message {i}.{j}"} for j in range(20)])
        )
        for i in range(200)
    ]
    await asyncio.sleep(0.05)  # all queued, waiting for the buffer's 5 s age limit
    closing = asyncio.create_task(mf.close())
    await asyncio.sleep(0.1)  # the flusher is writing the queue out
    assert not all(c.done() for c in calls)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    done, pending = await asyncio.wait(calls, timeout=30)
    assert not pending, f"{len(pending)} callers still waiting"
    acknowledged = [i for c in done if c.exception() is None for i in c.result()]
    refused = [c.exception() for c in done if c.exception() is not None]
    assert all(isinstance(e, ClosedError) for e in refused)
    await asyncio.wait_for(mf.close(), 10)  # a second close returns once shutdown is over

    # What was acknowledged is durable.
    async with MemFuse(database_url, pipeline_auto=False) as reopened:
        stored = await (await reopened.init("ana", session=memory.session)).list_messages(
            limit=1000, offset=0
        )
        count = len(stored)
        while len(stored) == 1000:
            stored = await (await reopened.init("ana", session=memory.session)).list_messages(
                limit=1000, offset=count
            )
            count += len(stored)
    assert count >= len(acknowledged)
    assert len(acknowledged) == 4000, "a cancelled close() still writes what was queued"


async def test_close_twice_and_concurrently(database_url: str) -> None:
    mf = MemFuse(database_url, pipeline_auto=False)
    await mf.start()
    memory = await mf.init("ana")
    await asyncio.gather(mf.close(), mf.close(), mf.close())
    await mf.close()
    with pytest.raises(ClosedError):
        await mf.init("ana")
    for call in (
        memory.add([{"role": "user", "content": "too late"}]),
        memory.list_messages(),
        memory.list_episodes(),
        memory.delete_session(),
        memory.query("anything"),
    ):
        with pytest.raises(ClosedError):
            await call


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://ana:secret@127.0.0.1:1/memory", "connection refused"),
        ("postgresql://ana:secret@no-such-host.invalid/memory", "unknown database host"),
    ],
)
async def test_starting_against_an_unreachable_database_is_one_clear_error(
    url: str, reason: str
) -> None:
    with pytest.raises(DatabaseUnavailableError) as raised:
        async with MemFuse(url, embedder="none"):
            pass
    assert reason in str(raised.value)
    assert "secret" not in str(raised.value) and "***" in str(raised.value)


@pytest.mark.slow
async def test_a_flush_running_when_close_is_called_stops_and_leaves_no_lease(
    database_url: str, model: LocalEmbedder
) -> None:
    async with memfuse_with_model(
        database_url, model, pipeline_auto=False, buffer_enabled=False, worker_batch_size=32
    ) as mf:
        worker = await resolve(mf.container.embedding_worker)
        assert worker is not None
        memory = await mf.init("ana")
        await memory.add(
            [{"role": "user", "content": f"message {i} about the sea"} for i in range(600)]
        )
        flushing = asyncio.create_task(mf.flush())
        await asyncio.sleep(1.0)  # the flush is draining the queue, batch after batch
    # close() has returned: the flush takes no new batch (it ends at once, refused), and no
    # job stays leased under the closed worker's id (each would wait out its lease before
    # another worker could take it).
    await asyncio.sleep(0.3)
    connection = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        leased = await connection.fetchval(
            "SELECT count(*) FROM memfuse.embedding_jobs WHERE locked_by = $1", worker.worker_id
        )
    finally:
        await connection.close()
    assert leased == 0
    done, _ = await asyncio.wait({flushing}, timeout=1.0)
    assert done, "the flush went on after close() returned"
    assert flushing.exception() is None or isinstance(flushing.exception(), ClosedError)


async def test_the_workers_own_methods_report_an_unreachable_database_plainly(
    model: LocalEmbedder,
) -> None:
    engine = create_engine("postgresql://ana:secret@127.0.0.1:1/memory")
    worker = EmbeddingWorker(engine, model, PerformanceMonitor())
    try:
        for call in (worker.queue_depth(), worker.requeue_dead_letters(), worker.drain()):
            with pytest.raises(DatabaseUnavailableError, match="connection refused"):
                await call
    finally:
        await engine.dispose()


async def test_a_tls_option_the_driver_refuses_is_a_configuration_error(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify-full`` with no root certificate file: asyncpg refuses it while handling a
    missing file, which must not read as "no server socket"."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    with pytest.raises(ConfigurationError, match="root certificate"):
        async with MemFuse(f"{database_url}&sslmode=verify-full"):
            pass


async def test_health_and_set_parallel_check_their_arguments(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        for bad in ("x", True, -1, 1.5):
            with pytest.raises(ValidationError, match="max_queue_depth"):
                await mf.health(max_queue_depth=bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="must be True or False"):
            mf.set_parallel("no")  # type: ignore[arg-type]
        assert mf.parallel is True
