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
from memfuse.validation import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from memfuse.validation import validate_name as validate_name

DEFAULT_AGENT = "default"

RESOLVE_ATTEMPTS = 5
"""Transactions ``resolve`` tries before giving up on a user or session deleted meanwhile."""


@dataclass(frozen=True, slots=True)
class MemoryScope:
    """The ids every memory read and write is bound to; ``user_id`` is never optional."""

    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    user: str
    agent: str
    session: str


class TenancyService:
    """Gets or creates users, agents and sessions by name."""

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], monitor: PerformanceMonitor
    ) -> None:
        self._session_factory = session_factory
        self._monitor = monitor

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

    async def delete_user(self, scope: MemoryScope) -> None:
        """Delete a user and everything stored for them."""
        async with self._session_factory.begin() as db:
            users = UserRepository(db)
            if not await users.lock([scope.user_id], exclusive=True):
                raise NotFoundError(f"user {scope.user!r} does not exist")
            await users.delete(scope.user_id)
