"""M0, the raw layer: validated messages written atomically, numbered per session.

Validation (:func:`memfuse.validation.validate_messages`) happens before anything reaches the
database, so a bad message rejects its whole ``add()`` call and nothing is written. A valid call
goes through the write buffer when it is on (group commit), else straight to
:class:`MessageWriter`; either way the caller gets its ids only once they are committed, and
then the service's :class:`~memfuse.services.changes.AfterCommit` hook runs.

Edits and deletions take their locks in the writers' order (docs/layers.md#lock-order) and
reset the session's derived layers in the same transaction, so the pipeline rebuilds M1 and M2
of that session from M0.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.buffer import WriteBuffer
from memfuse.errors import ConflictError, NotFoundError, ValidationError
from memfuse.repositories.episodes import EpisodeRepository
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.messages import MessageRepository, NewMessage
from memfuse.repositories.progress import ProgressRepository
from memfuse.repositories.tenancy import UserRepository, lock_user_and_session
from memfuse.services.changes import AfterCommit
from memfuse.tokens import count_tokens
from memfuse.types import MemoryScope, MessageRow, Page
from memfuse.validation import MessageInput, check_content, check_metadata, validate_messages

MESSAGE_ID_CONSTRAINT = "pk_messages"
"""The primary key a concurrent write of the same client id violates."""


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """The messages of one ``add()`` call, bound to the caller's scope."""

    scope: MemoryScope
    messages: Sequence[MessageInput]

    @property
    def token_count(self) -> int:
        return sum(message.token_count for message in self.messages)


MessageBuffer = WriteBuffer[WriteRequest, list[uuid.UUID]]


class MessageWriter:
    """Commits the messages of one or many ``add()`` calls in one transaction."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory

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
            sessions = sorted({(r.scope.user_id, r.scope.session_id) for r in requests})
            # users before sessions: the writers' lock order
            await UserRepository(db).lock(sorted({user_id for user_id, _ in sessions}))
            repository = MessageRepository(db)
            counters = await repository.lock_sessions(sessions)
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


class MessageService:
    """Adds, reads, edits and deletes M0 rows; every call is bound to a user's scope."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        writer: MessageWriter,
        *,
        buffer: MessageBuffer | None,
        after_commit: AfterCommit,
        max_chars: int,
    ) -> None:
        self._session_factory = session_factory
        self._writer = writer
        self._buffer = buffer
        self._after_commit = after_commit
        self.max_chars = max_chars

    def validate(self, messages: Sequence[Mapping[str, Any]]) -> list[MessageInput]:
        return validate_messages(messages, max_chars=self.max_chars)

    async def add(self, scope: MemoryScope, messages: Sequence[MessageInput]) -> list[uuid.UUID]:
        """Commit validated messages (through the buffer when it is on); their ids."""
        if not messages:
            return []
        request = WriteRequest(scope, messages)
        if self._buffer is not None:
            ids = await self._buffer.submit(request)
        else:
            ids = (await self._writer.write([request]))[0]
        self._after_commit(scope.user_id)
        return ids

    async def get(self, scope: MemoryScope, message_id: uuid.UUID) -> MessageRow | None:
        async with self._session_factory() as db:
            return await MessageRepository(db).get(scope.user_id, message_id)

    async def list(self, scope: MemoryScope, page: Page, *, all_sessions: bool) -> list[MessageRow]:
        async with self._session_factory() as db:
            return await MessageRepository(db).page(
                scope.user_id, None if all_sessions else scope.session_id, page
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
                await rebuild_session(db, row.user_id, row.session_id)
        self._after_commit(scope.user_id)
        return row

    async def delete(self, scope: MemoryScope, message_id: uuid.UUID) -> None:
        """Delete a message; its session's episodes and facts are rebuilt without it."""
        async with self._session_factory.begin() as db:
            await _lock_message_session(db, scope, message_id)
            row = await MessageRepository(db).delete(scope.user_id, message_id)
            if row is None:
                raise NotFoundError(f"message {message_id} not found")
            await rebuild_session(db, row.user_id, row.session_id)
        self._after_commit(scope.user_id)


async def rebuild_session(db: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """Forget a session's episodes and facts so the pipeline derives them again from M0.

    Runs in the transaction that edits or deletes a message, after the session's progress
    rows and the user's facts are locked. The progress reset bumps each layer's
    ``generation``, so a layer step that read before it discards its work; facts of other
    sessions that this session's facts had closed are reopened.
    """
    await ProgressRepository(db).reset_session(user_id, session_id)
    facts = FactRepository(db)
    await facts.lock_user(user_id)
    await facts.delete_for_session(user_id, session_id)
    await EpisodeRepository(db).delete_for_session(user_id, session_id)


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
