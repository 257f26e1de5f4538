"""M1 packing rules, without a database: budgets, idle gaps, and order independence."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from memfuse.layers.m1 import EpisodePolicy, pack_episodes
from memfuse.tokens import count_tokens
from memfuse.types import ChunkData

USER, AGENT, SESSION = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
START = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def message(seq: int, text: str, *, minutes: float = 0, session: uuid.UUID = SESSION) -> ChunkData:
    at = START + timedelta(minutes=minutes)
    return ChunkData(
        content=text,
        user_id=USER,
        agent_id=AGENT,
        session_id=session,
        message_ids=(uuid.uuid4(),),
        first_seq=seq,
        last_seq=seq,
        started_at=at,
        ended_at=at,
        token_count=count_tokens(text),
        role="user",
        speaker="Caroline" if seq % 2 else "Melanie",
    )


def conversation(count: int, words: int = 30) -> list[ChunkData]:
    return [message(i, " ".join(["word"] * words), minutes=i) for i in range(1, count + 1)]


def test_messages_are_packed_up_to_the_target_and_never_past_the_maximum() -> None:
    policy = EpisodePolicy(target_tokens=100, max_tokens=120)
    episodes = pack_episodes(conversation(20), None, policy)
    assert len(episodes) > 1
    for episode, following in itertools.pairwise(episodes):
        assert episode.token_count <= 120
        assert count_tokens(episode.content) == episode.token_count
        next_line_tokens = count_tokens(following.content.split("\n")[0])
        closed_because = episode.token_count >= 100 or episode.token_count + next_line_tokens > 120
        assert closed_because, "an episode closes only when full or the next message won't fit"


def test_lineage_covers_every_message_once_in_order() -> None:
    messages = conversation(20)
    episodes = pack_episodes(messages, None, EpisodePolicy(target_tokens=100, max_tokens=120))
    lineage = [i for episode in episodes for i in episode.message_ids]
    assert lineage == [m.message_ids[0] for m in messages]
    for episode in episodes:
        assert episode.last_seq - episode.first_seq + 1 == len(episode.message_ids)


def test_an_episode_reads_as_speaker_lines_with_its_time_span() -> None:
    messages = [message(1, "Hi Mel!", minutes=0), message(2, "Hey Caroline!", minutes=3)]
    [episode] = pack_episodes(messages, None, EpisodePolicy())
    assert episode.content == "Caroline: Hi Mel!\nMelanie: Hey Caroline!"
    assert (episode.started_at, episode.ended_at) == (START, START + timedelta(minutes=3))
    assert episode.metadata["speakers"] == ["Caroline", "Melanie"]


def test_a_long_idle_gap_starts_a_new_episode() -> None:
    messages = [message(1, "morning", minutes=0), message(2, "evening", minutes=600)]
    episodes = pack_episodes(messages, None, EpisodePolicy(idle_gap=timedelta(hours=1)))
    assert [e.content for e in episodes] == ["Caroline: morning", "Melanie: evening"]


def test_episodes_never_mix_sessions() -> None:
    other = uuid.uuid4()
    messages = [message(1, "here"), message(1, "there", session=other)]
    episodes = pack_episodes(messages, None, EpisodePolicy())
    assert [e.session_id for e in episodes] == [SESSION, other]


def test_a_message_larger_than_the_maximum_is_an_episode_of_its_own() -> None:
    big = message(2, " ".join(["word"] * 300))
    episodes = pack_episodes(
        [message(1, "small"), big, message(3, "small")],
        None,
        EpisodePolicy(target_tokens=50, max_tokens=60),
    )
    assert [len(e.message_ids) for e in episodes] == [1, 1, 1]


def test_packing_message_by_message_gives_the_same_episodes_as_all_at_once() -> None:
    messages = conversation(40, words=17)
    policy = EpisodePolicy(target_tokens=100, max_tokens=130)
    at_once = pack_episodes(messages, None, policy)

    stored: list[ChunkData] = []
    for item in messages:
        packed = pack_episodes([item], stored[-1] if stored else None, policy)
        if stored and packed[0].first_seq == stored[-1].first_seq:
            stored[-1:] = packed
        else:
            stored.extend(packed)
    assert stored == at_once
