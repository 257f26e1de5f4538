"""M0 write path against the real database: numbering, atomicity, idempotency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from memfuse.errors import ValidationError
from memfuse.layers.m0 import validate_messages
from memfuse.memory import MemFuse


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
