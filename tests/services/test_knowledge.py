"""Knowledge items: stated memories of a user, stored beside the conversation, embedded through
the same queue and searched as their own layer. Written with the embedding worker and the layer
pipeline running, as a user's app would."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import NotFoundError, ValidationError
from memfuse.memory import MemFuse, Memory
from tests.real_model import memfuse_with_model


@pytest.fixture
async def mf(database_url: str, model: LocalEmbedder) -> AsyncIterator[MemFuse]:
    async with memfuse_with_model(database_url, model) as mf:
        yield mf


@pytest.fixture
async def alice(mf: MemFuse) -> Memory:
    return await mf.init("alice", session="kitchen")


async def test_stated_knowledge_is_embedded_and_found_by_query(mf: MemFuse, alice: Memory) -> None:
    await alice.add([{"role": "user", "content": "Can you suggest something for dinner?"}])
    [item] = await alice.add_knowledge(["Alice is allergic to peanuts"])
    await mf.flush()

    stored = await alice.get_knowledge(item.id)
    assert stored is not None and stored.embedded and stored.content == item.content

    results = await alice.query("Which food allergy does Alice have?", top_k=3)
    assert item.id in [result.id for result in results]  # beside the messages
    only_knowledge = await alice.query("peanut allergy", layers=["knowledge"], unit="item")
    assert [result.id for result in only_knowledge] == [item.id]


async def test_knowledge_belongs_to_the_user_not_the_session(mf: MemFuse, alice: Memory) -> None:
    [item] = await alice.add_knowledge(["Alice lives in Lisbon"])
    other_session = await mf.init("alice", session="travel")
    await mf.flush()
    found = await other_session.query("Where does Alice live?", session="travel")
    assert item.id in {result.id for result in found}


async def test_keyed_items_are_replaced_in_place(alice: Memory) -> None:
    first, _ = await alice.add_knowledge(
        [
            {"content": "prefers tea", "namespace": ["prefs"], "key": "drink", "value": {"v": 1}},
            "a plain statement",
        ]
    )
    [second] = await alice.add_knowledge(
        [{"content": "prefers coffee", "namespace": ["prefs"], "key": "drink", "value": {"v": 2}}]
    )
    assert second.id == first.id and second.content == "prefers coffee" and second.value == {"v": 2}
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    listed = await alice.list_knowledge(namespace_prefix=["prefs"])
    assert [item.id for item in listed] == [first.id]
    assert len(await alice.list_knowledge()) == 2


async def test_expired_items_are_hidden_then_swept(mf: MemFuse, alice: Memory) -> None:
    [short] = await alice.add_knowledge([{"content": "a passing mood", "ttl_seconds": 0.2}])
    [kept] = await alice.add_knowledge(["a lasting fact"])
    assert short.expires_at is not None and kept.expires_at is None
    await asyncio.sleep(0.4)
    assert await alice.get_knowledge(short.id) is None
    assert [item.id for item in await alice.list_knowledge()] == [kept.id]
    assert not await alice.query("passing mood", layers=["knowledge"], methods=["text"])
    assert await mf.knowledge.sweep_expired() == 1
    assert await mf.knowledge.sweep_expired() == 0


async def test_bad_items_write_nothing_and_name_the_field(alice: Memory) -> None:
    bad_calls: list[tuple[object, str]] = [
        (["fine", ""], "knowledge[1].content"),
        ([{"content": "x", "ttl_seconds": -1}], "knowledge[0].ttl_seconds"),
        ([{"content": "x", "value": ["not", "an", "object"]}], "knowledge[0].value"),
        ([{"content": "x", "namespace": "flat"}], "knowledge[0].namespace"),
        ([{"content": "x", "colour": "red"}], "knowledge[0].colour"),
        ([{"content": "a", "key": "k"}, {"content": "b", "key": "k"}], "knowledge[1]"),
        ("not a list", "knowledge"),
    ]
    for items, field in bad_calls:
        with pytest.raises(ValidationError) as raised:
            await alice.add_knowledge(items)  # type: ignore[arg-type]
        assert raised.value.field == field
    assert await alice.list_knowledge() == []


async def test_users_never_see_each_others_knowledge(mf: MemFuse, alice: Memory) -> None:
    bob = await mf.init("bob")
    [secret] = await alice.add_knowledge(["Alice's locker code is 4711"])
    await mf.flush()
    assert await bob.get_knowledge(secret.id) is None
    assert await bob.list_knowledge() == []
    assert not await bob.query("locker code 4711")
    with pytest.raises(NotFoundError):
        await bob.update_knowledge(secret.id, content="stolen")
    with pytest.raises(NotFoundError):
        await bob.delete_knowledge(secret.id)
    assert (await alice.get_knowledge(secret.id)) is not None


async def test_edits_are_embedded_again_while_the_worker_runs(mf: MemFuse, alice: Memory) -> None:
    """Concurrent writers, editors and deleters with the worker and pipeline running: the
    final state holds every surviving item with the vector of its final text."""
    items = await alice.add_knowledge([f"fact number {n}" for n in range(30)])

    async def edit(index: int) -> None:
        item = items[index]
        if index % 3 == 0:
            await alice.delete_knowledge(item.id)
        else:
            await alice.update_knowledge(item.id, content=f"edited fact {index}")

    async def chat() -> None:
        for n in range(10):
            await alice.add([{"role": "user", "content": f"message {n} about facts"}])

    await asyncio.gather(chat(), *(edit(index) for index in range(len(items))))
    await mf.flush()
    remaining = await alice.list_knowledge(limit=100)
    assert len(remaining) == 20
    assert all(item.embedded and item.content.startswith("edited") for item in remaining)
    results = await alice.query("edited fact 7", layers=["knowledge"], unit="item", top_k=1)
    assert results[0].id == items[7].id


async def test_deleting_the_user_deletes_the_knowledge(mf: MemFuse, alice: Memory) -> None:
    [item] = await alice.add_knowledge(["to be forgotten"])
    await alice.delete_user()
    again = await mf.init("alice")
    assert await again.get_knowledge(item.id) is None
    with pytest.raises(ValidationError):
        await again.get_knowledge("not-a-uuid")
    assert await again.get_knowledge(uuid.uuid4()) is None
