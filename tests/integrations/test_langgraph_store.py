"""``MemFuseStore`` against LangGraph's own expectations of a ``BaseStore`` (the behaviours of
LangGraph's store tests, written again for this store), a compiled LangGraph graph using it,
and LangMem's memory tools on it; the embedding worker and the pipeline run throughout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import pytest
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import ValidationError
from memfuse.integrations.langgraph import MemFuseStore
from memfuse.memory import MemFuse
from tests.real_model import memfuse_with_model


@pytest.fixture
async def mf(database_url: str, model: LocalEmbedder) -> AsyncIterator[MemFuse]:
    async with memfuse_with_model(database_url, model) as mf:
        yield mf


@pytest.fixture
def store(mf: MemFuse) -> MemFuseStore:
    return MemFuseStore(mf, user="alice")


async def test_put_get_overwrite_and_delete(store: MemFuseStore) -> None:
    namespace = ("prefs", "food")
    assert await store.aget(namespace, "drink") is None
    await store.aput(namespace, "drink", {"likes": "tea"})
    first = await store.aget(namespace, "drink")
    assert first is not None and first.value == {"likes": "tea"}
    assert (first.namespace, first.key) == (namespace, "drink")
    await asyncio.sleep(0.01)
    await store.aput(namespace, "drink", {"likes": "coffee"})
    second = await store.aget(namespace, "drink")
    assert second is not None and second.value == {"likes": "coffee"}
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    await store.adelete(namespace, "drink")
    assert await store.aget(namespace, "drink") is None
    await store.adelete(namespace, "drink")  # deleting nothing is fine


async def test_batch_returns_results_in_operation_order(store: MemFuseStore) -> None:
    await store.aput(("a",), "one", {"n": 1})
    results = await store.abatch(
        [
            GetOp(("a",), "one"),
            PutOp(("a",), "two", {"n": 2}),
            SearchOp(("a",), limit=10),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            GetOp(("a",), "missing"),
            GetOp(("a",), "two"),
        ]
    )
    assert results[0] is not None and results[0].value == {"n": 1}
    assert results[1] is None
    assert [item.key for item in results[2]] == ["one"]
    assert results[3] == [("a",)]
    assert results[4] is None
    assert results[5] is None  # reads see the store as it was before the batch's puts
    assert (await store.aget(("a",), "two")).value == {"n": 2}  # type: ignore[union-attr]


async def test_search_filters_pages_and_prefixes(store: MemFuseStore) -> None:
    for n in range(6):
        await store.aput(("docs", "team" if n % 2 else "me"), f"d{n}", {"n": n, "tag": "x"})
    await store.aput(("other",), "o", {"n": 100})
    everything = await store.asearch(("docs",), limit=10)
    assert [item.key for item in everything] == ["d5", "d4", "d3", "d2", "d1", "d0"]
    team = await store.asearch(("docs", "team"))
    assert {item.key for item in team} == {"d1", "d3", "d5"}
    assert [i.key for i in await store.asearch(("docs",), filter={"n": 4})] == ["d4"]
    bigger = await store.asearch(("docs",), filter={"n": {"$gt": 2, "$lte": 4}})
    assert {item.key for item in bigger} == {"d3", "d4"}
    others = await store.asearch(("docs",), filter={"n": {"$ne": 0}, "tag": "x"})
    assert len(others) == 5
    page = await store.asearch(("docs",), limit=2, offset=2)
    assert [item.key for item in page] == ["d3", "d2"]
    assert await store.asearch(("docs",), filter={"missing": 1}) == []
    with pytest.raises(ValidationError):
        await store.asearch(("docs",), filter={"n": {"$regex": "x"}})


async def test_search_by_meaning_once_embedded(mf: MemFuse, store: MemFuseStore) -> None:
    await store.aput(("memories",), "pet", {"text": "My dog Rex loves the beach"})
    await store.aput(("memories",), "job", {"text": "I work as a nurse in Lisbon"})
    await store.aput(("memories",), "raw", {"text": "A dog walker"}, index=False)
    await mf.flush()
    results = await store.asearch(("memories",), query="puppy at the seaside", limit=3)
    assert results[0].key == "pet" and results[0].score is not None
    scored = [item for item in results if item.score is not None]
    assert "raw" not in {item.key for item in scored}  # index=False: not embedded
    assert "raw" in {item.key for item in results}  # ...but filled in unscored, as LangGraph
    fields = MemFuseStore(mf, user="alice", index_fields=["title"])
    await fields.aput(("books",), "b1", {"title": "Ocean waves", "body": "mountains"})
    await mf.flush()
    found = await fields.asearch(("books",), query="sea", limit=1)
    assert found[0].key == "b1" and found[0].score is not None


async def test_list_namespaces_by_prefix_suffix_depth(store: MemFuseStore) -> None:
    for namespace in [("a", "b", "c"), ("a", "b", "d"), ("a", "e"), ("f", "b")]:
        await store.aput(namespace, "k", {"v": 1})
    assert await store.alist_namespaces() == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "e"),
        ("f", "b"),
    ]
    assert await store.alist_namespaces(prefix=("a",)) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "e"),
    ]
    assert await store.alist_namespaces(suffix=("b",)) == [("f", "b")]
    assert await store.alist_namespaces(prefix=("*", "b")) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("f", "b"),
    ]
    assert await store.alist_namespaces(max_depth=2) == [("a", "b"), ("a", "e"), ("f", "b")]
    assert await store.alist_namespaces(limit=2, offset=1) == [("a", "b", "d"), ("a", "e")]
    condition = MatchCondition(match_type="prefix", path=("a", "b"))
    listed = await store.abatch([ListNamespacesOp(match_conditions=(condition,), limit=5)])
    assert listed[0] == [("a", "b", "c"), ("a", "b", "d")]


async def test_namespaces_are_validated_as_langgraph_does(store: MemFuseStore) -> None:
    for namespace in [(), ("langgraph", "x"), ("a.b",), ("",)]:
        with pytest.raises(InvalidNamespaceError):
            await store.aput(namespace, "k", {"v": 1})


async def test_ttl_expires_refreshes_and_sweeps(mf: MemFuseStore | Any) -> None:
    store = MemFuseStore(mf, user="alice", ttl={"default_ttl": 0.01, "refresh_on_read": True})
    await store.aput(("t",), "short", {"v": 1})  # 0.6 s by the default
    await store.aput(("t",), "kept", {"v": 2}, ttl=None)
    await asyncio.sleep(0.35)
    assert await store.aget(("t",), "short") is not None  # this read restarts its clock
    await asyncio.sleep(0.35)
    assert await store.aget(("t",), "short", refresh_ttl=False) is not None
    await asyncio.sleep(0.4)
    assert await store.aget(("t",), "short") is None
    assert [item.key for item in await store.asearch(("t",))] == ["kept"]
    assert await store.sweep_ttl() == 1
    task = await store.start_ttl_sweeper(sweep_interval_minutes=1)
    assert not task.done() and await store.stop_ttl_sweeper(timeout=5)


async def test_one_store_many_users_by_namespace_label(mf: MemFuse) -> None:
    store = MemFuseStore(mf, user_label=1)
    await store.aput(("memories", "alice"), "m", {"text": "alice's secret is 4711"})
    await store.aput(("memories", "bob"), "m", {"text": "bob likes sailing"})
    alice = await store.asearch(("memories", "alice"), query="secret")
    assert [item.value["text"] for item in alice] == ["alice's secret is 4711"]
    bob = await store.asearch(("memories", "bob"), query="secret 4711")
    assert all("4711" not in json.dumps(item.value) for item in bob)
    assert await store.alist_namespaces(prefix=("memories", "bob")) == [("memories", "bob")]
    with pytest.raises(ValidationError, match="position 1"):
        await store.asearch(("memories",))
    alice_memory = await mf.init("alice")
    stored = await alice_memory.list_knowledge()
    assert [row.namespace for row in stored] == [("memories", "alice")]


async def test_a_store_of_many_users_keeps_a_bounded_map_of_their_ids(
    mf: MemFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose namespaces name users keeps the ids of the most recently used ones only;
    a user who fell out is looked up again, and keeps every item."""
    monkeypatch.setattr("memfuse.integrations.langgraph.USER_IDS_CACHED", 2)
    store = MemFuseStore(mf, user_label=1)
    for name in ("ana", "ben", "carl"):
        await store.aput(("users", name), "note", {"text": f"{name} plays chess"})
    assert len(store._user_ids) == 2, "ana's id went first"
    ana = await store.aget(("users", "ana"), "note")
    assert ana is not None and ana.value == {"text": "ana plays chess"}
    await store.aput(("users", "ana"), "note", {"text": "ana plays go"})
    ana_memory = await mf.init("ana")
    assert [row.value for row in await ana_memory.list_knowledge()] == [{"text": "ana plays go"}]


