"""SQL for M0 rows. Every read takes the owning ``user_id``; repositories never commit.

Writing is one call of the ``write_messages`` SQL function (migrations 0006, 0009), whatever
the number of messages: its arguments are arrays (:class:`MessageColumns`), so a call has
fourteen parameters however large it is, and the function takes the writers' locks, checks
ids, numbers and inserts the rows and stores the counters in one statement, hence one round
trip. That one statement runs on the pooled asyncpg connection itself (:func:`write_messages`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from memfuse.db.models import SCHEMA, Message
from memfuse.repositories.paging import paginate
from memfuse.types import MessageRow, Page

ID_ELSEWHERE_STATE = "MF001"
"""SQLSTATE of ``write_messages`` when a client id is stored in another session."""
SESSION_GONE_STATE = "MF002"
"""SQLSTATE of ``write_messages`` when a session no longer exists for its user."""


@dataclass(slots=True)
class MessageColumns:
    """The messages of one write as ``write_messages`` takes them: one list per column.

    ``users``, ``agents`` and ``sessions`` hold one entry per request (a caller's scope); every
    other list holds one entry per message, in order. ``request`` is the message's request
    (1-based), ``rank`` its place among the write's messages of its session (1-based),
    ``client`` whether the caller chose its id (``None``: no caller did, nothing to look up),
    ``metadata`` JSON text (``None`` for an empty object) and ``created_at`` ``None`` for the
    transaction's time.
    """

    users: list[uuid.UUID]
    agents: list[uuid.UUID]
    sessions: list[uuid.UUID]
    request: list[int]
    rank: list[int]
    ids: list[uuid.UUID]
    client: list[bool] | None
    roles: list[str]
    names: list[str | None]
    contents: list[str]
    tokens: list[int]
    metadata: list[str | None]
    created_at: list[datetime | None]
    index_text: bool = False
    """Fill ``content_tsv`` at insert (no embedding worker will); else the worker does."""

    def parameters(self) -> tuple[Any, ...]:
        return (
            self.users,
            self.agents,
            self.sessions,
            self.request,
            self.rank,
            self.ids,
            self.client,
            self.roles,
            self.names,
            self.contents,
            self.tokens,
            self.metadata,
            self.created_at,
            self.index_text,
        )


class IdStoredElsewhereError(Exception):
    """A client id of the write is stored in another session (or earlier in the write, for
    another session); ``position`` is the message's 0-based place in the write."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the id of message {position} of the write is stored elsewhere")
        self.position = position


class SessionGoneError(Exception):
    """A session of the write no longer exists for its user; ``request`` is 0-based."""

    def __init__(self, request: int) -> None:
        super().__init__(f"the session of request {request} of the write no longer exists")
        self.request = request


def configured_schema(engine: AsyncEngine) -> str:
    """The schema the models' ``memfuse`` maps to on ``engine`` (``schema_translate_map``).

    SQL text and function names are not translated by SQLAlchemy, so statements that call
    memfuse's SQL functions name the schema themselves.
    """
    options = engine.get_execution_options()
    translate: Mapping[str | None, str | None] = options.get("schema_translate_map") or {}
    return translate.get(SCHEMA) or SCHEMA


def write_call(schema: str) -> str:
    """The SQL that runs one write through ``write_messages`` in ``schema``."""
    quoted = schema.replace('"', '""')
    placeholders = ", ".join(f"${number}" for number in range(1, 15))
    return f'SELECT "{quoted}".write_messages({placeholders})'


async def write_messages(driver: Any, call: str, columns: MessageColumns) -> int:
    """Run one write on ``driver``, an asyncpg connection; the number of rows inserted.

    The hot statement of the write path goes to asyncpg directly: through SQLAlchemy's
    execution layer it cost about as much client time again as everything else of a
    one-message ``add()`` (the caller times it for the monitor instead of the engine's hooks).
    asyncpg prepares it once per connection and keeps it in the connection's statement cache.
    Outside a transaction the call is its own transaction: all rows or none. Raises
    :class:`IdStoredElsewhereError` or :class:`SessionGoneError` (nothing written); a unique
    violation of ``pk_messages`` means a concurrent write of the same id won.
    """
    try:
        written = await driver.fetchval(call, *columns.parameters())
    except asyncpg.PostgresError as error:
        detail = error.detail if isinstance(error.detail, str) else None
        if error.sqlstate == ID_ELSEWHERE_STATE and detail is not None:
            raise IdStoredElsewhereError(int(detail) - 1) from error
        if error.sqlstate == SESSION_GONE_STATE and detail is not None:
            raise SessionGoneError(int(detail) - 1) from error
        raise
    return int(written)


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


def _row(row: Row[Any]) -> MessageRow:
    return MessageRow(**row._mapping)


class MessageRepository:
    """Rows of ``messages``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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
