"""The worker's pipeline (issue 14): chunks written while the next is embedded, the next
claim leased during the last chunk, all against a real PostgreSQL and the real model."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections.abc import Sequence

import parts
import pytest
from real_model import memfuse_with_model
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.db.models import message_text
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.memory import MemFuse, Memory
from memfuse.monitor import PerformanceMonitor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.model


@pytest.fixture
def engine(engine_for_worker: AsyncEngine) -> AsyncEngine:
    return engine_for_worker


class WatchingEmbedder:
    """The real model; before each call it runs ``during`` (which may wait on the database)."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.model = model
        self.model_name = model.model_name
        self.dimension = model.dimension
        self.calls: list[list[str]] = []
        self.during: list[object] = []
        self.poison = "POISON"

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        for check in self.during:
            result = check(len(self.calls), list(texts))  # type: ignore[operator]
            if asyncio.iscoroutine(result):
                await result
        if any(self.poison in t for t in texts):
            raise RuntimeError("the model cannot embed this")
        return await self.model.embed_documents(texts)

    async def embed_query(self, text: str) -> list[float]:
        return await self.model.embed_query(text)

    async def aclose(self) -> None:
        pass


def make_worker(engine: AsyncEngine, embedder: object, **options: object) -> EmbeddingWorker:
    return EmbeddingWorker(engine, embedder, PerformanceMonitor(), **options)  # type: ignore[arg-type]


async def add(memory: Memory, *contents: str) -> list[uuid.UUID]:
    return await memory.add([{"role": "user", "content": c} for c in contents])


async def embedded(engine: AsyncEngine, contents: Sequence[str]) -> int:
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM memfuse.messages "
                        "WHERE embedding IS NOT NULL AND content = ANY(:contents)"
                    ),
                    {"contents": list(contents)},
                )
            ).scalar_one()
        )


