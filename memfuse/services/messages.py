"""M0, the raw layer: validated messages written atomically, numbered per session.

Validation (:func:`memfuse.validation.validate_messages`) happens before anything reaches the
database, so a bad message rejects its whole ``add()`` call and nothing is written. A valid call
goes through the write buffer when it is on (group commit), else straight to
:class:`MessageWriter`; either way the caller gets its ids only once they are committed, and
then the service's :class:`~memfuse.services.changes.AfterCommit` hook runs.

A write (one call, or one batch of the buffer, of any size) is one statement of the
``write_messages`` SQL function, so it is one transaction: all of it is stored or none. Inside,
the function keeps the writers' lock order, numbers each session gap-free in commit order and
skips ids already stored in the same session (docs/layers.md#m0-messages).

Edits and deletions take their locks in the writers' order (docs/layers.md#lock-order) and
reset the session's derived layers in the same transaction, so the pipeline rebuilds M1 and M2
of that session from M0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from memfuse.buffer import WriteBuffer
from memfuse.db.engines import on_live_connection
from memfuse.errors import ConflictError, NotFoundError, ValidationError
from memfuse.monitor.engine_hooks import QUERY_OPERATION
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.episodes import EpisodeRepository
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.messages import (
    IdStoredElsewhereError,
    MessageColumns,
    MessageRepository,
    SessionGoneError,
    configured_schema,
    write_call,
    write_messages,
)
from memfuse.repositories.progress import ProgressRepository
from memfuse.repositories.tenancy import lock_user_and_session
from memfuse.services.changes import AfterCommit
from memfuse.tokens import count_tokens
from memfuse.types import MemoryScope, MessageRow, Page
from memfuse.validation import (
    EMPTY_METADATA_JSON,
    MessageInput,
    check_content,
    check_metadata,
    validate_messages,
)

logger = logging.getLogger(__name__)

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
    """Commits the messages of one or many ``add()`` calls in one statement (one transaction).

    The statement calls the ``write_messages`` SQL function (migration 0006) outside any
    transaction, so it is its own: the whole write is one round trip after the pool's
    checkout, and the server takes the writers' locks, looks client ids up, numbers and
    inserts the rows and stores the counters, all or nothing. The connection comes from the
    engine's pool (its checkout and accounting as for every statement, without the ping:
    see :meth:`_run`); the statement itself goes to asyncpg directly
    (:func:`~memfuse.repositories.messages.write_messages` says why) and is timed here as
    ``db_query``, as the engine's hooks time every other one.

    ``index_text``: stem each message's words into ``content_tsv`` at insert. Off, the
    embedding worker does it when it stores the vector, off the caller's path (a batch
    ``add()`` spent most of its server time stemming, docs/benchmarks.md); search reads the
    words of a message not indexed yet on the fly, so it is found at once either way.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        monitor: PerformanceMonitor | None = None,
        *,
        index_text: bool = False,
    ) -> None:
        bind = session_factory.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("MessageWriter needs a session factory bound to an AsyncEngine")
        self._engine = bind
        self._call = write_call(configured_schema(bind))
        self._monitor = monitor
        self._index_text = index_text

    async def write(self, requests: Sequence[WriteRequest]) -> list[list[uuid.UUID]]:
        """Write all requests in one transaction; returns each request's ids in input order.

        Messages whose id already exists in the same session are skipped (an idempotent
        retry) and keep their first sequence number; new messages are numbered after the
        session's last number. An id used elsewhere, or a missing session, fails the call.
        Another call committing one of the ids first, after this one looked them up, is a
        :class:`ConflictError`: nothing of this call is written and retrying it is safe.
        """
        columns = message_columns(requests, index_text=self._index_text)
        try:
            await self._run(columns)
        except IdStoredElsewhereError as error:
            request, index = _locate(requests, error.position)
            raise ValidationError(
                f"id {request.messages[index].id} belongs to another message",
                index=index,
                field="id",
            ) from None
        except SessionGoneError as error:
            session = requests[error.request].scope.session
            raise NotFoundError(f"session {session!r} no longer exists") from None
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != MESSAGE_ID_CONSTRAINT:
                raise
            raise ConflictError(
                "a message id of this call was written concurrently by another call (the same "
                "client id sent twice at once); nothing of this call was written and retrying "
                "it is safe: a retry skips the ids already stored in this session"
            ) from error
        return [[message.id for message in request.messages] for request in requests]

    async def _run(self, columns: MessageColumns) -> int:
        """The statement on a pooled connection (:func:`~memfuse.db.engines.pooled_driver`)
        that the pool does not ping first: the statement shows whether it is alive.

        If the connection went away (a restarted server, a terminated backend), the write
        goes once more on a checked connection with every id marked as the caller's, so ids
        already stored in their session are skipped: whether or not the first attempt
        committed before its connection broke, each message is stored once.
        """

        async def first(connection: PoolProxiedConnection) -> int:
            return await self._timed(connection.driver_connection, columns)

        async def again(connection: PoolProxiedConnection) -> int:
            every_id_given = dataclasses.replace(columns, client=[True] * len(columns.ids))
            return await self._timed(connection.driver_connection, every_id_given)

        return await on_live_connection(self._engine, first, again, what="M0 write", log=logger)

    async def _timed(self, driver: Any, columns: MessageColumns) -> int:
        """The statement on ``driver``, timed as ``db_query``."""
        timer = (
            self._monitor.track_operation(QUERY_OPERATION)
            if self._monitor is not None
            else contextlib.nullcontext()
        )
        with timer:
            return await write_messages(driver, self._call, columns)


def message_columns(
    requests: Sequence[WriteRequest], *, index_text: bool = False
) -> MessageColumns:
    """The requests' messages as ``write_messages`` takes them, one list per column.

    Each message's rank counts the write's earlier messages of the same session, so rows are
    numbered in request order, then message order; the function renumbers only when it skips
    retried ids.
    """
    users: list[uuid.UUID] = []
    agents: list[uuid.UUID] = []
    sessions: list[uuid.UUID] = []
    numbers: list[int] = []
    ranks: list[int] = []
    messages = [message for request in requests for message in request.messages]
    written: dict[uuid.UUID, int] = {}
    for number, request in enumerate(requests, start=1):
        scope, count = request.scope, len(request.messages)
        users.append(scope.user_id)
        agents.append(scope.agent_id)
        sessions.append(scope.session_id)
        first = written.get(scope.session_id, 0) + 1
        written[scope.session_id] = first + count - 1
        numbers += [number] * count
        ranks += range(first, first + count)
    client = [message.client_id for message in messages]
    return MessageColumns(
        users=users,
        agents=agents,
        sessions=sessions,
        request=numbers,
        rank=ranks,
        ids=[message.id for message in messages],
        client=client if any(client) else None,  # None: no id to look up
        roles=[message.role for message in messages],
        names=[message.name for message in messages],
        contents=[message.content for message in messages],
        tokens=[message.token_count for message in messages],
        metadata=[
            None if message.metadata_json == EMPTY_METADATA_JSON else message.metadata_json
            for message in messages
        ],
        created_at=[message.created_at for message in messages],
        index_text=index_text,
    )


def _locate(requests: Sequence[WriteRequest], position: int) -> tuple[WriteRequest, int]:
    """The request and index within it of the write's ``position``-th message."""
    for request in requests:
        if position < len(request.messages):
            return request, position
        position -= len(request.messages)
    raise IndexError(position)


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
