"""Concurrent search queries share model calls (the real all-MiniLM-L6-v2 model)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence

import pytest

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import EmbeddingError
from memfuse.memory import MemFuse
from memfuse.retrieval.batching import QueryBatcher

QUERIES = [f"What did Ana say about trip number {i} to Lisbon?" for i in range(16)]
DIARY = [
    "The flight to Lisbon leaves on May 3rd.",
    "My sister Joana teaches piano in Porto.",
    "I started learning to sail last summer.",
    "The bakery near the station sells custard tarts.",
    "Our hotel in Lisbon has a rooftop pool.",
    "I lost my umbrella on the tram.",
    "The museum of azulejos was closed on Monday.",
    "We booked a fado show for Friday night.",
    "My knee hurts after the long walk up to the castle.",
    "Trip number 3 to Lisbon was the rainiest one.",
]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


class QueryOnly:
    """The real model behind an embedder that has no ``embed_queries``."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.model = model
        self.model_name = model.model_name
        self.dimension = model.dimension
        self.query_calls = 0

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return await self.model.embed_documents(texts)

    async def embed_query(self, text: str) -> list[float]:
        self.query_calls += 1
        return await self.model.embed_query(text)

    async def aclose(self) -> None:
        return None


class FailsOnce(QueryOnly):
    """The real model, after one injected failure (a fault, not a stand-in)."""

    failed = False

    async def embed_query(self, text: str) -> list[float]:
        if not self.failed:
            self.failed = True
            await asyncio.sleep(0.05)  # others queue meanwhile
            raise EmbeddingError("injected failure")
        return await super().embed_query(text)


async def test_a_lone_query_is_one_call_of_its_own(model: LocalEmbedder) -> None:
    batcher = QueryBatcher(model)
    vector = await batcher.embed(QUERIES[0])
    assert (batcher.calls, batcher.queries) == (1, 1)
    assert cosine(vector, await model.embed_query(QUERIES[0])) > 0.9999


async def test_concurrent_queries_share_calls_and_keep_their_vectors(model: LocalEmbedder) -> None:
    batcher = QueryBatcher(model)
    vectors = await asyncio.gather(*(batcher.embed(query) for query in QUERIES))
    assert batcher.queries == len(QUERIES)
    assert batcher.calls <= 3, "the first alone, the rest together"
    for query, vector in zip(QUERIES, vectors, strict=True):
        assert cosine(vector, await model.embed_query(query)) > 0.9999


async def test_batches_are_capped(model: LocalEmbedder) -> None:
    batcher = QueryBatcher(model, max_batch=4)
    await asyncio.gather(*(batcher.embed(query) for query in QUERIES))
    assert batcher.calls >= len(QUERIES) // 4


async def test_an_embedder_without_embed_queries_gets_one_call_per_query(
    model: LocalEmbedder,
) -> None:
    embedder = QueryOnly(model)
    batcher = QueryBatcher(embedder)
    vectors = await asyncio.gather(*(batcher.embed(query) for query in QUERIES[:5]))
    assert embedder.query_calls == 5
    assert cosine(vectors[3], await model.embed_query(QUERIES[3])) > 0.9999


async def test_a_failure_reaches_only_its_query_and_later_calls_still_run(
    model: LocalEmbedder,
) -> None:
    batcher = QueryBatcher(FailsOnce(model))
    outcomes = await asyncio.gather(
        *(batcher.embed(query) for query in QUERIES[:4]), return_exceptions=True
    )
    assert isinstance(outcomes[0], EmbeddingError)
    assert all(isinstance(vector, list) for vector in outcomes[1:]), "each query its own outcome"
    assert len(await batcher.embed("afterwards")) == model.dimension


async def test_a_cancelled_caller_leaves_the_others_their_vectors(model: LocalEmbedder) -> None:
    batcher = QueryBatcher(model)
    tasks = [asyncio.create_task(batcher.embed(query)) for query in QUERIES[:6]]
    await asyncio.sleep(0)
    tasks[2].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert all(isinstance(outcomes[i], list) for i in (0, 1, 3, 4, 5))


@pytest.fixture
async def uncached(database_url: str) -> AsyncIterator[MemFuse]:
    """The real model and worker, with no result or query-vector cache: every search embeds."""
    async with MemFuse(
        database_url, embedder="local", search_cache_ttl=0.0, query_embedding_cache_size=0
    ) as mf:
        yield mf


@pytest.mark.model
async def test_concurrent_searches_find_what_lone_ones_find(uncached: MemFuse) -> None:
    mf = uncached
    ana = await mf.init("ana", session="trip")
    await ana.add([said(text) for text in DIARY])
    await mf.flush()
    together = await asyncio.gather(*(ana.query(query, top_k=5) for query in QUERIES))
    stats = mf.search_stats()
    assert stats.queries_embedded == len(QUERIES)
    assert stats.query_model_calls < len(QUERIES), "concurrent queries shared calls"
    alone = [await ana.query(query, top_k=5) for query in QUERIES]
    for one, many in zip(alone, together, strict=True):
        assert [r.id for r in one][:2] == [r.id for r in many][:2]


@pytest.mark.model
async def test_concurrent_searches_while_the_worker_and_pipeline_write(uncached: MemFuse) -> None:
    mf = uncached
    ana = await mf.init("ana", session="trip")
    ben = await mf.init("ben", session="trip")
    await ana.add([said(f"Trip {i} to Lisbon went well.") for i in range(20)])
    await ben.add([said(f"Ben's trip {i} to Lisbon was rainy.") for i in range(20)])
    ben_ids = {m.id for m in await ben.list_messages(limit=100)}
    writes = asyncio.gather(*(ana.add([said(f"More about Lisbon, part {i}.")]) for i in range(20)))
    searches = asyncio.gather(*(ana.query(query, top_k=5) for query in QUERIES))
    _, found = await asyncio.gather(writes, searches)
    await mf.flush()
    for results in found:
        assert results, "ana's rows are found by full text before their vectors"
        assert not ben_ids & {i for r in results for i in r.message_ids}
    assert len(await ana.list_messages(limit=100)) == 40, "no write was lost"


def said(content: str) -> dict[str, object]:
    return {"role": "user", "content": content}