async def test_sync_methods_from_a_worker_thread(store: MemFuseStore) -> None:
    await store.aput(("s",), "k", {"v": 1})  # binds the store to this loop

    def blocking() -> Any:
        store.put(("s",), "k2", {"v": 2})
        return store.get(("s",), "k2")

    item = await asyncio.to_thread(blocking)
    assert item is not None and item.value == {"v": 2}
    with pytest.raises(Exception, match="a-methods"):
        store.get(("s",), "k")  # on the loop itself: refused, it would block the loop


async def test_writers_and_readers_at_once(mf: MemFuse, store: MemFuseStore) -> None:
    async def writer(n: int) -> None:
        for turn in range(5):
            await store.aput(("w", str(n)), f"k{turn}", {"text": f"writer {n} note {turn}"})
        await store.adelete(("w", str(n)), "k0")

    async def reader() -> None:
        for _ in range(10):
            await store.asearch(("w",), query="note", limit=5)

    started = time.monotonic()
    await asyncio.gather(*(writer(n) for n in range(8)), reader(), reader())
    await mf.flush()
    assert time.monotonic() - started < 120
    items = await store.asearch(("w",), limit=100)
    assert len(items) == 32 and {item.key for item in items} == {"k1", "k2", "k3", "k4"}
    memory = await mf.init("alice")
    assert all(row.embedded for row in await memory.list_knowledge(limit=100))


