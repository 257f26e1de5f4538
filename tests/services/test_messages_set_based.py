"""Set-based writes (migration 0006): one ``add()`` or one buffer batch is one statement, one
round trip and one transaction, whatever its size; the guarantees of the write path hold.

What the older tests in test_messages.py check (numbering, idempotent ids, conflicts, input
rules) runs against this design too; here: the round trips, calls of 50,000 messages, batches
mixing sessions and retries, and writes racing the real embedding worker and the pipeline.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import parts
import pytest
from real_model import memfuse_with_model
from sqlalchemy import text

from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import NotFoundError, ValidationError
from memfuse.memory import MemFuse, Memory
from memfuse.monitor.engine_hooks import QUERY_OPERATION
from memfuse.services import messages as messages_service
from memfuse.services.messages import MessageWriter, WriteRequest
from memfuse.types import MemoryScope
from memfuse.validation import MessageInput, validate_messages


@pytest.fixture(params=[True, False], ids=["buffered", "direct"])
async def mf(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=request.param) as mf:
        yield mf


@contextmanager
def counting(mf: MemFuse, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Statements timed for the monitor (``db_query``: SQLAlchemy's hooks for every statement
    but the write's, which its writer times), and messages the client sends to the server
    (each write to a socket is one round trip: the client then waits for the answer)."""
    counts = {"statements": 0, "sends": 0}
    monitor = mf.monitor
    record = monitor.record

    def timed(operation: str, elapsed_ms: float, *, success: bool = True) -> None:
        if operation == QUERY_OPERATION:
            counts["statements"] += 1
        record(operation, elapsed_ms, success=success)

    transport = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    original = transport.write

    def write(self: Any, data: Any) -> None:
        counts["sends"] += 1
        original(self, data)

    monkeypatch.setattr(transport, "write", write)
    monkeypatch.setattr(monitor, "record", timed)
    try:
        yield counts
    finally:
        monkeypatch.setattr(transport, "write", original)
        monkeypatch.setattr(monitor, "record", record)


def batches_written(mf: MemFuse) -> int:
    stats = mf.buffer_stats()
    assert stats is not None
    return sum(stats.batches.values())


def said(count: int, prefix: str = "message") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{prefix} {i}"} for i in range(count)]


async def numbers(mf: MemFuse, memory: Memory) -> list[int]:
    async with parts.db(mf) as db:
        rows = await db.execute(
            text("SELECT seq FROM memfuse.messages WHERE session_id = :s ORDER BY seq"),
            {"s": memory.scope.session_id},
        )
        return [row.seq for row in rows]


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "direct"])
async def test_an_add_is_one_statement_and_one_round_trip(
    database_url: str, monkeypatch: pytest.MonkeyPatch, buffered: bool
) -> None:
    """Without the pool's ping (its own round trips, on by default), an ``add()`` of one
    message or of a thousand sends the server one message and waits once."""
    async with MemFuse(
        database_url, pipeline_auto=False, buffer_enabled=buffered, pool_pre_ping=False
    ) as mf:
        memory = await mf.init("alice", session="trips")
        await memory.add(said(2, "warm-up"))  # prepares the statement on the connection
        for size in (1, 1000):
            with counting(mf, monkeypatch) as counts:
                await memory.add(said(size, f"size {size}"))
            assert counts == {"statements": 1, "sends": 1}, size
        assert await numbers(mf, memory) == list(range(1, 1004))


