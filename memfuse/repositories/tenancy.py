"""Users, agents and sessions: get-or-create by name, safe under concurrent callers.

Repositories never commit; the service that owns the unit of work does. Every lookup below the
user level takes the owning ``user_id``, so one tenant's names never resolve to another's rows.

``get_or_create`` of a user or a session returns the row holding a shared key lock
(``FOR KEY SHARE``) until the transaction ends, as writers hold it: a concurrent deletion of
that user or session waits for the caller's commit. A row that a concurrent transaction deleted
between the insert (which does nothing, and locks nothing, when the row exists) and the locking
read raises :class:`DeletedConcurrentlyError`; the transaction can then be retried as a whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import Agent, Session, User
from memfuse.errors import ConflictError
from memfuse.repositories.paging import paginate
from memfuse.types import Page


class DeletedConcurrentlyError(ConflictError):
    """A row being got-or-created was deleted by a concurrent transaction that committed
    after the insert found it; nothing was created, and retrying the transaction is safe."""


class UserRepository:
    """Rows of ``users``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, name: str) -> User | None:
        result = await self.session.execute(select(User).where(User.name == name))
        return result.scalar_one_or_none()

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def create(self, name: str, metadata: dict[str, Any]) -> User | None:
        """A new user; ``None`` if the name is taken."""
        result = await self.session.execute(
            insert(User)
            .values(name=name, metadata_=metadata)
            .on_conflict_do_nothing(index_elements=[User.name])
            .returning(User)
        )
        return result.scalar_one_or_none()

    async def list_page(self, page: Page, *, only: uuid.UUID | None = None) -> list[User]:
        query = select(User) if only is None else select(User).where(User.id == only)
        result = await self.session.execute(paginate(query, [User.created_at, User.id], page))
        return list(result.scalars())

    async def update(self, user_id: uuid.UUID, changes: dict[str, Any]) -> User | None:
        """Change ``name``/``metadata_``; ``None`` if the user does not exist."""
        if not changes:
            return await self.get(user_id)
        result = await self.session.execute(
            update(User).where(User.id == user_id).values(changes).returning(User)
        )
        return result.scalar_one_or_none()

    async def get_or_create(self, name: str) -> User:
        """The user called ``name``, created if missing; concurrent callers get the same row.

        The row is held with a shared key lock until the transaction ends, so deleting the user
        waits for the caller. Raises :class:`DeletedConcurrentlyError` if a concurrent
        deletion of the user committed after the insert found the row.
        """
        await self.session.execute(
            insert(User).values(name=name).on_conflict_do_nothing(index_elements=[User.name])
        )
        query = select(User).where(User.name == name)
        result = await self.session.execute(query.with_for_update(read=True, key_share=True))
        user = result.scalar_one_or_none()
        if user is None:
            raise DeletedConcurrentlyError(f"user {name!r} was deleted by a concurrent call")
        return user

    async def lock(
        self, user_ids: Sequence[uuid.UUID], *, exclusive: bool = False
    ) -> set[uuid.UUID]:
        """Lock users until commit, in id order; returns those that exist.

        Lock order everywhere in memfuse: user, then session, then layer progress, then the
        user's fact lock. Writers (and ``get_or_create``) take a shared key lock on the user, so
        deleting a user (``exclusive``) waits for them instead of deadlocking with their
        foreign-key checks.
        """
        if not user_ids:
            return set()
        query = select(User.id).where(User.id.in_(user_ids)).order_by(User.id)
        query = (
            query.with_for_update()
            if exclusive
            else query.with_for_update(read=True, key_share=True)
        )
        return set((await self.session.execute(query)).scalars())

    async def delete(self, user_id: uuid.UUID) -> bool:
        """Delete a user; the database cascades to every row of theirs."""
        result = await self.session.execute(
            delete(User).where(User.id == user_id).returning(User.id)
        )
        return result.scalar_one_or_none() is not None


