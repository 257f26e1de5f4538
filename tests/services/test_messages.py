"""M0 write path against the real database: numbering, atomicity, idempotency, large calls,
concurrent retries and the input rules (memfuse.validation) as ``add()`` applies them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import parts
import pytest
from sqlalchemy import text

from memfuse.errors import ConflictError, ValidationError
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.messages import write_call, write_messages
from memfuse.services.messages import WriteRequest, message_columns
from memfuse.validation import (
    MAX_METADATA_DEPTH,
    MAX_STORED_TIME,
    MIN_STORED_TIME,
    MessageInput,
    validate_messages,
)


@pytest.fixture(params=[True, False], ids=["buffered", "direct"])
async def mf(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=request.param) as mf:
        yield mf


async def test_concurrent_adds_into_one_session_are_numbered_without_gaps(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="busy")
    calls = [
        [{"role": "user", "content": f"call {i} part {j}"} for j in range(1 + i % 3)]
        for i in range(100)
    ]
    returned = await asyncio.gather(*(memory.add(call) for call in calls))

    rows = await memory.list_messages(limit=1000, order="asc")
    assert len(rows) == sum(len(call) for call in calls)
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    seq_of = {row.id: row.seq for row in rows}
    for call, ids in zip(calls, returned, strict=True):
        seqs = [seq_of[i] for i in ids]
        assert seqs == list(range(seqs[0], seqs[0] + len(call))), "one call, one block"
        assert [r.content for r in rows if r.id in set(ids)] == [m["content"] for m in call]


async def test_numbering_continues_across_calls_and_never_restarts(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="long")
    await memory.add([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    again = await mf.init("alice", session="long")
    await again.add([{"role": "user", "content": "three"}])
    rows = await memory.list_messages(order="asc")
    assert [(r.seq, r.content) for r in rows] == [(1, "one"), (2, "two"), (3, "three")]


async def test_retry_with_the_same_ids_adds_nothing_twice(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="retry")
    batch = [
        {"id": str(uuid.uuid4()), "role": "user", "content": "hello"},
        {"id": str(uuid.uuid4()), "role": "assistant", "content": "hi"},
    ]
    first = await memory.add(batch)
    concurrent = await asyncio.gather(*(memory.add(batch) for _ in range(5)))
    assert all(ids == first for ids in concurrent)
    rows = await memory.list_messages(order="asc")
    assert [(r.id, r.seq) for r in rows] == [(first[0], 1), (first[1], 2)]


async def test_a_retry_mixing_old_and_new_ids_adds_only_the_new(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="mixed")
    old = {"id": str(uuid.uuid4()), "role": "user", "content": "old"}
    await memory.add([old])
    new = {"id": str(uuid.uuid4()), "role": "user", "content": "new"}
    await memory.add([old, new])
    rows = await memory.list_messages(order="asc")
    assert [(r.content, r.seq) for r in rows] == [("old", 1), ("new", 2)]


async def test_a_bad_message_writes_nothing_of_its_call(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="strict")
    with pytest.raises(ValidationError) as caught:
        await memory.add(
            [{"role": "user", "content": "fine"}, {"role": "user", "content": "bad\x00"}]
        )
    assert (caught.value.index, caught.value.field) == (1, "content")
    assert await memory.list_messages() == []


def test_validation_names_the_message_and_field() -> None:
    with pytest.raises(ValidationError, match=r"message 2, field 'role'"):
        validate_messages(
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "robot", "content": "c"},
            ],
            max_chars=100,
        )


def test_validation_counts_tokens_and_accepts_speaker_as_name() -> None:
    [message] = validate_messages(
        [{"role": "user", "content": "I'm flying to Lisbon.", "speaker": "Ana"}], max_chars=100
    )
    assert message.name == "Ana"
    assert message.token_count == 7


async def test_closing_with_buffered_writes_pending_loses_nothing(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False, buffer_max_delay=30.0) as mf:
        memory = await mf.init("alice", session="closing")
        adds = [
            asyncio.create_task(memory.add([{"role": "user", "content": f"pending {i}"}]))
            for i in range(20)
        ]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in adds), "held by the 30 s linger"
    returned = [ids for task in adds for ids in task.result()]

    async with MemFuse(database_url, pipeline_auto=False) as reopened:
        memory = await reopened.init("alice", session="closing")
        rows = await memory.list_messages(limit=100)
    assert {row.id for row in rows} == set(returned)
    assert len(rows) == 20


# --- input rules as add() applies them --------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """A metadata object ``depth`` levels deep, alternating objects and arrays."""
    value: Any = "leaf"
    for level in range(depth - 1):
        value = {"k": value} if level % 2 else [value]
    return {"root": value}


REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "surrogate-in-content": ({"content": "bad \ud800 text"}, "content"),
    "surrogate-pair-halves-in-content": ({"content": "\ud83d\ude00"}, "content"),
    "surrogate-in-name": ({"name": "An\udfffa"}, "name"),
    "surrogate-in-speaker": ({"speaker": "\ud800"}, "speaker"),
    "nul-in-name": ({"name": "A\x00na"}, "name"),
    "surrogate-in-metadata-value": ({"metadata": {"a": ["ok", "\ud800"]}}, "metadata"),
    "surrogate-in-metadata-key": ({"metadata": {"\ud800": 1}}, "metadata"),
    "nul-in-metadata-key": ({"metadata": {"a\x00": 1}}, "metadata"),
    "metadata-5000-levels": ({"metadata": nested(5000)}, "metadata"),
    "metadata-one-level-too-deep": ({"metadata": nested(MAX_METADATA_DEPTH + 1)}, "metadata"),
    "year-1-east-of-utc": (
        {"created_at": datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5)))},
        "created_at",
    ),
    "year-9999-west-of-utc": (
        {"created_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))},
        "created_at",
    ),
    "year-1-east-of-utc-as-text": ({"created_at": "0001-01-01T00:00:00+01:00"}, "created_at"),
    "minus-infinity-to-the-driver": ({"created_at": datetime(1, 1, 1, tzinfo=UTC)}, "created_at"),
    "infinity-to-the-driver": (
        {"created_at": datetime.max.replace(tzinfo=UTC)},
        "created_at",
    ),
}


@pytest.mark.parametrize(("fields", "field"), REJECTED.values(), ids=REJECTED.keys())
async def test_hostile_input_is_a_validation_error_and_writes_nothing(
    mf: MemFuse, fields: dict[str, Any], field: str
) -> None:
    memory = await mf.init("alice", session="hostile")
    bad = {"role": "user", "content": "fine"} | fields
    with pytest.raises(ValidationError) as raised:
        await memory.add([{"role": "user", "content": "first"}, bad])
    assert (raised.value.index, raised.value.field) == (1, field)
    assert await memory.list_messages() == []


async def test_metadata_at_the_depth_limit_is_stored_as_given(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="deep")
    metadata = nested(MAX_METADATA_DEPTH)
    [message_id] = await memory.add([{"role": "user", "content": "deep", "metadata": metadata}])
    row = await memory.get_message(message_id)
    assert row is not None and row.metadata == metadata


async def test_metadata_that_contains_itself_is_refused() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(ValidationError, match="contains itself"):
        validate_messages([{"role": "user", "content": "x", "metadata": looped}], max_chars=10)


async def test_the_ends_of_the_stored_range_round_trip_exactly(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="edges")
    plus_five = timezone(timedelta(hours=5))
    times = [MIN_STORED_TIME, MAX_STORED_TIME, MIN_STORED_TIME.astimezone(plus_five)]
    ids = await memory.add(
        [{"role": "user", "content": f"t{i}", "created_at": t} for i, t in enumerate(times)]
    )
    for message_id, given in zip(ids, times, strict=True):
        row = await memory.get_message(message_id)
        assert row is not None
        assert row.created_at == given and row.created_at.utcoffset() == timedelta(0)


async def test_the_pipeline_handles_messages_at_the_ends_of_the_stored_range(
    database_url: str,
) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("alice", session="edges")
        said = "I moved to Lisbon yesterday. Tomorrow I fly to Porto. I'm a pilot."
        await memory.add(
            [
                {"role": "user", "content": said, "created_at": MIN_STORED_TIME},
                {"role": "user", "content": said, "created_at": MAX_STORED_TIME},
            ]
        )
        await mf.flush()  # raises PipelineError if date arithmetic overflowed
        assert await memory.list_episodes()


async def test_query_bounds_that_overflow_utc_are_refused(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="bounds")
    await memory.add([{"role": "user", "content": "flight to Lisbon"}])
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2)))
    with pytest.raises(ValidationError) as raised:
        await memory.query("Lisbon", since=early)
    assert raised.value.field == "since"
    with pytest.raises(ValidationError) as raised:
        await memory.query("Lisbon", until=late)
    assert raised.value.field == "until"
    widest = await memory.query(
        "Lisbon", since=datetime.min.replace(tzinfo=UTC), until=datetime.max.replace(tzinfo=UTC)
    )
    assert [result.content for result in widest] == ["flight to Lisbon"]


async def test_query_text_with_nul_or_a_surrogate_is_refused(mf: MemFuse) -> None:
    memory = await mf.init("alice", session="query")
    for query in ("flight\x00to Lisbon", "flight \ud800"):
        with pytest.raises(ValidationError) as raised:
            await memory.query(query)
        assert raised.value.field == "query"


@pytest.mark.parametrize(
    "names",
    [
        ("\ud800", None, None),
        ("ok", "\udc00", None),
        ("ok", None, "s\ud800"),
        ("a\x00", None, None),
    ],
)
async def test_names_with_nul_or_a_surrogate_are_refused(
    mf: MemFuse, names: tuple[str, str | None, str | None]
) -> None:
    with pytest.raises(ValidationError):
        await mf.init(*names)


# --- large calls ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_one_call_of_40000_messages_with_client_ids_is_written_and_retried(
    mf: MemFuse,
) -> None:
    """More ids than a statement's 32 767 parameters: looked up as one array, inserted as
    one executemany. The retry finds every id and adds nothing."""
    memory = await mf.init("alice", session="import")
    batch = [
        {"id": str(uuid.uuid4()), "role": "user", "content": f"message {i}"} for i in range(40_000)
    ]
    started = time.monotonic()
    ids = await memory.add(batch)
    assert [str(i) for i in ids] == [m["id"] for m in batch]
    assert await memory.add(batch) == ids
    async with parts.db(mf) as db:
        count, top = (
            await db.execute(
                text("SELECT count(*), max(seq) FROM memfuse.messages WHERE session_id = :s"),
                {"s": memory.scope.session_id},
            )
        ).one()
    assert (count, top) == (40_000, 40_000)
    assert time.monotonic() - started < 60


# --- concurrent retries of one client id (buffer off) -----------------------------------------


@pytest.fixture
async def direct(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False, buffer_enabled=False) as mf:
        yield mf


async def test_an_id_committed_by_another_call_meanwhile_is_a_conflict(direct: MemFuse) -> None:
    """The other call inserts the id after this one looked it up and before it inserted."""
    first = await direct.init("alice", session="first")
    second = await direct.init("bob", session="second")
    message_id = uuid.uuid4()
    async with parts.transaction(direct) as db:
        mine = WriteRequest(first.scope, [MessageInput(message_id, "user", "mine", client_id=True)])
        await db.execute(text("SELECT 1"))  # begins the transaction the insert stays open in
        raw = await (await db.connection()).get_raw_connection()
        columns = message_columns([mine])
        assert await write_messages(raw.driver_connection, write_call("memfuse"), columns)
        racing = asyncio.create_task(
            second.add(
                [
                    {"role": "user", "content": "before"},
                    {"id": str(message_id), "role": "user", "content": "theirs"},
                ]
            )
        )
        await wait_for_a_lock_wait(direct)
    with pytest.raises(ConflictError, match="retrying it is safe"):
        await racing
    assert await second.list_messages() == [], "nothing of the losing call is written"
    assert [row.content for row in await first.list_messages()] == ["mine"]
    with pytest.raises(ValidationError, match="belongs to another message"):
        await second.add([{"id": str(message_id), "role": "user", "content": "theirs"}])


async def wait_for_a_lock_wait(mf: MemFuse) -> None:
    """Return once some backend of this database waits for a lock (the racing insert)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with parts.db(mf) as db:
            waiting = (
                await db.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the racing call never waited for the open transaction")


async def test_concurrent_adds_of_the_same_ids_write_each_once(mf: MemFuse) -> None:
    """Pairs of calls, each pair one id, run at once in two users' sessions: one call of a
    pair wins; the other is a ConflictError (it raced) or a ValidationError (it came after)."""
    pairs = 40
    alice: list[Memory] = [await mf.init("alice", session=f"a{i}") for i in range(pairs)]
    bob: list[Memory] = [await mf.init("bob", session=f"b{i}") for i in range(pairs)]
    ids = [str(uuid.uuid4()) for _ in range(pairs)]

    def call(memory: Memory, message_id: str) -> Any:
        return memory.add([{"id": message_id, "role": "user", "content": f"from {memory.user}"}])

    outcomes = await asyncio.gather(
        *(call(memory, ids[i]) for i in range(pairs) for memory in (alice[i], bob[i])),
        return_exceptions=True,
    )
    for i in range(pairs):
        pair = outcomes[2 * i : 2 * i + 2]
        winners = [outcome for outcome in pair if isinstance(outcome, list)]
        losers = [outcome for outcome in pair if not isinstance(outcome, list)]
        assert len(winners) == 1, pair
        assert [str(x) for x in winners[0]] == [ids[i]]
        assert all(isinstance(loser, ConflictError | ValidationError) for loser in losers), pair
    async with parts.db(mf) as db:
        counted = (
            await db.execute(text("SELECT count(*), count(DISTINCT id) FROM memfuse.messages"))
        ).one()
    assert tuple(counted) == (pairs, pairs)
    if not mf.settings.buffer_enabled:  # buffered, one process's calls never race
        assert any(isinstance(outcome, ConflictError) for outcome in outcomes), "no race ran"