async def test_the_write_skips_the_pools_ping(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the ping on (the default), an ``add()`` still sends one message: its statement
    shows whether the connection is alive (it sent the ping first before; SQLAlchemy's own
    ping on asyncpg sends three: BEGIN, the ping, ROLLBACK)."""
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=False) as mf:
        memory = await mf.init("alice", session="trips")
        await memory.add(said(2, "warm-up"))
        with counting(mf, monkeypatch) as counts:
            await memory.add(said(1, "not pinged"))
        assert counts == {"statements": 1, "sends": 1}


async def test_concurrent_calls_of_many_sessions_share_one_statement_per_batch(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with MemFuse(database_url, pipeline_auto=False, pool_pre_ping=False) as mf:
        memories = [await mf.init(f"user-{i % 3}", session=f"s{i}") for i in range(12)]
        await asyncio.gather(*(m.add(said(1, "warm-up")) for m in memories))
        batches_before = batches_written(mf)
        with counting(mf, monkeypatch) as counts:
            await asyncio.gather(*(m.add(said(1 + i % 4)) for i, m in enumerate(memories)))
        batches = batches_written(mf) - batches_before
        assert counts["statements"] == batches
        assert batches < len(memories), "concurrent calls shared batches"
        for i, memory in enumerate(memories):
            assert await numbers(mf, memory) == list(range(1, 3 + i % 4))


async def test_the_write_is_timed_as_a_query_failed_or_not(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write bypasses SQLAlchemy's execution layer, not the monitor: each one is a
    ``db_query`` sample, a refused one marked failed."""
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=False) as mf:
        alice = await mf.init("alice")
        bob = await mf.init("bob")
        [taken] = await bob.add([{"id": str(uuid.uuid4()), "role": "user", "content": "x"}])
        samples: list[bool] = []
        record = mf.monitor.record

        def timed(operation: str, elapsed_ms: float, *, success: bool = True) -> None:
            if operation == QUERY_OPERATION:
                samples.append(success)
            record(operation, elapsed_ms, success=success)

        monkeypatch.setattr(mf.monitor, "record", timed)
        await alice.add(said(3))
        with pytest.raises(ValidationError):
            await alice.add([{"id": str(taken), "role": "user", "content": "mine"}])
    assert samples == [True, False]


async def terminate_other_backends(database_url: str) -> None:
    killer = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await killer.close()


@pytest.mark.parametrize("pool_pre_ping", [True, False])
async def test_a_write_on_a_connection_that_went_away_is_written_once_on_a_new_one(
    database_url: str, pool_pre_ping: bool
) -> None:
    """The writer skips the pool's ping: its statement finds a pooled connection that went
    away, the pool replaces it, and the write goes once more on a checked connection."""
    async with MemFuse(
        database_url, pipeline_auto=False, buffer_enabled=False, pool_pre_ping=pool_pre_ping
    ) as mf:
        memory = await mf.init("alice")
        await memory.add(said(1, "before"))
        await terminate_other_backends(database_url)
        await memory.add(said(2, "across"))
        await memory.add(said(1, "after"))
        assert [row.content for row in await memory.list_messages(order="asc")] == [
            "before 0",
            "across 0",
            "across 1",
            "after 0",
        ]
        assert [row.seq for row in await memory.list_messages(order="asc")] == [1, 2, 3, 4]


async def test_a_write_whose_connection_broke_after_it_committed_is_not_stored_twice(
    database_url: str,
) -> None:
    """The connection breaks after the server committed the write but before the answer
    came back: the second attempt finds the ids stored in their session and skips them."""
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=False) as mf:
        memory = await mf.init("alice")
        writer = await resolve(mf.container.message_writer)
        calls = 0
        real_write = messages_service.write_messages

        async def commit_then_break(driver: Any, call: str, columns: Any) -> int:
            nonlocal calls
            calls += 1
            written = await real_write(driver, call, columns)
            if calls == 1:
                await driver.close()  # committed: the answer is lost with the connection
                raise asyncpg.ConnectionDoesNotExistError("connection was closed")
            return written

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(messages_service, "write_messages", commit_then_break)
            checked = validate_messages(said(3, "once"), max_chars=1000)
            ids = (await writer.write([WriteRequest(memory.scope, checked)]))[0]
        assert calls == 2
        stored = await memory.list_messages(order="asc")
        assert [row.id for row in stored] == ids
        assert [row.seq for row in stored] == [1, 2, 3]


# --- one call of 50,000 messages ---------------------------------------------------------------


@pytest.mark.slow
async def test_one_call_of_50000_messages_is_written_whole_or_not_at_all(
    database_url: str,
) -> None:
    """A call this large is still one statement: an invalid last message is refused before
    anything is written; a last message whose id is stored in another session fails the call
    in the database, after the 49,999 others were numbered; a valid call writes all 50,000,
    numbered 1 to 50,000. (Through the buffer, the default; without it the same writer runs,
    and test_messages.py writes 40,000 both ways.)"""
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        await write_50000(mf)


