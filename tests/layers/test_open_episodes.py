"""A session's open episode is embedded once it stops growing, not at every message.

Every test runs the real model in the in-process worker, beside the layer pipeline.
"""

from __future__ import annotations

import asyncio
import os
import time

import parts
from real_model import memfuse_with_model
from sqlalchemy import text

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse, Memory

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_EPISODES = {
    "fact_extractor": "none",
    "episode_target_tokens": 40,
    "episode_max_tokens": 60,
}
"""Episodes of a few messages, so a short conversation closes several; no facts, so every
vector is a message's or an episode's."""


def turn(number: int) -> dict[str, str]:
    return {
        "role": "user",
        "name": "Caroline" if number % 2 == 0 else "Melanie",
        "content": f"Message {number}: we talked about the hiking trip and the painting class.",
    }


async def episodes(mf: MemFuse) -> list[tuple[int, bool]]:
    """Each episode's first message number and whether it has a vector, in order."""
    async with parts.db(mf) as db:
        rows = await db.execute(
            text("SELECT first_seq, embedding IS NOT NULL FROM memfuse.episodes ORDER BY 1")
        )
        return [(int(first), bool(embedded)) for first, embedded in rows]


async def add_one_by_one(mf: MemFuse, memory: Memory, count: int) -> None:
    """Add messages one at a time, each processed into M1 and every due job embedded before
    the next: the slowest writer, which gives a growing episode the most chances to be
    embedded."""
    pipeline = await parts.pipeline(mf)
    worker = await parts.worker(mf)
    for number in range(count):
        await memory.add([turn(number)])
        await pipeline.flush()
        await worker.drain()


def vectors_written(mf: MemFuse) -> int:
    stats = mf.worker_stats()
    assert stats is not None
    return stats.vectors_written


async def test_an_episode_is_embedded_once_after_it_closes(
    database_url: str, model: LocalEmbedder
) -> None:
    async with memfuse_with_model(
        database_url, model, episode_embed_delay=600, **SMALL_EPISODES
    ) as mf:
        memory = await mf.init("alice", session="trip")
        await add_one_by_one(mf, memory, 12)

        found = await episodes(mf)
        assert len(found) >= 3, found
        # every closed episode has its vector; the open (last) one waits
        assert [embedded for _, embedded in found] == [True] * (len(found) - 1) + [False]
        # each message once, each closed episode once: no growth was embedded
        assert vectors_written(mf) == 12 + len(found) - 1

        await mf.flush()
        assert all(embedded for _, embedded in await episodes(mf))
        assert vectors_written(mf) == 12 + len(found)


async def test_without_a_delay_every_growth_is_embedded(
    database_url: str, model: LocalEmbedder
) -> None:
    """The behaviour the delay removes (``episode_embed_delay=0``)."""
    async with memfuse_with_model(
        database_url, model, episode_embed_delay=0, **SMALL_EPISODES
    ) as mf:
        memory = await mf.init("alice", session="trip")
        await add_one_by_one(mf, memory, 12)
        await mf.flush()
        found = await episodes(mf)
        assert all(embedded for _, embedded in found)
        assert vectors_written(mf) > 12 + len(found)


async def test_an_idle_open_episode_is_embedded_after_the_delay(
    database_url: str, model: LocalEmbedder
) -> None:
    async with memfuse_with_model(
        database_url, model, episode_embed_delay=0.5, worker_poll_interval=0.2, **SMALL_EPISODES
    ) as mf:
        memory = await mf.init("alice", session="trip")
        await memory.add([turn(0), turn(1)])
        await (await parts.pipeline(mf)).flush()
        assert await episodes(mf) == [(1, False)]
        deadline = time.monotonic() + 30
        while await episodes(mf) != [(1, True)]:
            assert time.monotonic() < deadline, "the idle episode was never embedded"
            await asyncio.sleep(0.1)


async def test_concurrent_writers_with_the_pipeline_and_worker_embed_each_episode_once(
    database_url: str, model: LocalEmbedder
) -> None:
    """Writers, the background pipeline and the worker all at once: when everything has
    settled, every row has its vector and no episode was embedded twice."""
    async with memfuse_with_model(
        database_url, model, episode_embed_delay=600, worker_poll_interval=0.2, **SMALL_EPISODES
    ) as mf:
        sessions = [await mf.init("alice", session=f"s{index}") for index in range(4)]

        async def write(memory: Memory) -> None:
            for number in range(15):
                await memory.add([turn(number)])
                await asyncio.sleep(0.01)

        await asyncio.gather(*(write(memory) for memory in sessions))
        await mf.flush()

        found = await episodes(mf)
        assert all(embedded for _, embedded in found)
        assert vectors_written(mf) == 4 * 15 + len(found)
        async with parts.db(mf) as db:
            unembedded = await db.scalar(
                text("SELECT count(*) FROM memfuse.messages WHERE embedding IS NULL")
            )
            jobs = await db.scalar(text("SELECT count(*) FROM memfuse.embedding_jobs"))
        assert (unembedded, jobs) == (0, 0)
