"""Resolve user, agent and session names to one :class:`MemoryScope` in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.errors import ConflictError, NotFoundError, ValidationError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.progress import ProgressRepository
from memfuse.repositories.tenancy import (
    AgentRepository,
    DeletedConcurrentlyError,
    SessionRepository,
    UserRepository,
)
from memfuse.services.changes import AfterCommit
from memfuse.types import MemoryScope
from memfuse.validation import validate_filter_name, validate_name

DEFAULT_AGENT = "default"

RESOLVE_ATTEMPTS = 5
"""Transactions ``resolve`` tries before giving up on a user or session deleted meanwhile."""


@dataclass(frozen=True, slots=True)
class FilterIds:
    """The ids a query narrows to; ``None`` means not narrowed."""

    agent_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None


class TenancyService:
    """Gets or creates users, agents and sessions by name."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        monitor: PerformanceMonitor,
        *,
        after_commit: AfterCommit,
    ) -> None:
        self._session_factory = session_factory
        self._monitor = monitor
        self._after_commit = after_commit

    async def resolve(
        self, user: str, agent: str | None = None, session: str | None = None
    ) -> MemoryScope:
        """The scope for these names; a missing agent is the default one, a missing session new.

        One transaction gets or creates the user, then the agent, then the session, and holds
        the user and session rows with a shared key lock (as writers do) until it commits: a
        concurrent ``delete_user`` or ``delete_session`` either committed before (the row is
        then created anew) or waits for this commit, so the scope exists when this returns.
        A row deleted between its insert and its locking read restarts the transaction, up to
        :data:`RESOLVE_ATTEMPTS` times; then :class:`~memfuse.errors.ConflictError` is raised.
        """
        agent_name = agent if agent is not None else DEFAULT_AGENT
        session_name = session if session is not None else f"session-{uuid.uuid4()}"
        for field, value in (("user", user), ("agent", agent_name), ("session", session_name)):
            validate_name(field, value)
        with self._monitor.track_operation("tenancy_resolve"):
            for _ in range(RESOLVE_ATTEMPTS):
                try:
                    return await self._resolve_once(user, agent_name, session_name)
                except DeletedConcurrentlyError:
                    continue  # the deletion committed: the next attempt creates the row anew
        raise ConflictError(
            f"user {user!r} or its session {session_name!r} was deleted by a concurrent call "
            f"during each of {RESOLVE_ATTEMPTS} attempts to resolve them; nothing was created, "
            "and retrying is safe"
        )

    async def _resolve_once(self, user: str, agent_name: str, session_name: str) -> MemoryScope:
        """One transaction of :meth:`resolve`, in the documented lock order: user, session."""
        async with self._session_factory.begin() as db:
            user_row = await UserRepository(db).get_or_create(user)
            agent_row = await AgentRepository(db).get_or_create(user_row.id, agent_name)
            session_row = await SessionRepository(db).get_or_create(
                user_row.id, agent_row.id, session_name
            )
            if session_row.agent_id != agent_row.id:
                raise ValidationError(
                    f"session {session_name!r} of user {user!r} belongs to another agent"
                )
        return MemoryScope(
            user_id=user_row.id,
            agent_id=agent_row.id,
            session_id=session_row.id,
            user=user,
            agent=agent_name,
            session=session_name,
        )

    async def delete_session(self, scope: MemoryScope) -> None:
        """Delete a session with its messages, episodes and facts.

        Facts of the user's other sessions that this session's facts had superseded are
        live again afterwards.
        """
        async with self._session_factory.begin() as db:
            await UserRepository(db).lock([scope.user_id])
            sessions = SessionRepository(db)
            if not await sessions.lock(scope.user_id, scope.session_id, exclusive=True):
                raise NotFoundError(f"session {scope.session!r} does not exist")
            await ProgressRepository(db).lock(user_id=scope.user_id, session_id=scope.session_id)
            facts = FactRepository(db)
            await facts.lock_user(scope.user_id)
            await facts.delete_for_session(scope.user_id, scope.session_id)
            await sessions.delete(scope.user_id, scope.session_id)
        self._after_commit(scope.user_id)

    async def delete_user(self, scope: MemoryScope) -> None:
        """Delete a user and everything stored for them."""
        async with self._session_factory.begin() as db:
            users = UserRepository(db)
            if not await users.lock([scope.user_id], exclusive=True):
                raise NotFoundError(f"user {scope.user!r} does not exist")
            await users.delete(scope.user_id)
        self._after_commit(scope.user_id)

    async def find_ids(
        self, user_id: uuid.UUID, *, agent: str | None, session: str | None
    ) -> FilterIds | None:
        """The ids of the user's named agent and session; ``None`` if one does not exist.

        Names are looked up within ``user_id`` only: another user's agent or session of the
        same name is never found.
        """
        for kind, value in (("agent", agent), ("session", session)):
            validate_filter_name(kind, value)
        if agent is None and session is None:
            return FilterIds()
        agent_id = session_id = None
        async with self._session_factory() as db:
            if agent is not None:
                agent_row = await AgentRepository(db).get_by_name(user_id, agent)
                if agent_row is None:
                    return None
                agent_id = agent_row.id
            if session is not None:
                session_row = await SessionRepository(db).get_by_name(user_id, session)
                if session_row is None:
                    return None
                session_id = session_row.id
        return FilterIds(agent_id=agent_id, session_id=session_id)
