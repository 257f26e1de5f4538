"""M2 rules: one live copy of each fact, supersession with history, order independence."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from dependency_injector import providers
from scripted_extractor import ScriptedExtractor

from memfuse.container import Container
from memfuse.layers.extractors import FactCandidate
from memfuse.layers.m2 import ExtractedFacts, plan_facts
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.facts import LiveFact
from memfuse.repositories.progress import Progress
from memfuse.types import ChunkData

MAY_1 = datetime(2023, 5, 1, tzinfo=UTC)
JUNE_1 = datetime(2023, 6, 1, tzinfo=UTC)
SCRIPT = {
    "I live in Boston.": [("Caroline lives in Boston.", "caroline|lives_in")],
    "I moved to Austin.": [("Caroline lives in Austin.", "caroline|lives_in")],
    "I moved to Denver.": [("Caroline lives in Denver.", "caroline|lives_in")],
    "I love hiking.": [("Caroline loves hiking.", None)],
    "Hiking is my thing, I love hiking.": [("Caroline loves hiking.", None)],
}


@pytest.fixture
def extractor() -> ScriptedExtractor:
    return ScriptedExtractor(SCRIPT)


@pytest.fixture
async def mf(database_url: str, extractor: ScriptedExtractor) -> AsyncIterator[MemFuse]:
    container = Container()
    container.fact_extractor.override(providers.Object(extractor))
    async with MemFuse(database_url, container=container, pipeline_auto=False) as mf:
        yield mf


async def say(memory: Memory, text: str, at: datetime) -> uuid.UUID:
    [message_id] = await memory.add(
        [{"role": "user", "name": "Caroline", "content": text, "created_at": at}]
    )
    return message_id


async def test_a_fact_already_live_is_not_stored_again(mf: MemFuse) -> None:
    first = await mf.init("caroline", session="one")
    second = await mf.init("caroline", session="two")
    await say(first, "I love hiking.", MAY_1)
    await say(second, "Hiking is my thing, I love hiking.", JUNE_1)
    await mf.flush()
    facts = await first.list_facts(all_sessions=True)
    assert [f.content for f in facts] == ["Caroline loves hiking."]


async def test_a_newer_fact_supersedes_the_old_which_is_kept_closed(mf: MemFuse) -> None:
    memory = await mf.init("caroline", session="one")
    boston = await say(memory, "I live in Boston.", MAY_1)
    denver = await say(memory, "I moved to Denver.", JUNE_1)
    await mf.flush()

    live = await memory.list_facts()
    assert [(f.content, f.message_ids) for f in live] == [("Caroline lives in Denver.", (denver,))]
    history = await memory.list_facts(include_superseded=True, order="asc")
    old, new = history
    assert (old.content, old.message_ids) == ("Caroline lives in Boston.", (boston,))
    assert (old.valid_from, old.valid_to, old.superseded_by) == (MAY_1, JUNE_1, new.id)
    assert (new.valid_from, new.valid_to) == (JUNE_1, None)


async def test_supersession_follows_message_time_not_processing_order(mf: MemFuse) -> None:
    later = await mf.init("caroline", session="later")
    await say(later, "I moved to Denver.", JUNE_1)
    await mf.flush()
    earlier = await mf.init("caroline", session="earlier")
    await say(earlier, "I live in Boston.", MAY_1)
    await mf.flush()

    live = await later.list_facts(all_sessions=True)
    assert [f.content for f in live] == ["Caroline lives in Denver."]
    [boston] = [
        f
        for f in await later.list_facts(all_sessions=True, include_superseded=True)
        if "Boston" in f.content
    ]
    assert (boston.valid_to, boston.superseded_by) == (JUNE_1, live[0].id)


async def test_deleting_the_superseding_session_reopens_the_old_fact(mf: MemFuse) -> None:
    home = await mf.init("caroline", session="home")
    await say(home, "I live in Boston.", MAY_1)
    move = await mf.init("caroline", session="move")
    await say(move, "I moved to Denver.", JUNE_1)
    await mf.flush()

    await move.delete_session()
    [boston] = await home.list_facts(all_sessions=True)
    assert (boston.content, boston.valid_to, boston.superseded_by) == (
        "Caroline lives in Boston.",
        None,
        None,
    )


async def test_facts_point_at_the_episode_holding_their_message(mf: MemFuse) -> None:
    memory = await mf.init("caroline", session="one")
    await say(memory, "I love hiking.", MAY_1)
    await mf.flush()
    [episode] = await memory.list_episodes()
    [fact] = await memory.list_facts()
    assert fact.episode_id == episode.id
    assert set(fact.message_ids) <= set(episode.message_ids)


async def test_deleting_a_middle_fact_closes_the_older_one_by_the_newer(mf: MemFuse) -> None:
    sessions = [await mf.init("caroline", session=name) for name in ("a", "b", "c")]
    await say(sessions[0], "I live in Boston.", MAY_1)
    await say(sessions[1], "I moved to Denver.", JUNE_1)
    await say(sessions[2], "I moved to Austin.", JUNE_1 + timedelta(days=30))
    await mf.flush()

    await sessions[1].delete_session()
    live = await sessions[0].list_facts(all_sessions=True)
    assert [f.content for f in live] == ["Caroline lives in Austin."]
    history = await sessions[0].list_facts(all_sessions=True, include_superseded=True, order="asc")
    boston, austin = history
    assert (boston.superseded_by, boston.valid_to) == (austin.id, austin.valid_from)


def chunk(text: str, at: datetime) -> ChunkData:
    return ChunkData(
        content=text,
        user_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        message_ids=(uuid.uuid4(),),
        first_seq=1,
        last_seq=1,
        started_at=at,
        ended_at=at,
        token_count=3,
        speaker="Caroline",
    )


def progress() -> Progress:
    return Progress(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "m2", 0, 0, 1, 0)


def test_plan_skips_duplicates_within_a_batch_and_of_live_facts() -> None:
    message = chunk("text", MAY_1)
    candidates = tuple(
        FactCandidate(content, message.message_ids)
        for content in ("A fact.", "A  fact.", "Known fact.", "Another fact.")
    )
    plan = plan_facts(progress(), ExtractedFacts(candidates, (message,)), {"Known fact."}, [])
    assert [f.content for f in plan.inserts] == ["A fact.", "Another fact."]


def test_plan_closes_an_older_live_fact_of_the_same_slot() -> None:
    message = chunk("I moved to Denver.", JUNE_1)
    live = LiveFact(uuid.uuid4(), "caroline|lives_in", MAY_1)
    candidate = FactCandidate("Caroline lives in Denver.", message.message_ids, key=live.fact_key)
    plan = plan_facts(progress(), ExtractedFacts((candidate,), (message,)), set(), [live])
    [new] = plan.inserts
    assert [(c.fact_id, c.valid_to, c.superseded_by) for c in plan.closures] == [
        (live.id, JUNE_1, new.id)
    ]


def test_plan_stores_a_fact_older_than_the_live_one_already_closed() -> None:
    message = chunk("I live in Boston.", MAY_1)
    live = LiveFact(uuid.uuid4(), "caroline|lives_in", JUNE_1)
    candidate = FactCandidate("Caroline lives in Boston.", message.message_ids, key=live.fact_key)
    plan = plan_facts(progress(), ExtractedFacts((candidate,), (message,)), set(), [live])
    [old] = plan.inserts
    assert [(c.fact_id, c.valid_to, c.superseded_by) for c in plan.closures] == [
        (old.id, JUNE_1, live.id)
    ]
    assert old.valid_from == MAY_1


def test_plan_takes_the_time_of_the_latest_source_message() -> None:
    first, second = chunk("a", MAY_1), chunk("b", MAY_1 + timedelta(days=2))
    candidate = FactCandidate("Both.", (*first.message_ids, *second.message_ids))
    plan = plan_facts(progress(), ExtractedFacts((candidate,), (first, second)), set(), [])
    assert plan.inserts[0].valid_from == MAY_1 + timedelta(days=2)
