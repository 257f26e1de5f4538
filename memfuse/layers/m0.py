"""M0, the raw layer: validated messages written atomically, numbered per session.

Validation happens before anything reaches the database, so a bad message rejects its whole
``add()`` call with an error naming the message and the field, and nothing is written. The
rules for text, names, metadata and times are :mod:`memfuse.validation`'s, shared with the
other entry points.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.db.models import MESSAGE_ROLES
from memfuse.errors import ConflictError, NotFoundError, ValidationError
from memfuse.layers.chunk import ChunkData
from memfuse.layers.tokens import count_tokens
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.messages import MessageRepository, MessageRow, NewMessage
from memfuse.repositories.progress import ProgressRepository
from memfuse.repositories.tenancy import lock_user_and_session
from memfuse.services.tenancy import MemoryScope
from memfuse.validation import (
    check_metadata,
    check_text,
    name_problem,
    parse_message_id,
    preview,
    stored_timestamp,
)

MESSAGE_KEYS = frozenset({"id", "role", "content", "name", "speaker", "created_at", "metadata"})
MESSAGE_ID_CONSTRAINT = "pk_messages"
"""The primary key a concurrent write of the same client id violates."""


@dataclass(frozen=True, slots=True)
class MessageInput:
    """One message that passed validation; ``id`` is the caller's (``client_id``) or new."""

    id: uuid.UUID
    role: str
    content: str
    name: str | None = None
    created_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    token_count: int = 0
    client_id: bool = False


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """The messages of one ``add()`` call, bound to the caller's scope."""

    scope: MemoryScope
    messages: Sequence[MessageInput]

    @property
    def token_count(self) -> int:
        return sum(message.token_count for message in self.messages)


def validate_messages(
    messages: Sequence[Mapping[str, Any]], *, max_chars: int
) -> list[MessageInput]:
    """Check every message of one call; raise :class:`ValidationError` on the first bad one."""
    if isinstance(messages, Mapping | str | bytes) or not isinstance(messages, Sequence):
        raise ValidationError(f"messages must be a list of dicts, got {type(messages).__name__}")
    validated: list[MessageInput] = []
    seen: set[uuid.UUID] = set()
    for index, raw in enumerate(messages):
        message = validate_message(raw, index=index, max_chars=max_chars)
        if message.id in seen:
            raise ValidationError(
                "repeats an id given earlier in this call", index=index, field="id"
            )
        seen.add(message.id)
        validated.append(message)
    return validated


def validate_message(raw: object, *, index: int, max_chars: int) -> MessageInput:
    """One message dict as :class:`MessageInput`, or a :class:`ValidationError` naming it."""
    if not isinstance(raw, Mapping):
        raise ValidationError(f"must be a dict, got {type(raw).__name__}", index=index)
    unknown = sorted(str(key) for key in raw if key not in MESSAGE_KEYS)
    if unknown:
        raise ValidationError(
            f"unknown key (allowed: {', '.join(sorted(MESSAGE_KEYS))})",
            index=index,
            field=unknown[0],
        )

    role = raw.get("role")
    if role not in MESSAGE_ROLES:
        raise ValidationError(
            f"must be one of {', '.join(MESSAGE_ROLES)}, got {preview(role)}",
            index=index,
            field="role",
        )
    content = check_content(raw.get("content"), index=index, max_chars=max_chars)

    for name_field in ("name", "speaker"):
        problem = None if raw.get(name_field) is None else name_problem(raw[name_field])
        if problem is not None:
            raise ValidationError(problem, index=index, field=name_field)
    if "name" in raw and "speaker" in raw and raw["name"] != raw["speaker"]:
        # compared once both are names or None: comparing arbitrary values may recurse
        raise ValidationError("name and speaker differ; give one", index=index, field="speaker")
    name = raw.get("name" if "name" in raw else "speaker")

    created_at = raw.get("created_at")
    return MessageInput(
        id=_message_id(raw.get("id"), index=index),
        client_id=raw.get("id") is not None,
        role=role,
        content=content,
        name=name,
        created_at=(
            None
            if created_at is None
            else stored_timestamp(created_at, index=index, field="created_at")
        ),
        metadata=check_metadata(raw.get("metadata"), index=index),
        token_count=count_tokens(content),
    )


def check_content(value: object, *, index: int | None, max_chars: int) -> str:
    """A message's text: a non-empty string of at most ``max_chars`` storable characters."""
    if not isinstance(value, str):
        raise ValidationError(
            f"must be a string, got {type(value).__name__}", index=index, field="content"
        )
    if not value.strip():
        raise ValidationError("must not be empty", index=index, field="content")
    if len(value) > max_chars:
        raise ValidationError(
            f"is {len(value)} characters, more than the limit of {max_chars} "
            "(setting max_message_chars)",
            index=index,
            field="content",
        )
    return check_text(value, index=index, field="content")


def _message_id(value: object, *, index: int) -> uuid.UUID:
    return uuid.uuid4() if value is None else parse_message_id(value, index=index)


def message_chunk(row: MessageRow) -> ChunkData:
    """A stored message as the chunk the M1 and M2 layers take."""
    return ChunkData(
        content=row.content,
        user_id=row.user_id,
        agent_id=row.agent_id,
        session_id=row.session_id,
        message_ids=(row.id,),
        first_seq=row.seq,
        last_seq=row.seq,
        started_at=row.created_at,
        ended_at=row.created_at,
        token_count=row.token_count,
        role=row.role,
        speaker=row.name or row.role,
        metadata=row.metadata,
    )


