"""SQL for M1 episodes. Reads take the owning ``user_id``; repositories never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Row, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import Episode
from memfuse.repositories.paging import paginate
from memfuse.types import ChunkData, EpisodeRow, Page

_TABLE = cast(Table, Episode.__table__)


def _columns(chunk: ChunkData) -> dict[str, Any]:
    """The columns of an episode made of ``chunk``."""
    return {
        "user_id": chunk.user_id,
        "agent_id": chunk.agent_id,
        "session_id": chunk.session_id,
        "content": chunk.content,
        "token_count": chunk.token_count,
        "message_ids": list(chunk.message_ids),
        "first_seq": chunk.first_seq,
        "last_seq": chunk.last_seq,
        "started_at": chunk.started_at,
        "ended_at": chunk.ended_at,
        "metadata": dict(chunk.metadata),
    }


_COLUMNS = (
    Episode.id,
    Episode.user_id,
    Episode.agent_id,
    Episode.session_id,
    Episode.content,
    Episode.token_count,
    Episode.message_ids,
    Episode.first_seq,
    Episode.last_seq,
    Episode.started_at,
    Episode.ended_at,
    Episode.metadata_.label("metadata"),
    Episode.created_at,
    Episode.embedding.is_not(None).label("embedded"),
)


def _row(row: Row[Any]) -> EpisodeRow:
    values = dict(row._mapping)
    values["message_ids"] = tuple(values["message_ids"])
    return EpisodeRow(**values)


class EpisodeRepository:
    """Rows of ``episodes``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def last_of_session(self, session_id: uuid.UUID) -> EpisodeRow | None:
        """The session's latest episode: the one new messages may still extend."""
        result = await self.session.execute(
            select(*_COLUMNS)
            .where(Episode.session_id == session_id)
            .order_by(Episode.first_seq.desc())
            .limit(1)
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def insert(self, episodes: Sequence[ChunkData]) -> None:
        if episodes:
            await self.session.execute(insert(_TABLE), [_columns(chunk) for chunk in episodes])

    async def replace(self, episode_id: uuid.UUID, last_seq: int, episode: ChunkData) -> None:
        """Write over an episode that grew; the new content is queued for embedding.

        ``last_seq`` is where the episode ended when it was read: if it was deleted or
        changed since, this raises rather than silently dropping the messages it gained.
        """
        result = await self.session.execute(
            update(_TABLE)
            .where(_TABLE.c.id == episode_id, _TABLE.c.last_seq == last_seq)
            .values(**_columns(episode))
            .returning(_TABLE.c.id)
        )
        if result.scalar_one_or_none() is None:
            raise RuntimeError(f"episode {episode_id} changed while it was being extended")

    async def page(
        self, user_id: uuid.UUID, session_id: uuid.UUID | None, page: Page
    ) -> list[EpisodeRow]:
        """A page of the user's episodes, of one session or of all, by time."""
        query = select(*_COLUMNS).where(Episode.user_id == user_id)
        if session_id is not None:
            query = query.where(Episode.session_id == session_id)
        order = [Episode.started_at, Episode.session_id, Episode.first_seq]
        result = await self.session.execute(paginate(query, order, page))
        return [_row(row) for row in result]

    async def delete_for_session(self, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
        await self.session.execute(
            delete(Episode).where(Episode.user_id == user_id, Episode.session_id == session_id)
        )
