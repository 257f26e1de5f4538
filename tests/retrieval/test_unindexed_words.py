"""A message's words are indexed off the ``add()`` path, and found at once all the same.

With an embedder, ``add()`` stores a message without its words (``content_tsv`` NULL); the
embedding worker indexes them when it stores the vector. Until then search reads them on the
fly, scoped like every list. Without an embedder the writer indexes them itself.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import parts
from real_model import memfuse_with_model
from sqlalchemy import text

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def turn(name: str, content: str) -> dict[str, str]:
    return {"role": "user", "name": name, "content": content}


async def indexed(mf: MemFuse) -> list[bool]:
    """For each message: whether its words are indexed, as ``message_text`` reads it."""
    async with parts.db(mf) as db:
        rows = await db.execute(
            text(
                "SELECT content_tsv IS NOT NULL"
                " AND content_tsv = to_tsvector('english', coalesce(name || ': ', '') || content)"
                " FROM memfuse.messages"
            )
        )
        return [bool(same) for (same,) in rows]


async def test_words_not_indexed_yet_are_found_within_the_users_scope(
    database_url: str, model: LocalEmbedder
) -> None:
    async with memfuse_with_model(database_url, model, worker_enabled=False) as mf:
        ana_kitchen = await mf.init("ana", session="kitchen")
        ana_garden = await mf.init("ana", session="garden")
        ben = await mf.init("ben", session="kitchen")
        await ana_kitchen.add([turn("Ana", "The sourdough starter needs feeding on Fridays.")])
        await ana_garden.add([turn("Ana", "The tomatoes need feeding every week.")])
        await ben.add([turn("Ben", "My sourdough starter died while I was away.")])
        assert set(await indexed(mf)) == {False}, "add() leaves the words to the worker"

        found = await ana_kitchen.query("sourdough starter", methods=["text"])
        assert [r.content for r in found] == ["The sourdough starter needs feeding on Fridays."]
        assert [r.content for r in await ben.query("sourdough", methods=["text"])] == [
            "My sourdough starter died while I was away."
        ]
        both = await ana_kitchen.query("feeding", methods=["text"])
        assert {r.content for r in both} == {
            "The sourdough starter needs feeding on Fridays.",
            "The tomatoes need feeding every week.",
        }
        in_garden = await ana_garden.query("feeding", methods=["text"], session="garden")
        assert [r.content for r in in_garden] == ["The tomatoes need feeding every week."]
        assert await ana_kitchen.query("Ben", methods=["text"]) == [], "another user's speaker"


async def test_indexed_and_unindexed_messages_are_ranked_in_one_list(
    database_url: str, model: LocalEmbedder
) -> None:
    """Rows read from the index and rows read on the fly are ordered by one rank: those with
    both of the query's words come first, whichever way their words were read."""
    both_indexed, both_later = "We rented a cabin by the lake.", "The lake cabin has no heating."
    one_indexed, one_later = "The lake was cold in June.", "Nobody swims in the lake now."
    async with MemFuse(database_url) as eager:  # no embedder: the writer indexes the words
        memory = await eager.init("ana", session="eager")
        await memory.add([turn("Ana", both_indexed), turn("Ana", one_indexed)])
    async with memfuse_with_model(database_url, model, worker_enabled=False) as mf:
        memory = await mf.init("ana", session="later")
        await memory.add([turn("Ana", one_later), turn("Ana", both_later)])
        assert sorted(await indexed(mf)) == [False, False, True, True]
        # M0 alone: an episode of the eager session would vote for its messages too.
        found = [
            r.content for r in await memory.query("cabin lake", methods=["text"], layers=["m0"])
        ]
    assert set(found[:2]) == {both_indexed, both_later}
    assert set(found[2:]) == {one_indexed, one_later}


async def test_the_worker_indexes_words_while_writers_and_the_pipeline_run(
    database_url: str, model: LocalEmbedder
) -> None:
    """Writers add and edit while the in-process worker and the pipeline run: afterwards every
    message's words are indexed as it reads now, and each is found by a word of its own."""
    async with memfuse_with_model(database_url, model, fact_extractor="none") as mf:
        memories = [await mf.init(f"user-{n}", session="chat") for n in range(3)]
        words: dict[str, int] = {}

        async def write(memory_index: int) -> None:
            memory = memories[memory_index]
            for n in range(12):
                word = f"w{uuid.uuid4().hex[:10]}"
                [message_id] = await memory.add([turn("Caroline", f"We talked about {word}.")])
                if n % 4 == 0:
                    word = f"e{uuid.uuid4().hex[:10]}"
                    await memory.update_message(message_id, content=f"Edited: {word}.")
                words[word] = memory_index

        await asyncio.gather(*(write(n) for n in range(3)))
        await mf.flush()
        assert set(await indexed(mf)) == {True}
        for word, owner in words.items():
            for index, memory in enumerate(memories):
                found = await memory.query(word, methods=["text"], layers=["m0"])
                assert bool(found) == (index == owner), (word, index)
        assert len(words) == 36