async def write_50000(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="import")
    elsewhere = await mf.init("bob", session="other")
    started = time.monotonic()
    batch = said(50_000)

    with pytest.raises(ValidationError) as invalid:
        await memory.add([*batch[:-1], {"role": "user", "content": " "}])
    assert (invalid.value.index, invalid.value.field) == (49_999, "content")

    [taken] = await elsewhere.add([{"id": str(uuid.uuid4()), "role": "user", "content": "x"}])
    with pytest.raises(ValidationError, match="belongs to another message") as stored:
        await memory.add([*batch[:-1], {"id": str(taken), "role": "user", "content": "x"}])
    assert (stored.value.index, stored.value.field) == (49_999, "id")
    assert await numbers(mf, memory) == []

    ids = await memory.add(batch)
    assert len(set(ids)) == 50_000
    async with parts.db(mf) as db:
        count, low, high, counter, jobs = (
            await db.execute(
                text(
                    "SELECT count(*), min(seq), max(seq),"
                    " (SELECT message_count FROM memfuse.sessions WHERE id = :s),"
                    " (SELECT count(*) FROM memfuse.embedding_jobs j"
                    "  JOIN memfuse.messages m ON m.id = j.row_id WHERE m.session_id = :s)"
                    " FROM memfuse.messages WHERE session_id = :s"
                ),
                {"s": memory.scope.session_id},
            )
        ).one()
        first, last = (
            await db.execute(
                text(
                    "SELECT (SELECT id FROM memfuse.messages WHERE session_id = :s AND seq = 1),"
                    " (SELECT id FROM memfuse.messages WHERE session_id = :s AND seq = 50000)"
                ),
                {"s": memory.scope.session_id},
            )
        ).one()
    assert (count, low, high, counter, jobs) == (50_000, 1, 50_000, 50_000, 50_000)
    assert (first, last) == (ids[0], ids[-1]), "numbered in the call's order"
    assert time.monotonic() - started < 60


# --- batches mixing sessions, retries and failures (the buffer's batches) ----------------------


def request(scope: MemoryScope, *contents: str, ids: list[uuid.UUID] | None = None) -> WriteRequest:
    given = ids or [uuid.uuid4() for _ in contents]
    return WriteRequest(
        scope,
        [
            MessageInput(given[i], "user", content, client_id=ids is not None)
            for i, content in enumerate(contents)
        ],
    )


async def stored(mf: MemFuse, memory: Memory) -> list[tuple[int, str]]:
    rows = await memory.list_messages(limit=100, order="asc")
    return [(row.seq, row.content) for row in rows]


async def test_a_batch_numbers_each_session_in_call_order_and_skips_retries(
    mf: MemFuse,
) -> None:
    a = await mf.init("alice", session="a")
    b = await mf.init("alice", session="b")
    writer: MessageWriter = await resolve(mf.container.message_writer)
    kept = [uuid.uuid4(), uuid.uuid4()]
    await writer.write([request(a.scope, "a1", "a2", ids=kept)])
    again = [kept[1], uuid.uuid4()]
    returned = await writer.write(
        [
            request(b.scope, "b1"),
            request(a.scope, "a2 retried", "a3", ids=again),  # a2 is a retry: skipped
            request(b.scope, "b2", "b3"),
            request(a.scope, "a3 again", ids=[again[1]]),  # a retry within the same batch
        ]
    )
    assert returned[1] == again and returned[3] == [again[1]]
    assert await stored(mf, a) == [(1, "a1"), (2, "a2"), (3, "a3")]
    assert await stored(mf, b) == [(1, "b1"), (2, "b2"), (3, "b3")]
    async with parts.db(mf) as db:
        rows = await db.execute(text("SELECT name, message_count FROM memfuse.sessions"))
        counters = {row.name: row.message_count for row in rows}
    assert counters == {"a": 3, "b": 3}


