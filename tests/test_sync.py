"""``memfuse.sync``: the facade without ``await``, as a script uses it, with the real model's
worker and the pipeline running on the client's private loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dependency_injector import providers

from memfuse import sync
from memfuse.container import Container
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import ClosedError, ValidationError


@pytest.fixture
def mf(database_url: str, model: LocalEmbedder) -> Iterator[sync.MemFuse]:
    container = Container()
    container.embedder.override(providers.Object(model))
    with sync.MemFuse(database_url, container=container, embedder="local") as mf:
        yield mf


def test_a_script_adds_flushes_and_queries(mf: sync.MemFuse) -> None:
    memory = mf.init("alice", session="trip")
    ids = memory.add(
        [
            {"role": "user", "content": "I'm flying to Lisbon on May 3rd."},
            {"role": "assistant", "content": "Noted!"},
        ]
    )
    memory.add_knowledge(["Alice prefers window seats"])
    mf.flush()
    assert [row.id for row in memory.list_messages(order="asc")] == ids
    results = memory.query("When is the Lisbon flight?", top_k=1)
    assert results[0].id == ids[0] and results[0].embedded
    assert memory.query("seat preference", layers=["knowledge"])[0].layer == "knowledge"
    assert mf.health().ok
    with pytest.raises(ValidationError):
        memory.add([{"role": "robot", "content": "x"}])
    assert repr(memory).startswith("memfuse.sync.Memory(user='alice'")


def test_threads_share_one_client(mf: sync.MemFuse) -> None:
    def write(n: int) -> int:
        memory = mf.init("alice", session=f"thread-{n % 4}")
        for turn in range(5):
            memory.add([{"role": "user", "content": f"thread {n} turn {turn}"}])
        return n

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(write, range(16))) == list(range(16))
    mf.flush()
    counts = [
        len(mf.init("alice", session=f"thread-{k}").list_messages(limit=100)) for k in range(4)
    ]
    assert counts == [20, 20, 20, 20]


async def test_blocking_inside_a_running_loop_is_refused(mf: sync.MemFuse) -> None:
    with pytest.raises(sync.RunningLoopError, match="use `await`"):
        mf.init("alice")


def test_closed_client_refuses_calls(database_url: str) -> None:
    client = sync.MemFuse(database_url, embedder="none", pipeline_auto=False)
    memory = client.init("alice")
    client.close()
    client.close()  # twice is fine
    with pytest.raises(ClosedError):
        memory.add([{"role": "user", "content": "too late"}])
    with pytest.raises(ClosedError):
        client.init("alice")


def test_the_loop_thread_ends_with_the_client(database_url: str) -> None:
    before = {thread.name for thread in threading.enumerate()}
    with sync.MemFuse(database_url, embedder="none", pipeline_auto=False) as client:
        client.init("alice").add([{"role": "user", "content": "hello"}])
    after = [thread for thread in threading.enumerate() if thread.name == "memfuse-sync-loop"]
    assert "memfuse-sync-loop" not in before and after == []
