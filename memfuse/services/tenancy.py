"""Resolve user, agent and session names to one :class:`MemoryScope` in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.db.models import Agent, Session, User
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
from memfuse.types import AgentRow, FilterIds, MemoryScope, Page, SessionRow, UserRow
from memfuse.validation import check_metadata, validate_filter_name, validate_name


def _user_row(user: User) -> UserRow:
    return UserRow(user.id, user.name, user.metadata_, user.created_at, user.updated_at)


def _agent_row(agent: Agent) -> AgentRow:
    return AgentRow(
        agent.id, agent.user_id, agent.name, agent.metadata_, agent.created_at, agent.updated_at
    )


def _session_row(session: Session) -> SessionRow:
    return SessionRow(
        session.id,
        session.user_id,
        session.agent_id,
        session.name,
        session.message_count,
        session.metadata_,
        session.created_at,
        session.updated_at,
    )


@asynccontextmanager
async def _renaming(kind: str, changes: Mapping[str, Any]) -> AsyncIterator[None]:
    """A rename that a concurrent rename to the same name beat to the unique index is a
    :class:`ConflictError`, as the check before it would have said."""
    try:
        yield
    except IntegrityError as error:
        if not isinstance(error.orig, asyncpg.UniqueViolationError) and "unique" not in str(error):
            raise
        raise ConflictError(f"{kind} {changes.get('name')!r} already exists") from None


def _changes(name: object, metadata: Mapping[str, Any] | None, *, kind: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = validate_name(kind, name)
    if metadata is not None:
        changes["metadata_"] = check_metadata(metadata)
    return changes


DEFAULT_AGENT = "default"

RESOLVE_ATTEMPTS = 5
"""Transactions ``resolve`` tries before giving up on a user or session deleted meanwhile."""


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
        await self.delete_session_by_id(scope.user_id, scope.session_id, label=scope.session)

    async def delete_session_by_id(
        self, user_id: uuid.UUID, session_id: uuid.UUID, *, label: str | None = None
    ) -> None:
        """:meth:`delete_session` of a session given by id (``label`` names it in errors)."""
        async with self._session_factory.begin() as db:
            await UserRepository(db).lock([user_id])
            sessions = SessionRepository(db)
            if not await sessions.lock(user_id, session_id, exclusive=True):
                raise NotFoundError(f"session {label or session_id!s} does not exist")
            await ProgressRepository(db).lock(user_id=user_id, session_id=session_id)
            facts = FactRepository(db)
            await facts.lock_user(user_id)
            await facts.delete_for_session(user_id, session_id)
            await sessions.delete(user_id, session_id)
        self._after_commit(user_id)

    async def delete_user(self, scope: MemoryScope) -> None:
        """Delete a user and everything stored for them."""
        await self.delete_user_by_id(scope.user_id, label=scope.user)

    async def delete_user_by_id(self, user_id: uuid.UUID, *, label: str | None = None) -> None:
        """:meth:`delete_user` of a user given by id (``label`` names it in errors)."""
        async with self._session_factory.begin() as db:
            users = UserRepository(db)
            if not await users.lock([user_id], exclusive=True):
                raise NotFoundError(f"user {label or user_id!s} does not exist")
            await users.delete(user_id)
        self._after_commit(user_id)

    # -- Users, agents and sessions by id (the REST server's resources) --

    async def create_user(self, name: object, metadata: Mapping[str, Any] | None = None) -> UserRow:
        """A new user; :class:`ConflictError` if the name is taken."""
        changes = _changes(name, metadata or {}, kind="name")
        async with self._session_factory.begin() as db:
            user = await UserRepository(db).create(changes["name"], changes["metadata_"])
        if user is None:
            raise ConflictError(f"user {changes['name']!r} already exists")
        return _user_row(user)

    async def get_user(self, user_id: uuid.UUID) -> UserRow | None:
        async with self._session_factory() as db:
            user = await UserRepository(db).get(user_id)
        return None if user is None else _user_row(user)

    async def find_user(self, name: object) -> UserRow | None:
        checked = validate_name("name", name)
        async with self._session_factory() as db:
            user = await UserRepository(db).get_by_name(checked)
        return None if user is None else _user_row(user)

    async def list_users(self, page: Page, *, only: uuid.UUID | None = None) -> list[UserRow]:
        async with self._session_factory() as db:
            return [_user_row(user) for user in await UserRepository(db).list_page(page, only=only)]

    async def update_user(
        self, user_id: uuid.UUID, *, name: object = None, metadata: Mapping[str, Any] | None = None
    ) -> UserRow:
        """Rename a user or replace its metadata; memory rows keep pointing at it by id."""
        changes = _changes(name, metadata, kind="name")
        async with _renaming("user", changes), self._session_factory.begin() as db:
            users = UserRepository(db)
            if "name" in changes:
                taken = await users.get_by_name(changes["name"])
                if taken is not None and taken.id != user_id:
                    raise ConflictError(f"user {changes['name']!r} already exists")
            user = await users.update(user_id, changes)
        if user is None:
            raise NotFoundError(f"user {user_id} does not exist")
        self._after_commit(user_id)
        return _user_row(user)

    async def get_or_create_agent(
        self,
        name: object,
        *,
        user_id: uuid.UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[AgentRow, bool]:
        """The agent called ``name`` (the user's own, or shared for ``user_id`` None), created
        if missing; whether it was created. Concurrent callers get the same row."""
        changes = _changes(name, metadata or {}, kind="name")
        for _ in range(RESOLVE_ATTEMPTS):
            try:
                async with self._session_factory.begin() as db:
                    if user_id is not None and not await UserRepository(db).lock([user_id]):
                        raise NotFoundError(f"user {user_id} does not exist")
                    agent, created = await AgentRepository(db).get_or_create_named(
                        user_id, changes["name"], changes["metadata_"]
                    )
                return _agent_row(agent), created
            except DeletedConcurrentlyError:
                continue
        raise ConflictError(f"agent {changes['name']!r} was deleted during each attempt")

    async def get_agent(self, agent_id: uuid.UUID) -> AgentRow | None:
        async with self._session_factory() as db:
            agent = await AgentRepository(db).get(agent_id)
        return None if agent is None else _agent_row(agent)

    async def find_agents(
        self, *, name: object = None, visible_to: uuid.UUID | None = None
    ) -> list[AgentRow]:
        """Shared agents and ``visible_to``'s own, optionally of one name."""
        checked = validate_filter_name("name", name)
        async with self._session_factory() as db:
            agents = await AgentRepository(db).find(name=checked, visible_to=visible_to)
        return [_agent_row(agent) for agent in agents]

    async def update_agent(
        self, agent_id: uuid.UUID, *, name: object = None, metadata: Mapping[str, Any] | None = None
    ) -> AgentRow:
        changes = _changes(name, metadata, kind="name")
        async with _renaming("agent", changes), self._session_factory.begin() as db:
            agents = AgentRepository(db)
            current = await agents.get(agent_id)
            if current is None:
                raise NotFoundError(f"agent {agent_id} does not exist")
            if "name" in changes and changes["name"] != current.name:
                clash = await agents.find(
                    name=changes["name"],
                    visible_to=current.user_id,
                    shared_only=current.user_id is None,
                )
                if any(agent.user_id == current.user_id for agent in clash):
                    raise ConflictError(f"agent {changes['name']!r} already exists")
            agent = await agents.update(agent_id, changes)
        if agent is None:
            raise NotFoundError(f"agent {agent_id} does not exist")
        return _agent_row(agent)

    async def delete_agent(self, agent_id: uuid.UUID) -> None:
        """Delete an agent no session talks to; :class:`ConflictError` while one does (deleting
        it would delete those sessions' memory, perhaps of many users)."""
        async with self._session_factory.begin() as db:
            agents = AgentRepository(db)
            if await agents.lock(agent_id, exclusive=True) is None:
                raise NotFoundError(f"agent {agent_id} does not exist")
            if await agents.in_use(agent_id):
                raise ConflictError(
                    f"agent {agent_id} has sessions; delete them (or their users) first"
                )
            if not await agents.delete(agent_id):
                raise NotFoundError(f"agent {agent_id} does not exist")

    async def create_session(
        self,
        user_id: uuid.UUID,
        agent_id: uuid.UUID,
        *,
        name: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionRow:
        """A new session of the user with an agent of theirs or a shared one; without a name,
        one is made up. :class:`ConflictError` if the user has a session of that name."""
        changes = _changes(name, metadata or {}, kind="name")
        session_name = changes.get("name") or f"session-{uuid.uuid4()}"
        async with self._session_factory.begin() as db:
            if not await UserRepository(db).lock([user_id]):
                raise NotFoundError(f"user {user_id} does not exist")
            agent = await AgentRepository(db).lock(agent_id)  # a deletion waits, or won
            if agent is None or agent.user_id not in (None, user_id):
                raise NotFoundError(f"agent {agent_id} does not exist")
            session = await SessionRepository(db).create(
                user_id, agent_id, session_name, changes["metadata_"]
            )
        if session is None:
            raise ConflictError(f"session {session_name!r} already exists for this user")
        return _session_row(session)

    async def get_session(self, session_id: uuid.UUID) -> SessionRow | None:
        """A session by id, whoever owns it: check its ``user_id`` before showing it."""
        async with self._session_factory() as db:
            session = await SessionRepository(db).get_any(session_id)
        return None if session is None else _session_row(session)

    async def find_sessions(
        self,
        *,
        user_id: uuid.UUID | None,
        agent_id: uuid.UUID | None = None,
        name: object = None,
        page: Page,
    ) -> list[SessionRow]:
        checked = validate_filter_name("name", name)
        async with self._session_factory() as db:
            sessions = await SessionRepository(db).find(
                user_id=user_id, agent_id=agent_id, name=checked, page=page
            )
        return [_session_row(session) for session in sessions]

    async def session_names(self, session_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        async with self._session_factory() as db:
            return await SessionRepository(db).names(session_ids)

    async def update_session(
        self,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        *,
        name: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionRow:
        changes = _changes(name, metadata, kind="name")
        async with _renaming("session", changes), self._session_factory.begin() as db:
            sessions = SessionRepository(db)
            if "name" in changes:
                taken = await sessions.get_by_name(user_id, changes["name"])
                if taken is not None and taken.id != session_id:
                    raise ConflictError(f"session {changes['name']!r} already exists")
            session = await sessions.update(user_id, session_id, changes)
        if session is None:
            raise NotFoundError(f"session {session_id} does not exist")
        return _session_row(session)

    async def scope_of_session(self, session_id: uuid.UUID) -> MemoryScope:
        """The full scope of a session given by id; :class:`NotFoundError` if it is gone."""
        async with self._session_factory() as db:
            found = await SessionRepository(db).names_of(session_id)
        if found is None:
            raise NotFoundError(f"session {session_id} does not exist")
        session, user, agent = found
        return MemoryScope(
            user_id=session.user_id,
            agent_id=session.agent_id,
            session_id=session.id,
            user=user,
            agent=agent,
            session=session.name,
        )

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
