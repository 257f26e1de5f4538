"""Users, agents and sessions: get-or-create by name, safe under concurrent callers.

Repositories never commit; the service that owns the unit of work does. Every lookup below the
user level takes the owning ``user_id``, so one tenant's names never resolve to another's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import Agent, Session, User


class UserRepository:
    """Rows of ``users``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_name(self, name: str) -> User | None:
        result = await self.session.execute(select(User).where(User.name == name))
        return result.scalar_one_or_none()

    async def get_or_create(self, name: str) -> User:
        """The user called ``name``, created if missing; concurrent callers get the same row."""
        await self.session.execute(
            insert(User).values(name=name).on_conflict_do_nothing(index_elements=[User.name])
        )
        user = await self.get_by_name(name)
        assert user is not None  # inserted above or by a concurrent caller
        return user

    async def lock(
        self, user_ids: Sequence[uuid.UUID], *, exclusive: bool = False
    ) -> set[uuid.UUID]:
        """Lock users until commit, in id order; returns those that exist.

        Lock order everywhere in memfuse: user, then session, then layer progress, then the
        user's fact lock. Writers take a shared key lock on the user, so deleting a user
        (``exclusive``) waits for them instead of deadlocking with their foreign-key checks.
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
        await self.session.execute(
            insert(Agent)
            .values(user_id=user_id, name=name)
            .on_conflict_do_nothing(index_elements=[Agent.user_id, Agent.name])
        )
        agent = await self.get_by_name(user_id, name)
        assert agent is not None
        return agent


class SessionRepository:
    """Rows of ``sessions``, always within one user; owns the per-session message counter."""

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

    async def get_or_create(self, user_id: uuid.UUID, agent_id: uuid.UUID, name: str) -> Session:
        await self.session.execute(
            insert(Session)
            .values(user_id=user_id, agent_id=agent_id, name=name)
            .on_conflict_do_nothing(index_elements=[Session.user_id, Session.name])
        )
        found = await self.get_by_name(user_id, name)
        assert found is not None
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

    async def allocate_sequence(self, user_id: uuid.UUID, session_id: uuid.UUID, count: int) -> int:
        """Reserve ``count`` message numbers; returns the first. Numbers never repeat.

        The counter row is locked until the caller's transaction ends, so concurrent writers
        to one session number their messages in commit order with no gaps.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        result = await self.session.execute(
            update(Session)
            .where(Session.id == session_id, Session.user_id == user_id)
            .values(message_count=Session.message_count + count)
            .returning(Session.message_count)
        )
        last = result.scalar_one_or_none()
        if last is None:
            raise LookupError(f"session {session_id} does not exist for this user")
        return int(last) - count + 1