async def test_an_id_in_two_sessions_of_one_batch_fails_the_batch_naming_the_second(
    mf: MemFuse,
) -> None:
    a = await mf.init("alice", session="a")
    b = await mf.init("bob", session="b")
    writer: MessageWriter = await resolve(mf.container.message_writer)
    shared = uuid.uuid4()
    with pytest.raises(ValidationError, match="belongs to another message") as raised:
        await writer.write(
            [
                request(a.scope, "first", ids=[shared]),
                request(b.scope, "fine", "second", ids=[uuid.uuid4(), shared]),
            ]
        )
    assert (raised.value.index, raised.value.field) == (1, "id")
    assert await stored(mf, a) == [] and await stored(mf, b) == [], "nothing of the batch"


async def test_a_batch_with_a_deleted_session_names_it_and_writes_nothing(mf: MemFuse) -> None:
    kept = await mf.init("alice", session="kept")
    gone = await mf.init("alice", session="gone")
    await gone.delete_session()
    writer: MessageWriter = await resolve(mf.container.message_writer)
    with pytest.raises(NotFoundError, match="session 'gone' no longer exists"):
        await writer.write([request(kept.scope, "hello"), request(gone.scope, "lost")])
    assert await stored(mf, kept) == []
    with pytest.raises(NotFoundError, match="no longer exists"):
        await gone.add(said(1))
    await kept.add(said(1))  # through the buffer, the failing call fails alone
    assert await stored(mf, kept) == [(1, "message 0")]


# --- writes racing the real embedding worker and the layer pipeline ----------------------------


@pytest.mark.slow
async def test_writes_racing_the_worker_and_the_pipeline_keep_every_guarantee(
    database_url: str, model: LocalEmbedder
) -> None:
    """Buffered writers in one process and direct writers in another instance write the same
    sessions (single messages, batches, concurrent retries of the same ids) while the real
    model's worker embeds and the pipeline folds M1/M2. Afterwards: numbers gap-free per
    session, each message stored once, embedded once with no job left, and in exactly one
    episode."""
    rng = random.Random(14)
    async with (
        memfuse_with_model(
            database_url, model, worker_poll_interval=0.2, pipeline_poll_interval=0.3
        ) as mf,
        MemFuse(database_url, pipeline_auto=False, buffer_enabled=False) as direct,
    ):
        names = [(f"user-{u}", f"session-{s}") for u in range(2) for s in range(2)]
        buffered = [await mf.init(user, session=session) for user, session in names]
        unbuffered = [await direct.init(user, session=session) for user, session in names]
        expected: dict[uuid.UUID, set[uuid.UUID]] = {m.scope.session_id: set() for m in buffered}

        async def writer(memory: Memory, tag: str) -> None:
            for round_ in range(4):
                size = rng.choice([1, 1, 3, 12])
                batch = [
                    {"id": str(uuid.uuid4()), "role": "user", "content": f"{tag} {round_} {i}"}
                    for i in range(size)
                ]
                results = await asyncio.gather(memory.add(batch), memory.add(batch))
                assert results[0] == results[1], "a concurrent retry returns the same ids"
                expected[memory.scope.session_id].update(results[0])
                await asyncio.sleep(rng.random() * 0.05)

        await asyncio.gather(
            *(writer(m, f"buffered {i}") for i, m in enumerate(buffered)),
            *(writer(m, f"direct {i}") for i, m in enumerate(unbuffered)),
        )
        await mf.flush()
        worker = await parts.worker(mf)
        assert await worker.queue_depth() == 0

        async with parts.db(mf) as db:
            for memory in buffered:
                session_id = memory.scope.session_id
                rows = (
                    await db.execute(
                        text(
                            "SELECT id, seq, embedding IS NOT NULL AS embedded"
                            " FROM memfuse.messages WHERE session_id = :s ORDER BY seq"
                        ),
                        {"s": session_id},
                    )
                ).all()
                assert {row.id for row in rows} == expected[session_id]
                assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
                assert all(row.embedded for row in rows)
                in_episodes = (
                    await db.execute(
                        text(
                            "SELECT m, count(*) FROM memfuse.episodes, unnest(message_ids) m"
                            " WHERE session_id = :s GROUP BY m"
                        ),
                        {"s": session_id},
                    )
                ).all()
                assert {m for m, _ in in_episodes} == expected[session_id]
                assert all(count == 1 for _, count in in_episodes)
            left = await db.scalar(
                text("SELECT count(*) FROM memfuse.embedding_jobs WHERE table_name = 'messages'")
            )
        assert left == 0
