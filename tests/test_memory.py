"""The ``MemFuse``/``Memory`` facade against the real database: writing, reading, editing,
deleting, validation, idempotent retries and tenant isolation.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from memfuse.config import load_settings
from memfuse.errors import (
    ClosedError,
    ConfigurationError,
    NotFoundError,
    SchemaError,
    ValidationError,
)
from memfuse.memory import MemFuse, Memory


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        yield mf


@pytest.fixture
async def memory(mf: MemFuse) -> Memory:
    return await mf.init("alice", agent="assistant", session="trip-planning")


def user(content: str, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


async def contents(memory: Memory, **page: Any) -> list[str]:
    return [row.content for row in await memory.list_messages(**page)]


# --- the basics -----------------------------------------------------------------------------


async def test_readme_example(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init(user="alice", agent="assistant", session="trip-planning")
        ids = await memory.add(
            [
                {"role": "user", "content": "I'm flying to Lisbon on May 3rd."},
                {"role": "assistant", "content": "Noted: Lisbon, May 3rd."},
            ]
        )
        await mf.flush()

        rows = await memory.list_messages()
        assert [row.content for row in rows] == [
            "Noted: Lisbon, May 3rd.",
            "I'm flying to Lisbon on May 3rd.",
        ]
        assert [row.id for row in rows] == ids[::-1]
        assert [row.seq for row in rows] == [2, 1]


async def test_init_creates_user_default_agent_and_a_new_session(mf: MemFuse) -> None:
    first = await mf.init("bob")
    second = await mf.init("bob")
    assert first.agent == second.agent == "default"
    assert first.scope.user_id == second.scope.user_id
    assert first.scope.agent_id == second.scope.agent_id
    assert first.session != second.session
    assert first.scope.session_id != second.scope.session_id


async def test_init_returns_the_same_scope_for_the_same_names(mf: MemFuse) -> None:
    first = await mf.init("bob", agent="helper", session="chat")
    again = await mf.init("bob", agent="helper", session="chat")
    assert again.scope == first.scope


async def test_list_messages_pages_in_either_order(memory: Memory) -> None:
    await memory.add([user(f"message {i}") for i in range(5)])

    assert await contents(memory) == [f"message {i}" for i in (4, 3, 2, 1, 0)]
    assert await contents(memory, order="asc") == [f"message {i}" for i in range(5)]
    assert await contents(memory, limit=2, offset=1) == ["message 3", "message 2"]
    assert await contents(memory, limit=2, offset=1, order="asc") == ["message 1", "message 2"]
    assert await contents(memory, offset=5) == []


async def test_list_messages_of_all_sessions(mf: MemFuse, memory: Memory) -> None:
    other = await mf.init("alice", agent="assistant", session="other")
    await memory.add([user("in trip-planning")])
    await other.add([user("in other")])

    assert await contents(memory) == ["in trip-planning"]
    assert sorted(await contents(memory, all_sessions=True)) == ["in other", "in trip-planning"]


@pytest.mark.parametrize(
    "page",
    [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"order": "up"}],
    ids=["limit-0", "limit-1001", "offset-negative", "order-up"],
)
async def test_bad_page_arguments_are_rejected(memory: Memory, page: dict[str, Any]) -> None:
    for listing in (memory.list_messages, memory.list_episodes, memory.list_facts):
        with pytest.raises(ValidationError):
            await listing(**page)


# --- one message: get, update, delete ---------------------------------------------------------


async def test_get_message_returns_the_stored_row(memory: Memory) -> None:
    [message_id] = await memory.add([user("hello")])
    row = await memory.get_message(message_id)
    assert row is not None
    assert (row.id, row.role, row.content, row.seq) == (message_id, "user", "hello", 1)
    assert await memory.get_message(str(message_id)) == row
    assert await memory.get_message(uuid.uuid4()) is None
    with pytest.raises(ValidationError):
        await memory.get_message("not-an-id")


async def test_update_message_changes_content_and_metadata(memory: Memory) -> None:
    [message_id] = await memory.add([user("hello", metadata={"v": 1})])

    updated = await memory.update_message(message_id, content="hello again")
    assert (updated.content, updated.metadata) == ("hello again", {"v": 1})
    updated = await memory.update_message(message_id, metadata={"v": 2})
    assert (updated.content, updated.metadata) == ("hello again", {"v": 2})
    assert await memory.get_message(message_id) == updated


async def test_update_of_content_rebuilds_episodes_and_facts_of_the_session(
    mf: MemFuse, memory: Memory
) -> None:
    [message_id] = await memory.add([user("I moved to Lisbon last year.", name="Caroline")])
    await mf.flush()
    assert any("Lisbon" in fact.content for fact in await memory.list_facts())

    await memory.update_message(message_id, content="I moved to Berlin last year.")
    await mf.flush()

    [episode] = await memory.list_episodes()
    assert "Berlin" in episode.content and "Lisbon" not in episode.content
    facts = await memory.list_facts(include_superseded=True)
    assert any("Berlin" in fact.content for fact in facts)
    assert not any("Lisbon" in fact.content for fact in facts)


async def test_delete_message_removes_it(memory: Memory) -> None:
    kept, deleted = await memory.add([user("keep me"), user("delete me")])
    await memory.delete_message(deleted)

    assert await memory.get_message(deleted) is None
    assert [row.id for row in await memory.list_messages()] == [kept]
    with pytest.raises(NotFoundError):
        await memory.delete_message(deleted)


async def test_update_or_delete_of_an_unknown_message_raises_not_found(memory: Memory) -> None:
    with pytest.raises(NotFoundError):
        await memory.update_message(uuid.uuid4(), content="anything")
    with pytest.raises(NotFoundError):
        await memory.delete_message(uuid.uuid4())


# --- deleting sessions and users ----------------------------------------------------------


async def test_delete_session_removes_only_that_session(mf: MemFuse, memory: Memory) -> None:
    other = await mf.init("alice", agent="assistant", session="other")
    await memory.add([user("I moved to Lisbon last year.", name="Caroline")])
    await other.add([user("I adopted a cat named Luna.", name="Caroline")])
    await mf.flush()

    await memory.delete_session()

    assert await memory.list_messages() == []
    assert await memory.list_episodes() == []
    assert await memory.list_facts(include_superseded=True) == []
    assert await contents(other) == ["I adopted a cat named Luna."]
    assert len(await other.list_episodes()) == 1
    facts = await other.list_facts(all_sessions=True, include_superseded=True)
    assert facts and all(fact.session_id == other.scope.session_id for fact in facts)


async def test_delete_user_removes_everything_of_that_user_only(mf: MemFuse) -> None:
    alice = await mf.init("alice", session="chat")
    alice_elsewhere = await mf.init("alice", session="elsewhere")
    bob = await mf.init("bob", session="chat")
    for memory in (alice, alice_elsewhere, bob):
        await memory.add([user("I moved to Lisbon last year.", name=memory.user)])
    await mf.flush()

    await alice.delete_user()

    for memory in (alice, alice_elsewhere):
        assert await memory.list_messages(all_sessions=True) == []
        assert await memory.list_episodes(all_sessions=True) == []
        assert await memory.list_facts(all_sessions=True, include_superseded=True) == []
    assert len(await bob.list_messages()) == 1
    assert len(await bob.list_episodes()) == 1
    assert len(await bob.list_facts()) >= 1
    assert (await mf.init("alice", session="chat")).scope.user_id != alice.scope.user_id


# --- tenant isolation -----------------------------------------------------------------------


@pytest.fixture
async def alice_and_bob(mf: MemFuse) -> tuple[Memory, Memory]:
    """Two users with the same session name and near-identical content, processed."""
    alice = await mf.init("alice", session="chat")
    bob = await mf.init("bob", session="chat")
    await alice.add([user("I moved to Lisbon last year.", name="Caroline")])
    await bob.add([user("I moved to Lisbon this year.", name="Caroline")])
    await mf.flush()
    return alice, bob


async def test_a_user_never_reads_another_users_message(
    alice_and_bob: tuple[Memory, Memory],
) -> None:
    alice, bob = alice_and_bob
    [alice_row] = await alice.list_messages()

    assert await bob.get_message(alice_row.id) is None
    for all_sessions in (False, True):
        rows = await bob.list_messages(all_sessions=all_sessions)
        assert alice_row.id not in {row.id for row in rows}
        assert all(row.user_id == bob.scope.user_id for row in rows)


async def test_a_user_never_updates_or_deletes_another_users_message(
    alice_and_bob: tuple[Memory, Memory],
) -> None:
    alice, bob = alice_and_bob
    [alice_row] = await alice.list_messages()

    with pytest.raises(NotFoundError):
        await bob.update_message(alice_row.id, content="hijacked")
    with pytest.raises(NotFoundError):
        await bob.update_message(alice_row.id, metadata={"hijacked": True})
    with pytest.raises(NotFoundError):
        await bob.delete_message(alice_row.id)
    assert await alice.get_message(alice_row.id) == alice_row


async def test_a_user_never_lists_another_users_episodes_or_facts(
    alice_and_bob: tuple[Memory, Memory],
) -> None:
    alice, bob = alice_and_bob
    alice_episodes = {row.id for row in await alice.list_episodes()}
    alice_facts = {row.id for row in await alice.list_facts()}
    assert alice_episodes and alice_facts

    for all_sessions in (False, True):
        episodes = await bob.list_episodes(all_sessions=all_sessions)
        facts = await bob.list_facts(all_sessions=all_sessions, include_superseded=True)
        assert episodes and facts
        assert not alice_episodes & {row.id for row in episodes}
        assert not alice_facts & {row.id for row in facts}
        assert {row.user_id for row in episodes} == {bob.scope.user_id}
        assert {row.user_id for row in facts} == {bob.scope.user_id}


async def test_an_id_of_another_users_message_is_rejected_and_nothing_written(
    alice_and_bob: tuple[Memory, Memory],
) -> None:
    alice, bob = alice_and_bob
    [alice_row] = await alice.list_messages()
    before = await bob.list_messages()

    with pytest.raises(ValidationError) as raised:
        await bob.add([user("a new message"), user("copy", id=str(alice_row.id))])
    assert raised.value.field == "id"
    assert await bob.list_messages() == before
    assert await alice.get_message(alice_row.id) == alice_row


# --- validation -----------------------------------------------------------------------------


@pytest.fixture
async def small_memory(database_url: str) -> AsyncIterator[Memory]:
    """A memory whose messages may be at most 50 characters long."""
    async with MemFuse(database_url, pipeline_auto=False, max_message_chars=50) as mf:
        yield await mf.init("alice", session="chat")


REPEATED_ID = str(uuid.uuid4())

BAD_MESSAGES: dict[str, tuple[object, str | None]] = {
    "unknown-role": (user("hi") | {"role": "robot"}, "role"),
    "empty-content": (user(""), "content"),
    "whitespace-content": (user(" \n\t "), "content"),
    "content-too-long": (user("x" * 51), "content"),
    "nul-in-content": (user("a\x00b"), "content"),
    "nul-in-metadata": (user("hi", metadata={"note": "a\x00b"}), "metadata"),
    "set-in-metadata": (user("hi", metadata={"tags": {"a", "b"}}), "metadata"),
    "object-in-metadata": (user("hi", metadata={"thing": object()}), "metadata"),
    "nan-in-metadata": (user("hi", metadata={"score": float("nan")}), "metadata"),
    "naive-created-at": (user("hi", created_at=datetime(2024, 1, 1)), "created_at"),
    "bad-created-at": (user("hi", created_at="yesterday"), "created_at"),
    "bad-id": (user("hi", id="not-a-uuid"), "id"),
    "repeated-id": (user("hi", id=REPEATED_ID), "id"),
    "unknown-key": (user("hi", mood="happy"), "mood"),
    "not-a-dict": ("hi", None),
}


@pytest.mark.parametrize(("bad", "field"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
async def test_a_bad_message_rejects_the_whole_call(
    small_memory: Memory, bad: object, field: str | None
) -> None:
    valid = user("a valid message", id=REPEATED_ID)
    with pytest.raises(ValidationError) as raised:
        await small_memory.add([valid, bad])  # type: ignore[list-item]

    assert (raised.value.index, raised.value.field) == (1, field)
    assert "message 1" in str(raised.value)
    if field is not None:
        assert repr(field) in str(raised.value)
    assert await small_memory.list_messages() == []


async def test_messages_must_be_a_list(memory: Memory) -> None:
    with pytest.raises(ValidationError):
        await memory.add(user("not in a list"))  # type: ignore[arg-type]


async def test_created_at_is_stored(memory: Memory) -> None:
    as_text = "2023-05-08T13:56:00+02:00"
    as_datetime = datetime(2023, 5, 9, 8, 30, tzinfo=timezone(timedelta(hours=-4)))
    first, second = await memory.add(
        [user("first", created_at=as_text), user("second", created_at=as_datetime)]
    )

    first_row, second_row = await memory.get_message(first), await memory.get_message(second)
    assert first_row is not None and second_row is not None
    assert first_row.created_at == datetime(2023, 5, 8, 11, 56, tzinfo=UTC)
    assert second_row.created_at == as_datetime


async def test_name_or_speaker_is_stored_as_the_name(memory: Memory) -> None:
    named, spoken, anonymous = await memory.add(
        [user("one", name="Caroline"), user("two", speaker="Melanie"), user("three")]
    )
    names = {row.id: row.name for row in await memory.list_messages()}
    assert names == {named: "Caroline", spoken: "Melanie", anonymous: None}


async def test_metadata_round_trips(memory: Memory) -> None:
    metadata = {
        "source": "chat",
        "nested": {"list": [1, 2.5, "three", None, True], "empty": {}},
        "unicode": "Lisboa \u00e9 linda \U0001f600",
    }
    [message_id] = await memory.add([user("hi", metadata=metadata)])
    row = await memory.get_message(message_id)
    assert row is not None and row.metadata == metadata


# --- idempotent retries ---------------------------------------------------------------------


async def test_a_retry_with_the_same_ids_adds_nothing(memory: Memory) -> None:
    batch = [user("hello", id=str(uuid.uuid4())), user("again", id=str(uuid.uuid4()))]
    first = await memory.add(batch)
    before = await memory.list_messages(order="asc")

    assert await memory.add(batch) == first
    assert first == [uuid.UUID(message["id"]) for message in batch]
    after = await memory.list_messages(order="asc")
    assert [(row.id, row.seq) for row in after] == [(row.id, row.seq) for row in before]
    assert [row.seq for row in after] == [1, 2]


# --- lifecycle and configuration ----------------------------------------------------------


async def test_a_closed_memfuse_refuses_work(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("alice", session="chat")
    with pytest.raises(ClosedError):
        await memory.add([user("too late")])
    with pytest.raises(ClosedError):
        await mf.init("alice", session="chat")


CALLS_OF_A_MEMORY: dict[str, tuple[Any, ...]] = {
    "add": ([user("too late")],),
    "query": ("anything",),
    "get_message": (uuid.uuid4(),),
    "list_messages": (),
    "update_message": (uuid.uuid4(),),
    "delete_message": (uuid.uuid4(),),
    "list_episodes": (),
    "list_facts": (),
    "add_knowledge": (["too late"],),
    "get_knowledge": (uuid.uuid4(),),
    "list_knowledge": (),
    "update_knowledge": (uuid.uuid4(),),
    "delete_knowledge": (uuid.uuid4(),),
    "delete_session": (),
    "delete_user": (),
}


async def test_every_memory_method_is_refused_once_closed(database_url: str) -> None:
    """Not only ``add`` and ``query``: no call reaches the database of a closed MemFuse."""
    public = {
        name
        for name, value in vars(Memory).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    }
    assert public == set(CALLS_OF_A_MEMORY), "a new Memory method needs a case here"
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("alice", session="chat")
        await memory.add([user("kept")])
    for name, arguments in CALLS_OF_A_MEMORY.items():
        with pytest.raises(ClosedError, match="closed"):
            await getattr(memory, name)(*arguments)
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        again = await mf.init("alice", session="chat")
        assert [row.content for row in await again.list_messages()] == ["kept"]


async def test_started_parts_and_their_stats_need_a_started_memfuse(database_url: str) -> None:
    mf = MemFuse(database_url, pipeline_auto=False, buffer_enabled=True)
    for call in (mf.task_states, mf.buffer_stats, mf.worker_stats, mf.search_stats):
        with pytest.raises(ClosedError, match="not started"):
            call()
    async with mf:
        memory = await mf.init("alice", session="chat")
        await memory.add([user("one"), user("two")])
        stats = mf.buffer_stats()
        assert stats is not None and stats.messages_written == 2
        stats.messages_written = 0  # a copy: the buffer's own counters are untouched
        assert mf.buffer_stats() == replace(stats, messages_written=2)
        await memory.query("one")
        assert mf.search_stats().searches == 1
    with pytest.raises(ClosedError, match="closed"):
        mf.buffer_stats()


async def test_without_auto_migrate_an_empty_database_is_refused(database_url: str) -> None:
    with pytest.raises(SchemaError, match="memfuse db upgrade"):
        async with MemFuse(database_url, auto_migrate=False):
            pass


def test_settings_and_overrides_together_are_refused() -> None:
    settings = load_settings(database_url="postgresql://localhost/app")
    with pytest.raises(ConfigurationError):
        MemFuse(settings=settings, schema="other")


async def test_close_right_after_a_write_returns(database_url: str) -> None:
    # A write wakes the background pipeline as close() cancels it; on Python 3.11,
    # asyncio.wait_for could swallow that cancellation and close() then never returned.
    for attempt in range(5):
        async with asyncio.timeout(30):
            async with MemFuse(database_url) as mf:
                memory = await mf.init("ana", session=f"s{attempt}")
                await memory.add([{"role": "user", "content": "hello"}])


async def test_yes_no_options_take_only_bools(memory: Memory) -> None:
    """``all_sessions="no"`` once listed every session: a truthy string is not a yes."""
    for call in (
        memory.list_messages(all_sessions="no"),  # type: ignore[arg-type]
        memory.list_episodes(all_sessions=1),  # type: ignore[arg-type]
        memory.list_facts(include_superseded="yes"),  # type: ignore[arg-type]
        memory.query("Lisbon", include_unembedded="no"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValidationError, match="must be True or False"):
            await call
