"""Reading the derived layers: pages of a user's M1 episodes and M2 facts.

Every read is bound to the caller's user; ``all_sessions`` widens it to the user's other
sessions, never to another user.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.repositories.episodes import EpisodeRepository
from memfuse.repositories.facts import FactRepository
from memfuse.types import EpisodeRow, FactRow, MemoryScope, Page


class ListingService:
    """Pages of episodes and facts, newest or oldest first."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory

    async def episodes(
        self, scope: MemoryScope, page: Page, *, all_sessions: bool
    ) -> list[EpisodeRow]:
        async with self._session_factory() as db:
            return await EpisodeRepository(db).page(
                scope.user_id, None if all_sessions else scope.session_id, page
            )

    async def facts(
        self, scope: MemoryScope, page: Page, *, all_sessions: bool, include_superseded: bool
    ) -> list[FactRow]:
        async with self._session_factory() as db:
            return await FactRepository(db).page(
                scope.user_id,
                None if all_sessions else scope.session_id,
                page,
                include_superseded=include_superseded,
            )