class State(TypedDict):
    user: str
    text: str
    recalled: list[str]


async def test_a_compiled_graph_reads_and_writes_memory(mf: MemFuse) -> None:
    from langgraph.graph import END, START, StateGraph
    from langgraph.store.base import BaseStore

    async def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
        await store.aput(("memories", state["user"]), "fact", {"text": state["text"]})
        return {}

    async def recall(state: State, *, store: BaseStore) -> dict[str, Any]:
        found = await store.asearch(("memories", state["user"]), query="pet")
        return {"recalled": [item.value["text"] for item in found]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(store=MemFuseStore(mf, user_label=1))
    result = await graph.ainvoke({"user": "carol", "text": "Carol's pet is a cat", "recalled": []})
    assert result["recalled"] == ["Carol's pet is a cat"]
    other = await graph.ainvoke({"user": "dave", "text": "Dave rides a bike", "recalled": []})
    assert other["recalled"] == ["Dave rides a bike"]


async def test_langmem_tools_manage_and_search_memories(mf: MemFuse) -> None:
    from langmem import create_manage_memory_tool, create_search_memory_tool

    store = MemFuseStore(mf, user_label=1)
    namespace = ("memories", "{langgraph_user_id}")
    manage = create_manage_memory_tool(namespace=namespace, store=store)
    search = create_search_memory_tool(namespace=namespace, store=store)
    config = {"configurable": {"langgraph_user_id": "erin"}}
    created = await manage.ainvoke({"content": "Erin prefers aisle seats"}, config=config)
    assert created.startswith("created memory")
    await mf.flush()
    found = json.loads(await search.ainvoke({"query": "seat preference"}, config=config))
    assert found[0]["value"] == {"content": "Erin prefers aisle seats"}
    memory_id = found[0]["key"]
    await manage.ainvoke(
        {"content": "Erin prefers window seats", "action": "update", "id": memory_id},
        config=config,
    )
    item = await store.aget(("memories", "erin"), memory_id)
    assert item is not None and item.value == {"content": "Erin prefers window seats"}
    await manage.ainvoke({"action": "delete", "id": memory_id}, config=config)
    assert await store.aget(("memories", "erin"), memory_id) is None
    other = {"configurable": {"langgraph_user_id": "frank"}}
    assert json.loads(await search.ainvoke({"query": "seat"}, config=other)) == []
