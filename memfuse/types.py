"""The types memfuse's public methods take and return, in one module both sides import.

Everything here is a plain frozen dataclass or a ``Literal``: no I/O, no imports from the rest
of memfuse, so repositories, layers, services and the facade can all name these types without
importing one another. ``memfuse`` re-exports each of them; a test checks that every public
signature names only exported types.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

Layer = Literal["m0", "m1", "m2", "knowledge"]
"""M0 messages, M1 episodes, M2 facts, and knowledge items (stated, not derived)."""
Method = Literal["vector", "text"]
"""The two kinds of ranked list a search fuses: pgvector KNN and PostgreSQL full text."""
Unit = Literal["message", "item"]
"""What a search returns: M0 messages ranked by every list, or each layer's own rows."""
Order = Literal["asc", "desc"]
"""The order of a listing by time: oldest or newest first."""
TaskStatus = Literal["running", "restarting", "stopped"]
Role = Literal["user", "assistant", "system", "tool"]
"""Who wrote a message; ``tool`` holds a tool call's output."""

MESSAGE_ROLES: tuple[Role, ...] = get_args(Role)

FLUSH_REASONS = ("shutdown", "explicit", "size", "tokens", "age")
"""Why the write buffer wrote a batch, highest priority first."""


# -- Scope --


@dataclass(frozen=True, slots=True)
class MemoryScope:
    """The ids every memory read and write is bound to; ``user_id`` is never optional."""

    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    user: str
    agent: str
    session: str


@dataclass(frozen=True, slots=True)
class FilterIds:
    """The ids a query narrows to; ``None`` means not narrowed."""

    agent_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Which rows of a listing to return: ``limit`` rows after skipping ``offset``."""

    limit: int
    offset: int
    newest_first: bool


# -- Stored rows, as callers see them --


@dataclass(frozen=True, slots=True)
class UserRow:
    """A user (a tenant) as callers see it."""

    id: uuid.UUID
    name: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent: one user's (``user_id``), or shared by every user (``user_id`` None)."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    name: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session (a conversation) of one user, with the agent it talks to."""

    id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    name: str
    message_count: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """A stored key without its secret; ``key`` holds the clear key only right after creation."""

    id: uuid.UUID
    user_id: uuid.UUID
    name: str | None
    prefix: str
    permissions: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A stored message as callers see it (without its vector)."""

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
    created_at: datetime
    updated_at: datetime
    embedded: bool


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    """A stored episode as callers see it (without its vector)."""

    id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    content: str
    token_count: int
    message_ids: tuple[uuid.UUID, ...]
    first_seq: int
    last_seq: int
    started_at: datetime
    ended_at: datetime
    metadata: dict[str, Any]
    created_at: datetime
    embedded: bool


@dataclass(frozen=True, slots=True)
class FactRow:
    """A stored fact as callers see it (without its vector)."""

    id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID | None
    session_id: uuid.UUID | None
    content: str
    fact_type: str
    fact_key: str | None
    entities: tuple[str, ...]
    confidence: float
    occurred_at: datetime | None
    message_ids: tuple[uuid.UUID, ...]
    episode_id: uuid.UUID | None
    valid_from: datetime
    valid_to: datetime | None
    superseded_by: uuid.UUID | None
    metadata: dict[str, Any]
    created_at: datetime
    embedded: bool

    @property
    def live(self) -> bool:
        return self.valid_to is None


@dataclass(frozen=True, slots=True)
class KnowledgeRow:
    """A stored knowledge item as callers see it (without its vector).

    ``namespace`` and ``key`` address it like a key-value store's item; ``value`` is the JSON
    it was given; ``expires_at`` is when it stops being returned (``None``: never).
    """

    id: uuid.UUID
    user_id: uuid.UUID
    content: str
    namespace: tuple[str, ...]
    key: str | None
    value: Any
    metadata: dict[str, Any]
    ttl_seconds: float | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    embedded: bool
    indexed: bool = True


@dataclass(frozen=True, slots=True)
class ChunkData:
    """Text of one session with its scope, lineage to M0 and time span.

    A single M0 message is a chunk with one id in ``message_ids`` and its ``role`` and
    ``speaker`` set; an M1 episode is a chunk of several messages, whose ``speaker`` and
    ``role`` are ``None``. Chunks never span users or sessions.
    """

    content: str
    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    message_ids: tuple[uuid.UUID, ...]
    first_seq: int
    last_seq: int
    started_at: datetime
    ended_at: datetime
    token_count: int
    role: str | None = None
    speaker: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.message_ids:
            raise ValueError("a chunk holds at least one message")
        if self.first_seq > self.last_seq:
            raise ValueError(f"first_seq {self.first_seq} is after last_seq {self.last_seq}")
        if self.started_at > self.ended_at:
            raise ValueError("started_at is after ended_at")


# -- Search --


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One result: a message (``m0``), an episode (``m1``) or a fact (``m2``).

    ``created_at`` is when it was said: the message's time, the episode's first message, the
    fact's source message. ``message_ids`` is the lineage: the M0 messages it contains.
    """

    layer: Layer
    id: uuid.UUID
    content: str
    score: float
    created_at: datetime
    session_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    message_ids: tuple[uuid.UUID, ...]
    token_count: int
    speaker: str | None = None
    embedded: bool = True
    role: str | None = None
    """The message's role (``m0`` results only)."""
    ranks: dict[str, int] | None = None
    """With ``query(..., explain=True)``: the rank this result had in each list that ranked it
    (``"m1_vector": 2`` - for a message, the best rank of its own row, episodes or facts in
    that list); ``score`` is the sum of ``1 / (search_rrf_k + rank)`` over them."""


# -- Health and statistics --


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome; ``value`` holds its figure (a revision, a depth) when it has one."""

    name: str
    ok: bool
    detail: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every check, in order; healthy when all passed."""

    checks: tuple[Check, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for a health endpoint."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
            "checks": [asdict(check) for check in self.checks],
        }

    def lines(self) -> list[str]:
        return [f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<12} {c.detail}" for c in self.checks]


@dataclass(frozen=True, slots=True)
class TaskState:
    """What a supervised task is doing now, for ``health()`` and ``doctor``."""

    name: str
    status: TaskStatus
    restarts: int
    last_error: str | None


@dataclass(slots=True)
class BufferStats:
    """Counters for the monitor and tests: batches per reason, calls and messages written."""

    batches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLUSH_REASONS, 0))
    calls_written: int = 0
    messages_written: int = 0
    calls_failed: int = 0
    largest_batch: int = 0


@dataclass(slots=True)
class WorkerStats:
    """Counters since start: batches, jobs, vectors written, and what went wrong."""

    batches: int = 0
    jobs_done: int = 0
    texts_embedded: int = 0
    """Distinct texts sent to the model; fewer than vectors written when rows share a text."""
    vectors_written: int = 0
    rows_gone: int = 0
    rows_busy: int = 0
    failures: int = 0
    dead_lettered: int = 0
    largest_batch: int = 0
    notifications: int = 0
    listener_connects: int = 0
    last_error: str | None = None
    batch_sizes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RetrievalStats:
    """Searches served, and how many the caches answered."""

    searches: int = 0
    result_cache_hits: int = 0
    query_embedding_cache_hits: int = 0
    queries_embedded: int = 0
    query_model_calls: int = 0
    """Model calls for query vectors: concurrent queries share one (``queries_embedded`` /
    ``query_model_calls`` is the mean batch)."""
    layers_skipped: int = 0
    """Layers left out of searches because the user had no rows in them."""
