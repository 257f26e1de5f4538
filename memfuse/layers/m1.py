"""M1, the episodic layer: consecutive messages of a session packed into episodes.

Packing is greedy and deterministic: a message joins the session's open episode while the
episode is under the target size, stays within the maximum with it, and follows the
previous message within the idle gap; otherwise it starts a new episode. Because the last
episode is reopened when new messages arrive, the episodes come out the same whether a
session is processed in one go or message by message.

The session's last episode is *open*: the next message may extend it. Its embedding waits
until it has not grown for ``embed_delay`` (or until a later episode closes it, or
``flush()``), so an episode is embedded about once instead of once per message.

Storing episodes also points the session's facts at them (``episode_id``) under the user's
fact lock, as storing facts does with the episodes: whichever of the two commits second
links them, so no fact stays unlinked when M1 and M2 run at once or in different processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import message_text
from memfuse.repositories.episodes import EpisodeRepository
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.jobs import JobRepository
from memfuse.repositories.progress import Progress
from memfuse.tokens import count_tokens
from memfuse.types import ChunkData, EpisodeRow


@dataclass(frozen=True, slots=True)
class EpisodePolicy:
    """When an episode is full: the token target and maximum, and the idle gap that splits."""

    target_tokens: int = 700
    max_tokens: int = 800
    idle_gap: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.target_tokens < 1 or self.max_tokens < self.target_tokens:
            raise ValueError("need 1 <= target_tokens <= max_tokens")


@dataclass(frozen=True, slots=True)
class PackedEpisodes:
    """The episodes to write: ``reopened`` is the id of the stored episode the first one
    extends (``reopened_last_seq`` its end when it was read), or ``None`` when every episode
    is new."""

    episodes: tuple[ChunkData, ...]
    reopened: uuid.UUID | None
    reopened_last_seq: int | None = None


def episode_line(message: ChunkData) -> str:
    """How a message reads inside an episode: the speaker, then the text."""
    return message_text(message_speaker(message), message.content)


def message_speaker(message: ChunkData) -> str:
    """Who said a message: its speaker's name, else its role."""
    return message.speaker or message.role or "unknown"


def episode_chunk(row: EpisodeRow) -> ChunkData:
    """A stored episode as a chunk that packing may extend."""
    return ChunkData(
        content=row.content,
        user_id=row.user_id,
        agent_id=row.agent_id,
        session_id=row.session_id,
        message_ids=row.message_ids,
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        started_at=row.started_at,
        ended_at=row.ended_at,
        token_count=row.token_count,
        metadata=row.metadata,
    )


def pack_episodes(
    messages: Sequence[ChunkData], open_episode: ChunkData | None, policy: EpisodePolicy
) -> list[ChunkData]:
    """Pack messages (of one session, in order) onto the open episode and new ones after it.

    The result starts with the open episode, extended or not, when one is given.
    """
    episodes: list[ChunkData] = [] if open_episode is None else [open_episode]
    for message in messages:
        line = episode_line(message)
        tokens = count_tokens(line)
        current = episodes[-1] if episodes else None
        if current is not None and _fits(current, message, tokens, policy):
            episodes[-1] = _extend(current, message, line, tokens)
        else:
            episodes.append(_start(message, line, tokens))
    return episodes


def _fits(episode: ChunkData, message: ChunkData, tokens: int, policy: EpisodePolicy) -> bool:
    if (episode.user_id, episode.session_id) != (message.user_id, message.session_id):
        return False
    return (
        episode.token_count < policy.target_tokens
        and episode.token_count + tokens <= policy.max_tokens
        and message.started_at - episode.ended_at <= policy.idle_gap
    )


def _speakers(chunk: ChunkData) -> list[str]:
    speakers = chunk.metadata.get("speakers", [])
    return [str(name) for name in speakers] if isinstance(speakers, list) else []


def _start(message: ChunkData, line: str, tokens: int) -> ChunkData:
    speaker = message_speaker(message)
    return replace(
        message,
        content=line,
        token_count=tokens,
        role=None,
        speaker=None,
        metadata={"speakers": [speaker]},
    )


def _extend(episode: ChunkData, message: ChunkData, line: str, tokens: int) -> ChunkData:
    speakers = _speakers(episode)
    speaker = message_speaker(message)
    if speaker not in speakers:
        speakers.append(speaker)
    return replace(
        episode,
        content=f"{episode.content}\n{line}",
        token_count=episode.token_count + tokens,
        message_ids=(*episode.message_ids, *message.message_ids),
        last_seq=message.last_seq,
        started_at=min(episode.started_at, message.started_at),
        ended_at=max(episode.ended_at, message.ended_at),
        metadata={**episode.metadata, "speakers": speakers},
    )


class EpisodeProcessor:
    """The M1 layer for the pipeline."""

    layer = "m1"
    operation = "m1_operation"
    local = True  # packing messages into episodes is pure computation

    def __init__(self, policy: EpisodePolicy, *, embed_delay: timedelta = timedelta(0)) -> None:
        """``embed_delay``: how long the open episode's embedding waits for more messages
        (every growth restarts the wait; closing it ends the wait). Zero embeds each growth."""
        self.policy = policy
        self.embed_delay = embed_delay

    async def load(self, db: AsyncSession, progress: Progress) -> EpisodeRow | None:
        if progress.processed_seq == 0:
            return None
        return await EpisodeRepository(db).last_of_session(progress.session_id)

    async def compute(
        self, messages: Sequence[ChunkData], context: EpisodeRow | None
    ) -> PackedEpisodes:
        open_episode = None if context is None else episode_chunk(context)
        packed = pack_episodes(messages, open_episode, self.policy)
        if context is None:
            return PackedEpisodes(tuple(packed), None)
        if packed[0].last_seq == context.last_seq:
            return PackedEpisodes(tuple(packed[1:]), None)
        return PackedEpisodes(tuple(packed), context.id, context.last_seq)

    async def store(self, db: AsyncSession, progress: Progress, result: PackedEpisodes) -> None:
        """Write the episodes, then link the session's facts to them (lock order: the user's
        fact lock before memory rows, memory rows before their embedding jobs).

        The open episode's embedding is held back by ``embed_delay``, so a growing episode is
        embedded once it stops growing (or closes), not at every message."""
        facts = FactRepository(db)
        await facts.lock_user(progress.user_id)
        repository = EpisodeRepository(db)
        episodes = list(result.episodes)
        if result.reopened is not None:
            assert result.reopened_last_seq is not None
            await repository.replace(result.reopened, result.reopened_last_seq, episodes.pop(0))
        await repository.insert(episodes)
        await facts.link_episodes(progress.user_id, progress.session_id)
        if self.embed_delay > timedelta(0) and result.episodes:
            await JobRepository(db).hold_back_open_episode(progress.session_id, self.embed_delay)
