"""The after-commit hook: every committed change drops the user's cached search results (and
only theirs) and wakes the background work, here with the real worker and pipeline running."""

from __future__ import annotations

import uuid

from real_model import memfuse_with_model

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse, Memory
from memfuse.services.changes import AfterCommit


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


async def cached_search(mf: MemFuse, memory: Memory, query: str) -> list[str]:
    """The results of ``query``, asked twice: the second answer must come from the cache."""
    first = [result.content for result in await memory.query(query, layers=["m0"])]
    hits = mf.search_stats().result_cache_hits
    assert [result.content for result in await memory.query(query, layers=["m0"])] == first
    assert mf.search_stats().result_cache_hits == hits + 1
    return first


async def fresh_search(mf: MemFuse, memory: Memory, query: str) -> list[str]:
    """The results of ``query``, which the cache must not have answered."""
    hits = mf.search_stats().result_cache_hits
    found = [result.content for result in await memory.query(query, layers=["m0"])]
    assert mf.search_stats().result_cache_hits == hits, "a stale cached result was served"
    return found


async def served_from_cache(mf: MemFuse, memory: Memory, query: str) -> list[str]:
    """The results of ``query``, which the cache must have answered."""
    hits = mf.search_stats().result_cache_hits
    found = [result.content for result in await memory.query(query, layers=["m0"])]
    assert mf.search_stats().result_cache_hits == hits + 1, "not answered by the cache"
    return found


async def test_every_change_drops_the_users_cached_results(
    database_url: str, model: LocalEmbedder
) -> None:
    """The background work invalidates caches too (the worker everyone's), so each check of a
    cached answer first waits for it to finish (``flush``)."""
    async with memfuse_with_model(database_url, model) as mf:
        ana = await mf.init("ana", session="trip")
        ben = await mf.init("ben", session="trip")
        [kayak] = await ana.add([user("The kayak trip starts at the harbour.")])
        await ben.add([user("Ben rents a kayak on Sunday.")])
        await mf.flush()
        assert await cached_search(mf, ana, "kayak") == ["The kayak trip starts at the harbour."]
        ben_before = await cached_search(mf, ben, "kayak")

        # a metadata-only edit re-embeds nothing: only the hook can drop a cached result
        await ana.update_message(kayak, metadata={"checked": True})
        assert await fresh_search(mf, ana, "kayak") == ["The kayak trip starts at the harbour."]
        assert await served_from_cache(mf, ben, "kayak") == ben_before, "another user's stays"

        await ana.update_message(kayak, content="The kayak trip starts at the lighthouse.")
        assert await fresh_search(mf, ana, "kayak") == ["The kayak trip starts at the lighthouse."]
        await mf.flush()
        await cached_search(mf, ana, "kayak")

        await ana.delete_message(kayak)
        assert await fresh_search(mf, ana, "kayak") == []
        await mf.flush()
        await cached_search(mf, ana, "kayak")

        await ana.add([user("Another kayak plan.")])
        assert await fresh_search(mf, ana, "kayak") == ["Another kayak plan."]
        await mf.flush()
        await cached_search(mf, ana, "kayak")
        await ana.delete_session()
        assert await fresh_search(mf, ana, "kayak") == []

        again = await mf.init("ana", session="later")
        await again.add([user("A kayak again.")])
        await mf.flush()
        await cached_search(mf, again, "kayak")
        await again.delete_user()
        assert await fresh_search(mf, await mf.init("ana"), "kayak") == []

        await mf.flush()  # the worker and pipeline, woken all along, finish cleanly
        assert (await mf.health()).ok


def test_the_hook_drops_the_users_results_then_wakes_each_part() -> None:
    calls: list[object] = []
    hook = AfterCommit(invalidate=calls.append)

    def pipeline() -> None:
        calls.append("pipeline")

    def worker() -> None:
        calls.append("worker")

    hook.wake_also(pipeline)
    hook.wake_also(worker)
    user_id = uuid.uuid4()
    hook(user_id)
    assert calls == [user_id, "pipeline", "worker"]
    hook.stop_waking(worker)
    hook.stop_waking(worker)  # twice is harmless: a resource stops once, but shutdowns repeat
    hook(user_id)
    assert calls[3:] == [user_id, "pipeline"]
