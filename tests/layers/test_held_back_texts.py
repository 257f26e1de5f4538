"""A session's open episode is embedded once it stops growing, not at every message.

Every test runs the real model in the in-process worker, beside the layer pipeline.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import parts
from real_model import close_to, memfuse_with_model
from sqlalchemy import text

from memfuse.db.models import FACT_GROUP_MESSAGES
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
    async with memfuse_with_model(database_url, model, embed_delay=600, **SMALL_EPISODES) as mf:
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
    """The behaviour the delay removes (``embed_delay=0``)."""
    async with memfuse_with_model(database_url, model, embed_delay=0, **SMALL_EPISODES) as mf:
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
        database_url, model, embed_delay=0.5, worker_poll_interval=0.2, **SMALL_EPISODES
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
        database_url, model, embed_delay=600, worker_poll_interval=0.2, **SMALL_EPISODES
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


PETS = ["Biscuit", "Pepper", "Mochi", "Rex", "Luna", "Olive", "Ziggy", "Nova", "Toffee", "Juno"]
STATEMENTS = [f"I adopted a puppy named {pet} last week." for pet in PETS]
"""Each message gives the offline extractor one fact."""


async def fact_vectors(mf: MemFuse) -> dict[int, list[str | None]]:
    """The vectors of the facts drawn from each message number (their group's), as text (None:
    no vector)."""
    async with parts.db(mf) as db:
        rows = await db.execute(
            text(
                "SELECT m.seq, g.embedding::text FROM memfuse.facts f"
                " JOIN memfuse.messages m ON m.id = f.message_ids[1]"
                " LEFT JOIN memfuse.fact_groups g"
                " ON g.session_id = f.session_id AND g.group_no = f.group_no"
                " ORDER BY m.seq, f.id"
            )
        )
        found: dict[int, list[str | None]] = {}
        for seq, vector in rows:
            found.setdefault(int(seq), []).append(vector)
        return found


async def test_the_facts_of_a_group_of_messages_are_embedded_once_as_one_text(
    database_url: str, model: LocalEmbedder
) -> None:
    group = FACT_GROUP_MESSAGES
    async with memfuse_with_model(
        database_url, model, embed_delay=600, fact_extractor="offline"
    ) as mf:
        memory = await mf.init("alice", session="news")
        pipeline = await parts.pipeline(mf)
        worker = await parts.worker(mf)
        for statement in STATEMENTS[: 2 * group + 1]:
            await memory.add([{"role": "user", "name": "Alice", "content": statement}])
            await pipeline.flush()
            await worker.drain()

        found = await fact_vectors(mf)
        assert sorted(found) == list(range(1, 2 * group + 2)), found
        first_group = [vector for seq in range(1, group + 1) for vector in found[seq]]
        second_group = [vector for seq in range(group + 1, 2 * group + 1) for vector in found[seq]]
        # the first two groups are closed and embedded; the last message's group waits
        assert None not in first_group + second_group
        assert found[2 * group + 1] == [None] * len(found[2 * group + 1])
        # one vector per group, shared by every fact of the group
        assert len(set(first_group)) == len(set(second_group)) == 1
        assert first_group[0] != second_group[0]

        await mf.flush()
        assert all(
            vector is not None
            for vectors in (await fact_vectors(mf)).values()
            for vector in vectors
        )


async def test_concurrent_writers_embed_each_fact_once(
    database_url: str, model: LocalEmbedder
) -> None:
    """Writers, the background pipeline and the worker at once, with facts: every fact gets
    one vector write, each group stores one vector, and that vector is the one of the group's
    complete text (no group was embedded before it was complete, and no older text's vector
    overwrote a newer one)."""
    settings = SMALL_EPISODES | {"fact_extractor": "offline"}
    async with memfuse_with_model(
        database_url, model, embed_delay=600, worker_poll_interval=0.2, **settings
    ) as mf:
        sessions = [await mf.init("alice", session=f"s{index}") for index in range(3)]

        async def write(memory: Memory) -> None:
            for number in range(9):
                statement = STATEMENTS[number % len(STATEMENTS)]
                content = f"{statement} That was on day {number}."
                await memory.add([{"role": "user", "name": "Alice", "content": content}])
                await asyncio.sleep(0.3)  # slow enough for a step per message

        await asyncio.gather(*(write(memory) for memory in sessions))
        await mf.flush()
        async with parts.db(mf) as db:
            counts = (
                await db.execute(
                    text(
                        "SELECT (SELECT count(*) FROM memfuse.episodes),"
                        " (SELECT count(*) FROM memfuse.facts),"
                        " (SELECT count(*) FROM memfuse.facts f WHERE NOT EXISTS ("
                        "  SELECT 1 FROM memfuse.fact_groups g"
                        "  WHERE g.session_id = f.session_id AND g.group_no = f.group_no))"
                    )
                )
            ).one()
            groups = (
                await db.execute(
                    text(
                        "SELECT string_agg(f.content, E'\\n' ORDER BY m.seq, f.created_at, f.id),"
                        " min(g.embedding::text)"
                        " FROM memfuse.facts f JOIN memfuse.messages m ON m.id = f.message_ids[1]"
                        " JOIN memfuse.fact_groups g"
                        " ON g.session_id = f.session_id AND g.group_no = f.group_no"
                        " GROUP BY f.session_id, f.group_no"
                    )
                )
            ).all()
        episode_count, fact_count, unembedded = counts
        assert fact_count > 0 and unembedded == 0
        assert groups, "facts were drawn and their groups embedded"
        for group_text, stored in groups:
            expected = await model.embed_query(group_text)
            assert close_to(json.loads(stored), expected), group_text
        assert vectors_written(mf) == 3 * 9 + episode_count + fact_count