async def queue(engine: AsyncEngine) -> list[tuple[str | None, bool]]:
    """Each queued job's lease holder, and whether its lease is live."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT locked_by, coalesce(locked_until > clock_timestamp(), false) "
                "FROM memfuse.embedding_jobs"
            )
        )
        return [(row[0], bool(row[1])) for row in rows]


async def eventually(engine: AsyncEngine, check: object, limit: float = 10.0) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if await check(engine):  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not seen in time")


async def test_each_chunk_is_written_while_the_next_one_is_embedded(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    """Chunks of two texts, shortest first; during the embedding of each chunk after the
    first, the chunk before it gets its vectors committed (the write ran meanwhile)."""
    contents = [f"note {'x' * n}" for n in range(7)]
    await add(await mf.init("ana"), *contents)
    embedder = WatchingEmbedder(model)
    written_during: list[int] = []

    async def previous_chunk_committed(call: int, _: list[str]) -> None:
        if call > 1:
            wanted = 2 * (call - 1)
            await eventually(engine, lambda e: _at_least(e, contents, wanted))
            written_during.append(call)

    embedder.during.append(previous_chunk_committed)
    worker = make_worker(engine, embedder, chunk_size=2)
    assert await worker.process_batch() == 7
    assert [len(call) for call in embedder.calls] == [2, 2, 2, 1]
    assert [t for call in embedder.calls for t in call] == sorted(contents, key=len)
    assert written_during == [2, 3, 4]
    assert await embedded(engine, contents) == 7
    assert worker.stats.jobs_done == 7 and worker.stats.batches == 1
    assert await queue(engine) == []


async def _at_least(engine: AsyncEngine, contents: Sequence[str], count: int) -> bool:
    return await embedded(engine, contents) >= count


async def test_the_next_claim_is_leased_during_the_last_chunk_of_a_full_one(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    """Batches of 3 over 8 jobs: while the last chunk of the first batch is embedded, the
    next 3 jobs are already leased; one call processes all three batches (3, 3, 2)."""
    contents = [f"message {n}" for n in range(8)]
    await add(await mf.init("ana"), *contents)
    embedder = WatchingEmbedder(model)
    worker = make_worker(engine, embedder, batch_size=3, chunk_size=2)
    leased_during_first: list[int] = []

    async def next_claim_in_flight(call: int, _: list[str]) -> None:
        if call == 2:  # the first batch's last chunk (3 texts in chunks of 2)

            async def six_leased(e: AsyncEngine) -> bool:
                mine = [owner for owner, live in await queue(e) if owner == worker.worker_id]
                return len(mine) >= 6 - 2  # 3 of the next batch + 1 in hand + the written 2 gone

            await eventually(engine, six_leased)
            leased_during_first.append(call)

    embedder.during.append(next_claim_in_flight)
    assert await worker.process_batch() == 8
    assert leased_during_first == [2]
    assert worker.stats.batch_sizes == [3, 3, 2]
    assert await embedded(engine, contents) == 8
    assert await queue(engine) == []
    assert not worker._held, "no job is left held for renewal"


async def test_a_short_claim_does_not_lease_ahead(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    await add(await mf.init("ana"), "one", "two")
    worker = make_worker(engine, WatchingEmbedder(model), batch_size=5)
    assert await worker.process_batch() == 2
    assert worker.stats.batch_sizes == [2], "no second claim after a short one"


async def test_a_poison_text_fails_alone_in_its_chunk(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    """The poison text shares the second chunk with another: that chunk is retried text by
    text, and every other text of every chunk gets its vector."""
    contents = ["a", "bb", "POISON", "dddddd", "eeeeeee"]
    await add(await mf.init("ana"), *contents)
    embedder = WatchingEmbedder(model)
    worker = make_worker(engine, embedder, chunk_size=2, backoff_base=60.0)
    assert await worker.process_batch() == 5
    assert sorted(embedder.calls[1]) == ["POISON", "dddddd"]
    assert await embedded(engine, contents) == 4
    assert worker.stats.failures == 1 and worker.stats.jobs_done == 4
    assert [owner for owner, _ in await queue(engine)] == [None], "retried later, unleased"


async def test_cancelled_mid_pipeline_keeps_the_written_chunks_and_gives_back_the_rest(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    contents = [f"row {'y' * n}" for n in range(6)]
    await add(await mf.init("ana"), *contents)
    embedder = WatchingEmbedder(model)
    stuck = asyncio.Event()

    async def hang_on_third(call: int, _: list[str]) -> None:
        if call == 3:
            await eventually(engine, lambda e: _at_least(e, contents, 4))
            stuck.set()
            await asyncio.sleep(3600)

    embedder.during.append(hang_on_third)
    worker = make_worker(engine, embedder, chunk_size=2)
    batch = asyncio.create_task(worker.process_batch())
    await asyncio.wait_for(stuck.wait(), 10)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert await embedded(engine, contents) == 4
    assert await queue(engine) == [(None, False), (None, False)], "given back, not leased"
    assert not worker._held and worker._renewer is None


async def test_close_gives_back_a_claim_leased_ahead(
    mf: MemFuse, engine: AsyncEngine, model: LocalEmbedder
) -> None:
    """Stopped while the next claim is already leased: the batch in hand finishes, the
    claim leased ahead is given back, and nothing stays leased."""
    contents = [f"item {n}" for n in range(6)]
    await add(await mf.init("ana"), *contents)
    embedder = WatchingEmbedder(model)
    worker = make_worker(engine, embedder, batch_size=2, chunk_size=1, listen=False)
    in_last_chunk = asyncio.Event()

    async def slow_second(call: int, _: list[str]) -> None:
        if call == 2:
            in_last_chunk.set()
            await asyncio.sleep(0.5)

    embedder.during.append(slow_second)
    worker.start()
    await asyncio.wait_for(in_last_chunk.wait(), 10)
    await worker.close(grace=10.0)
    assert await embedded(engine, contents) == 2
    assert await queue(engine) == [(None, False)] * 4
    assert worker.stats.jobs_done == 2


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_the_real_worker_pipelines_under_concurrent_writes(
    database_url: str, model: LocalEmbedder
) -> None:
    """The in-process worker with small claims and chunks (so it leases ahead and writes
    while it embeds) while writers add, edit and delete messages: at the end every message
    has the vector of its current text, and no job is left."""
    rng = random.Random(14)
    async with memfuse_with_model(
        database_url,
        model,
        pipeline_auto=False,
        fact_extractor="none",
        worker_batch_size=6,
        worker_chunk_size=2,
    ) as running:
        worker = await parts.worker(running)
        memories = [await running.init(f"user-{n}") for n in range(3)]
        kept: list[uuid.UUID] = []

        async def writer(memory: Memory, name: str) -> None:
            ids: list[uuid.UUID] = []
            for step in range(12):
                ids += await memory.add(
                    [
                        {"role": "user", "name": name, "content": f"{name} says {step} " * k}
                        for k in (1, 3)
                    ]
                )
                if step % 3 == 2:
                    await memory.update_message(rng.choice(ids), content=f"edited {step} {name}")
                if step % 4 == 3:
                    await memory.delete_message(ids.pop(rng.randrange(len(ids))))
                await asyncio.sleep(0.01)
            kept.extend(ids)

        await asyncio.gather(*(writer(m, f"writer{n}") for n, m in enumerate(memories)))
        await running.flush()
        assert worker.stats.largest_batch >= 2
        async with parts.db(running) as db:
            rows = (
                await db.execute(text("SELECT name, content, embedding FROM memfuse.messages"))
            ).all()
            left = (await db.execute(text("SELECT count(*) FROM memfuse.embedding_jobs"))).scalar()
        assert left == 0
        assert len(rows) == len(kept)
        texts = [message_text(row.name, row.content) for row in rows]
        expected = await model.embed_documents(texts)
        for row, wanted in zip(rows, expected, strict=True):
            assert row.embedding is not None, row.content
            assert cosine(row.embedding.to_list(), wanted) >= 0.999, row.content


async def test_a_drain_ends_while_writers_keep_the_queue_busy(
    engine: AsyncEngine, mf: MemFuse, model: LocalEmbedder
) -> None:
    """A drain waits for the jobs due when it started, not for those queued after: with a
    writer that adds faster than the (slowed) worker embeds, it still returns, every message
    added before it started has its vector, and the writer's later jobs are still queued."""
    memory = await mf.init("busy-writer")
    before = [f"before {n}" for n in range(12)]
    await add(memory, *before)
    slow = WatchingEmbedder(model)
    slow.during.append(lambda *_: asyncio.sleep(0.05))
    worker = make_worker(engine, slow, batch_size=4, chunk_size=2)
    drained = asyncio.Event()
    added_during: list[str] = []

    async def writer() -> None:
        step = 0
        while not drained.is_set():
            batch = [f"during {step} {k}" for k in range(4)]
            await add(memory, *batch)
            added_during.extend(batch)
            step += 1
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    try:
        await asyncio.wait_for(worker.drain(), timeout=60)
    finally:
        drained.set()
        await writing
    assert await embedded(engine, before) == len(before)
    assert added_during, "the writer ran during the drain"
    assert len(await queue(engine)) > 0, "jobs queued after the start are left for later"