class AgentRepository:
    """Rows of ``agents``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, user_id: uuid.UUID, name: str) -> Agent | None:
        result = await self.session.execute(
            select(Agent).where(Agent.user_id == user_id, Agent.name == name)
        )
        return result.scalar_one_or_none()

    async def get_or_create(self, user_id: uuid.UUID, name: str) -> Agent:
        """The user's agent called ``name``, created if missing.

        Agents are deleted only with their user: a caller holding the user's lock (as
        :meth:`UserRepository.get_or_create` leaves it) always finds the row. Without it,
        raises :class:`DeletedConcurrentlyError` if the user's deletion removed it meanwhile.
        """
        await self.session.execute(
            insert(Agent)
            .values(user_id=user_id, name=name)
            .on_conflict_do_nothing(index_elements=[Agent.user_id, Agent.name])
        )
        agent = await self.get_by_name(user_id, name)
        if agent is None:
            raise DeletedConcurrentlyError(f"agent {name!r} was deleted by a concurrent call")
        return agent

    async def get(self, agent_id: uuid.UUID) -> Agent | None:
        return await self.session.get(Agent, agent_id)

    async def lock(self, agent_id: uuid.UUID, *, exclusive: bool = False) -> Agent | None:
        """The agent, locked until commit: shared key lock to start a session with it
        (deleting it then waits), ``exclusive`` to delete it (starting a session then waits,
        and finds it gone)."""
        query = select(Agent).where(Agent.id == agent_id)
        query = (
            query.with_for_update()
            if exclusive
            else query.with_for_update(read=True, key_share=True)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def get_or_create_named(
        self, user_id: uuid.UUID | None, name: str, metadata: dict[str, Any]
    ) -> tuple[Agent, bool]:
        """The agent called ``name`` of ``user_id`` (or shared, for ``None``), created with
        ``metadata`` if missing; whether it was created."""
        statement = insert(Agent).values(user_id=user_id, name=name, metadata_=metadata)
        if user_id is not None:
            statement = statement.on_conflict_do_nothing(index_elements=[Agent.user_id, Agent.name])
        else:
            statement = statement.on_conflict_do_nothing(
                index_elements=[Agent.name], index_where=Agent.user_id.is_(None)
            )
        result = await self.session.execute(statement.returning(Agent))
        created = result.scalar_one_or_none()
        if created is not None:
            return created, True
        found = await self.find(name=name, visible_to=user_id, shared_only=user_id is None)
        if not found:
            raise DeletedConcurrentlyError(f"agent {name!r} was deleted by a concurrent call")
        return found[0], False

    async def find(
        self,
        *,
        name: str | None = None,
        visible_to: uuid.UUID | None = None,
        shared_only: bool = False,
    ) -> list[Agent]:
        """Agents by name: shared ones, and ``visible_to``'s own (listed first) unless
        ``shared_only``."""
        query = select(Agent)
        if shared_only or visible_to is None:
            query = query.where(Agent.user_id.is_(None))
        else:
            query = query.where(or_(Agent.user_id.is_(None), Agent.user_id == visible_to))
        if name is not None:
            query = query.where(Agent.name == name)
        query = query.order_by(Agent.user_id.is_(None), Agent.created_at, Agent.id)
        return list((await self.session.execute(query)).scalars())

    async def update(self, agent_id: uuid.UUID, changes: dict[str, Any]) -> Agent | None:
        if not changes:
            return await self.get(agent_id)
        result = await self.session.execute(
            update(Agent).where(Agent.id == agent_id).values(changes).returning(Agent)
        )
        return result.scalar_one_or_none()

    async def in_use(self, agent_id: uuid.UUID) -> bool:
        """Whether a session talks to this agent."""
        result = await self.session.execute(
            select(Session.id).where(Session.agent_id == agent_id).limit(1)
        )
        return result.scalar_one_or_none() is not None

    async def delete(self, agent_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(Agent).where(Agent.id == agent_id).returning(Agent.id)
        )
        return result.scalar_one_or_none() is not None


class SessionRepository:
    """Rows of ``sessions``, always within one user.

    The per-session message counter (``message_count``) is advanced only by the M0 writer,
    inside the ``write_messages`` SQL function (migration 0006).
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, user_id: uuid.UUID, name: str) -> Session | None:
        result = await self.session.execute(
            select(Session).where(Session.user_id == user_id, Session.name == name)
        )
        return result.scalar_one_or_none()

    async def get(self, user_id: uuid.UUID, session_id: uuid.UUID) -> Session | None:
        result = await self.session.execute(
            select(Session).where(Session.user_id == user_id, Session.id == session_id)
        )
        return result.scalar_one_or_none()

    async def create(
        self, user_id: uuid.UUID, agent_id: uuid.UUID, name: str, metadata: dict[str, Any]
    ) -> Session | None:
        """A new session; ``None`` if the user already has one of this name."""
        result = await self.session.execute(
            insert(Session)
            .values(user_id=user_id, agent_id=agent_id, name=name, metadata_=metadata)
            .on_conflict_do_nothing(index_elements=[Session.user_id, Session.name])
            .returning(Session)
        )
        return result.scalar_one_or_none()

    async def find(
        self,
        *,
        user_id: uuid.UUID | None,
        agent_id: uuid.UUID | None = None,
        name: str | None = None,
        page: Page,
    ) -> list[Session]:
        """Sessions of ``user_id`` (of every user for ``None``), by agent and name."""
        query = select(Session)
        if user_id is not None:
            query = query.where(Session.user_id == user_id)
        if agent_id is not None:
            query = query.where(Session.agent_id == agent_id)
        if name is not None:
            query = query.where(Session.name == name)
        result = await self.session.execute(paginate(query, [Session.created_at, Session.id], page))
        return list(result.scalars())

    async def names_of(self, session_id: uuid.UUID) -> tuple[Session, str, str] | None:
        """A session by id with its user's and agent's names, in one statement."""
        result = await self.session.execute(
            select(Session, User.name, Agent.name)
            .join(User, User.id == Session.user_id)
            .join(Agent, Agent.id == Session.agent_id)
            .where(Session.id == session_id)
        )
        row = result.one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    async def get_any(self, session_id: uuid.UUID) -> Session | None:
        """A session by id alone: callers check its ``user_id`` against who is asking."""
        return await self.session.get(Session, session_id)

    async def names(self, session_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not session_ids:
            return {}
        result = await self.session.execute(
            select(Session.id, Session.name).where(Session.id.in_(sorted(set(session_ids))))
        )
        return {row.id: row.name for row in result}

    async def update(
        self, user_id: uuid.UUID, session_id: uuid.UUID, changes: dict[str, Any]
    ) -> Session | None:
        if not changes:
            return await self.get(user_id, session_id)
        result = await self.session.execute(
            update(Session)
            .where(Session.user_id == user_id, Session.id == session_id)
            .values(changes)
            .returning(Session)
        )
        return result.scalar_one_or_none()

    async def get_or_create(self, user_id: uuid.UUID, agent_id: uuid.UUID, name: str) -> Session:
        """The user's session called ``name``, created (with ``agent_id``) if missing.

        An existing session keeps its own agent, which may differ from ``agent_id``. The row
        is held with a shared key lock until the transaction ends, so deleting the session
        waits for the caller. Raises :class:`DeletedConcurrentlyError` if a concurrent
        deletion of the session committed after the insert found the row.
        """
        await self.session.execute(
            insert(Session)
            .values(user_id=user_id, agent_id=agent_id, name=name)
            .on_conflict_do_nothing(index_elements=[Session.user_id, Session.name])
        )
        query = select(Session).where(Session.user_id == user_id, Session.name == name)
        result = await self.session.execute(query.with_for_update(read=True, key_share=True))
        found = result.scalar_one_or_none()
        if found is None:
            raise DeletedConcurrentlyError(f"session {name!r} was deleted by a concurrent call")
        return found

    async def lock(
        self, user_id: uuid.UUID, session_id: uuid.UUID, *, exclusive: bool = False
    ) -> bool:
        """Lock a session of the user until commit (shared key lock unless ``exclusive``).

        Layer steps hold the shared lock while they write, so deleting the session waits for
        them. Returns whether the session exists.
        """
        query = select(Session.id).where(Session.user_id == user_id, Session.id == session_id)
        query = (
            query.with_for_update()
            if exclusive
            else query.with_for_update(read=True, key_share=True)
        )
        return (await self.session.execute(query)).scalar_one_or_none() is not None

    async def delete(self, user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
        """Delete a session; the database cascades to its messages, episodes and facts."""
        result = await self.session.execute(
            delete(Session)
            .where(Session.user_id == user_id, Session.id == session_id)
            .returning(Session.id)
        )
        return result.scalar_one_or_none() is not None


async def lock_user_and_session(
    session: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID
) -> bool:
    """Shared key locks on a user, then one of its sessions: the first two steps of the
    writers' lock order. ``False`` if either was deleted."""
    if not await UserRepository(session).lock([user_id]):
        return False
    return await SessionRepository(session).lock(user_id, session_id)
