"""SQL for M0 rows. Every read takes the owning ``user_id``; repositories never commit."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Row,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import DateTime

from memfuse.db.models import Message, Session
from memfuse.repositories.paging import paginate
from memfuse.types import MessageRow, Page


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A row to insert; ``created_at`` of ``None`` means the transaction's time."""

    id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    role: str
    name: str | None
    content: str
    token_count: int
    metadata: dict[str, Any]
    created_at: datetime | None


_NEW_FIELDS = tuple(field.name for field in fields(NewMessage))
"""Parameter names of a row to insert; ``asdict`` would deep-copy every metadata dict."""

_COLUMNS = (
    Message.id,
    Message.user_id,
    Message.agent_id,
    Message.session_id,
    Message.seq,
    Message.role,
    Message.name,
    Message.content,
    Message.token_count,
    Message.metadata_.label("metadata"),
    Message.created_at,
    Message.updated_at,
    Message.embedding.is_not(None).label("embedded"),
)

_TABLE = cast(Table, Message.__table__)
_SESSIONS = cast(Table, Session.__table__)
_INSERT = insert(_TABLE).values(
    {
        "id": bindparam("id"),
        "user_id": bindparam("user_id"),
        "agent_id": bindparam("agent_id"),
        "session_id": bindparam("session_id"),
        "seq": bindparam("seq"),
        "role": bindparam("role"),
        "name": bindparam("name"),
        "content": bindparam("content"),
        "token_count": bindparam("token_count"),
        "metadata": bindparam("metadata", type_=JSONB),
        "created_at": func.coalesce(
            bindparam("created_at", type_=DateTime(timezone=True)), func.now()
        ),
    }
)
"""Insert statement for executemany; a missing ``created_at`` becomes the transaction time."""


def _uuid_array(ids: Sequence[uuid.UUID]) -> BindParameter[Any]:
    """``ids`` as one ``uuid[]`` parameter: an ``IN`` list takes one parameter per id, and a
    statement takes at most 32 767, which one large ``add()`` would exceed."""
    array_type: ARRAY[uuid.UUID] = ARRAY(UUID(as_uuid=True))
    return bindparam(None, list(ids), type_=array_type)


def _row(row: Row[Any]) -> MessageRow:
    return MessageRow(**row._mapping)


class MessageRepository:
    """Rows of ``messages``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_sessions(
        self, sessions: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> dict[uuid.UUID, int]:
        """Lock the counters of ``(user_id, session_id)`` pairs in id order; their counts.

        The caller locks their users first (``UserRepository.lock``: the writers' order).
        Locking in one order keeps concurrent multi-session writers free of deadlocks; the
        locks last until commit, so sequence numbers follow commit order without gaps.
        Sessions that do not exist (or are another user's) are absent from the result. The
        pairs travel as two arrays (two parameters, whatever their number); ``OF sessions``
        keeps the lock off the ``unnest`` they are read from.
        """
        if not sessions:
            return {}
        pairs = (
            func.unnest(
                _uuid_array([u for u, _ in sessions]), _uuid_array([s for _, s in sessions])
            )
            .table_valued("user_id", "session_id")
            .render_derived()
        )
        result = await self.session.execute(
            select(Session.id, Session.message_count)
            .where(
                tuple_(Session.user_id, Session.id).in_(select(pairs.c.user_id, pairs.c.session_id))
            )
            .order_by(Session.id)
            .with_for_update(of=Session, key_share=True)
        )
        return {row.id: int(row.message_count) for row in result}

    async def set_counters(self, counters: Mapping[uuid.UUID, int]) -> None:
        if not counters:
            return
        await self.session.execute(
            update(_SESSIONS)
            .where(_SESSIONS.c.id == bindparam("session_id"))
            .values(message_count=bindparam("count")),
            [{"session_id": key, "count": value} for key, value in counters.items()],
        )

    async def locate(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """The session of each id that already exists (in any scope: ids are global)."""
        if not ids:
            return {}
        result = await self.session.execute(
            select(Message.id, Message.session_id).where(Message.id == any_(_uuid_array(ids)))
        )
        return {row.id: row.session_id for row in result}

    async def insert(self, rows: Sequence[NewMessage]) -> None:
        """One ``executemany``: each row is its own parameter set, so any count works."""
        if rows:
            await self.session.execute(
                _INSERT, [{name: getattr(row, name) for name in _NEW_FIELDS} for row in rows]
            )

    async def get(self, user_id: uuid.UUID, message_id: uuid.UUID) -> MessageRow | None:
        result = await self.session.execute(
            select(*_COLUMNS).where(Message.user_id == user_id, Message.id == message_id)
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def page(
        self, user_id: uuid.UUID, session_id: uuid.UUID | None, page: Page
    ) -> list[MessageRow]:
        """A page of the user's messages, of one session or of all, by time then number."""
        query = select(*_COLUMNS).where(Message.user_id == user_id)
        if session_id is not None:
            query = query.where(Message.session_id == session_id)
            order: list[Any] = [Message.seq]
        else:
            order = [Message.created_at, Message.session_id, Message.seq]
        result = await self.session.execute(paginate(query, order, page))
        return [_row(row) for row in result]

    async def read_after(
        self, session_id: uuid.UUID, after_seq: int, upto_seq: int, limit: int
    ) -> list[MessageRow]:
        """Messages of a session numbered in ``(after_seq, upto_seq]``, in order."""
        result = await self.session.execute(
            select(*_COLUMNS)
            .where(
                Message.session_id == session_id,
                Message.seq > after_seq,
                Message.seq <= upto_seq,
            )
            .order_by(Message.seq)
            .limit(limit)
        )
        return [_row(row) for row in result]

    async def update(
        self, user_id: uuid.UUID, message_id: uuid.UUID, values: Mapping[str, Any]
    ) -> MessageRow | None:
        columns = {
            ("metadata_" if key == "metadata" else key): value for key, value in values.items()
        }
        result = await self.session.execute(
            update(Message)
            .where(Message.user_id == user_id, Message.id == message_id)
            .values(**columns)
            .returning(*_COLUMNS)
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def delete(self, user_id: uuid.UUID, message_id: uuid.UUID) -> MessageRow | None:
        result = await self.session.execute(
            delete(Message)
            .where(Message.user_id == user_id, Message.id == message_id)
            .returning(*_COLUMNS)
        )
        row = result.one_or_none()
        return None if row is None else _row(row)