class MessageService:
    """Writes and reads M0 rows; every call is bound to a user's scope."""

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], *, max_chars: int
    ) -> None:
        self._session_factory = session_factory
        self.max_chars = max_chars

    def validate(self, messages: Sequence[Mapping[str, Any]]) -> list[MessageInput]:
        return validate_messages(messages, max_chars=self.max_chars)

    async def write(self, requests: Sequence[WriteRequest]) -> list[list[uuid.UUID]]:
        """Write all requests in one transaction; returns each request's ids in input order.

        Messages whose id already exists in the same session are skipped (an idempotent
        retry) and keep their first sequence number; new messages are numbered after the
        session's last number. An id used elsewhere, or a missing session, fails the call.
        Another call committing one of the ids first, after this one looked them up, is a
        :class:`ConflictError`: nothing of this call is written and retrying it is safe.
        """
        try:
            return await self._write(requests)
        except sa_exc.IntegrityError as error:
            if not _is_message_id_conflict(error):
                raise
            raise ConflictError(
                "a message id of this call was written concurrently by another call (the same "
                "client id sent twice at once); nothing of this call was written and retrying "
                "it is safe: a retry skips the ids already stored in this session"
            ) from error

    async def _write(self, requests: Sequence[WriteRequest]) -> list[list[uuid.UUID]]:
        async with self._session_factory.begin() as db:
            repository = MessageRepository(db)
            counters = await repository.lock_sessions(
                sorted({(r.scope.user_id, r.scope.session_id) for r in requests})
            )
            supplied = [m.id for r in requests for m in r.messages if m.client_id]
            existing = await repository.locate(supplied)
            rows: list[NewMessage] = []
            written: dict[uuid.UUID, uuid.UUID] = {}
            for request in requests:
                scope = request.scope
                if scope.session_id not in counters:
                    raise NotFoundError(f"session {scope.session!r} no longer exists")
                for index, message in enumerate(request.messages):
                    owner = existing.get(message.id) or written.get(message.id)
                    if owner is not None:
                        if owner != scope.session_id:
                            raise ValidationError(
                                f"id {message.id} belongs to another message",
                                index=index,
                                field="id",
                            )
                        continue
                    counters[scope.session_id] += 1
                    written[message.id] = scope.session_id
                    rows.append(new_message(scope, message, counters[scope.session_id]))
            await repository.insert(rows)
            await repository.set_counters(counters)
        return [[m.id for m in r.messages] for r in requests]

    async def get(self, scope: MemoryScope, message_id: uuid.UUID) -> MessageRow | None:
        async with self._session_factory() as db:
            return await MessageRepository(db).get(scope.user_id, message_id)

    async def list(
        self,
        scope: MemoryScope,
        *,
        limit: int,
        offset: int,
        newest_first: bool,
        session_only: bool,
    ) -> list[MessageRow]:
        async with self._session_factory() as db:
            return await MessageRepository(db).page(
                scope.user_id,
                scope.session_id if session_only else None,
                limit=limit,
                offset=offset,
                newest_first=newest_first,
            )

    async def update(
        self,
        scope: MemoryScope,
        message_id: uuid.UUID,
        *,
        content: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> MessageRow:
        """Change a message; its session's episodes and facts are rebuilt from M0."""
        values: dict[str, Any] = {}
        if content is not None:
            checked = check_content(content, index=None, max_chars=self.max_chars)
            values.update(content=checked, token_count=count_tokens(checked))
        if metadata is not None:
            values["metadata"] = check_metadata(metadata)
        if not values:
            raise ValidationError("nothing to update: give content or metadata")
        async with self._session_factory.begin() as db:
            await _lock_message_session(db, scope, message_id)
            row = await MessageRepository(db).update(scope.user_id, message_id, values)
            if row is None:
                raise NotFoundError(f"message {message_id} not found")
            if content is not None:
                await ProgressRepository(db).rebuild_session(row.user_id, row.session_id)
        return row

    async def delete(self, scope: MemoryScope, message_id: uuid.UUID) -> None:
        """Delete a message; its session's episodes and facts are rebuilt without it."""
        async with self._session_factory.begin() as db:
            await _lock_message_session(db, scope, message_id)
            row = await MessageRepository(db).delete(scope.user_id, message_id)
            if row is None:
                raise NotFoundError(f"message {message_id} not found")
            await ProgressRepository(db).rebuild_session(row.user_id, row.session_id)


def _is_message_id_conflict(error: sa_exc.IntegrityError) -> bool:
    """Whether ``error`` is a unique violation of the messages' primary key."""
    inner: BaseException | None = error.orig
    while inner is not None:
        if isinstance(inner, asyncpg.UniqueViolationError):
            return inner.constraint_name == MESSAGE_ID_CONSTRAINT
        inner = inner.__cause__
    return False


async def _lock_message_session(
    db: AsyncSession, scope: MemoryScope, message_id: uuid.UUID
) -> None:
    """Take the locks an edit needs in the writers' order (docs/layers.md#lock-order), before
    the message row itself: user, session, the session's layer progress, the user's facts.

    The message row and its embedding job come last, as in a session deletion's cascade;
    locking the row first deadlocked with a concurrent deletion of its session.
    """
    found = await MessageRepository(db).get(scope.user_id, message_id)
    if found is None or not await lock_user_and_session(db, found.user_id, found.session_id):
        raise NotFoundError(f"message {message_id} not found")
    await ProgressRepository(db).lock(user_id=found.user_id, session_id=found.session_id)
    await FactRepository(db).lock_user(found.user_id)


def new_message(scope: MemoryScope, message: MessageInput, seq: int) -> NewMessage:
    return NewMessage(
        id=message.id,
        user_id=scope.user_id,
        agent_id=scope.agent_id,
        session_id=scope.session_id,
        seq=seq,
        role=message.role,
        name=message.name,
        content=message.content,
        token_count=message.token_count,
        metadata=dict(message.metadata),
        created_at=message.created_at,
    )
