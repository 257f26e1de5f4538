"""The ORM models: the one schema definition that the migrations must equal (a test checks).

Every table lives in the ``memfuse`` schema, with its own :class:`MetaData`, so a host app's
models and ours never meet. A different schema name is applied at run time with SQLAlchemy's
``schema_translate_map`` (see :func:`memfuse.db.engines.schema_execution_options`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from memfuse.db.vector import Vector
from memfuse.types import MESSAGE_ROLES

SCHEMA = "memfuse"
"""The schema name in the models; the configured name replaces it at run time."""

VERSION_TABLE = "memfuse_alembic_version"
TEXT_SEARCH_CONFIG = "english"
EMBEDDABLE_TABLES = ("messages", "episodes", "facts", "knowledge")
DERIVED_LAYERS = ("m1", "m2")


def embedding_channel(schema: str) -> str:
    """The NOTIFY channel on which the queue trigger wakes embedding workers of ``schema``."""
    return f"{schema}_embedding_jobs"


def listener_name(schema: str) -> str:
    """The ``application_name`` of a worker's LISTEN connection, so ``doctor`` (another
    process) can count the workers listening on ``schema``'s queue in ``pg_stat_activity``."""
    return f"memfuse-listener:{schema}"[:63]


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_NOW = text("now()")
_EMPTY_OBJECT = text("'{}'::jsonb")
_NEW_UUID = text("gen_random_uuid()")
_TSVECTOR = f"to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, content)"
SPEAKER_SEPARATOR = ": "
"""Between a speaker and what they said, wherever a message is read as text."""


def message_text(speaker: str | None, content: str) -> str:
    """How a message reads: ``speaker: content``, or the content alone without a speaker.

    The one rule for a message's text: the embedding worker embeds it, the full-text column
    below indexes it (the same rule in SQL), and an M1 episode is made of such lines.
    """
    return f"{speaker}{SPEAKER_SEPARATOR}{content}" if speaker else content


FACT_GROUP_MESSAGES = 4
"""Facts drawn from this many consecutive messages of a session (1-4, 5-8, ...) are embedded
as one text and share its vector: the one rule for a fact's text (the embedding worker reads
it, the M2 layer holds back the group still open). Measured on LoCoMo in docs/benchmarks.md,
"Which vectors earn their cost"."""


def fact_group(seq: int) -> int:
    """The group of facts whose first source message is number ``seq`` of its session."""
    return (seq - 1) // FACT_GROUP_MESSAGES


MESSAGE_TSVECTOR = (
    f"to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, "
    f"coalesce(name || '{SPEAKER_SEPARATOR}', '') || content)"
)
"""A message is searched as :func:`message_text` reads it (migrations 0004 and 0009 hold a
copy): the words of ``messages.content_tsv`` once indexed, and of a row not indexed yet."""


def user_word(schema: str, word: str, user: str) -> str:
    """SQL: the key of the word ``word`` (SQL text) of the user ``user`` (SQL uuid) in
    ``ix_messages_user_words_gin``: the function ``user_word`` of memfuse's schema ``schema``
    (migration 0011), the one rule the index and the search share."""
    return f'"{schema}".user_word({word}, {user})'


def message_user_words(schema: str) -> str:
    """SQL: what ``ix_messages_user_words_gin`` indexes, an indexed message's words each as
    its user's key (:func:`user_word`; 8 hex digits of the user's id, then the word).

    A search ORs its user's keys of the query's words, so the index hands back only that
    user's matching rows and reads only their posting lists. With the user as one more lexeme
    ANDed into the query (migration 0010), GIN also walked the posting list of all the user's
    messages, which grew with the history (docs/retrieval.md, "The user in the words' keys")."""
    return f'"{schema}".user_words(content_tsv, user_id)'


KNOWLEDGE_TSVECTOR = (
    f"CASE WHEN indexed THEN to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, content) "
    "ELSE ''::tsvector END"
)
"""A knowledge item is full-text indexed only when ``indexed`` (migration 0007 holds a copy)."""


class Base(DeclarativeBase):
    """Declarative base of memfuse's own tables, on its own metadata."""

    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING_CONVENTION)


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, server_default=_NEW_UUID)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=_NOW)


def _updated_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=_NOW)


def _metadata() -> Mapped[dict[str, Any]]:
    return mapped_column("metadata", JSONB, nullable=False, server_default=_EMPTY_OBJECT)


def _tenant(table: str, *, nullable: bool = False) -> Mapped[Any]:
    return mapped_column(
        UUID(as_uuid=True),
        ForeignKey(f"{SCHEMA}.{table}.id", ondelete="CASCADE"),
        nullable=nullable,
    )


def _session_key() -> Mapped[uuid.UUID]:
    """A session's id as (the first part of) a primary key; the row goes with its session."""
    return mapped_column(
        UUID(as_uuid=True),
        ForeignKey(f"{SCHEMA}.sessions.id", ondelete="CASCADE"),
        primary_key=True,
    )


def _embedding() -> Mapped[list[float] | None]:
    return mapped_column(Vector(), nullable=True)


def _content_tsv(expression: str = _TSVECTOR) -> Mapped[Any]:
    return mapped_column(TSVECTOR, Computed(expression, persisted=True))


def _vector_index(table: str) -> Index:
    """The HNSW cosine index on the embedding."""
    return Index(
        f"ix_{table}_embedding_hnsw",
        "embedding",
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


def _text_index(table: str) -> Index:
    """The GIN index on the full-text column."""
    return Index(f"ix_{table}_content_tsv_gin", "content_tsv", postgresql_using="gin")


def _memory_indexes(table: str) -> tuple[Index, Index]:
    """The HNSW cosine index on the embedding and the GIN index on the full-text column."""
    return _vector_index(table), _text_index(table)


class SchemaInfo(Base):
    """Facts about the schema fixed at creation, such as the embedding dimension."""

    __tablename__ = "schema_info"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class User(Base):
    """A tenant: every memory row belongs to exactly one user."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Agent(Base):
    """An assistant persona: one user's, or shared by every user (``user_id`` NULL).

    A shared agent is a name only (the REST server's agents, which its clients create before
    they name a user); memory rows always belong to a user, whichever agent they name.
    """

    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index(
            "uq_agents_name_shared", "name", unique=True, postgresql_where=text("user_id IS NULL")
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID | None] = _tenant("users", nullable=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Session(Base):
    """A conversation; ``message_count`` is the per-session counter that numbers messages.

    Its id, user and agent never change (a trigger refuses it, migration 0012): its messages
    carry them.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index(None, "agent_id"),
        CheckConstraint("message_count >= 0", name="message_count_non_negative"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _tenant("users")
    agent_id: Mapped[uuid.UUID] = _tenant("agents")
    name: Mapped[str] = mapped_column(Text, nullable=False)
    message_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Message(Base):
    """M0: one raw message, exactly as sent; processing never rewrites it.

    ``content_tsv`` (its words) is NULL until indexed: by the embedding worker with the
    vector, at insert when no embedder runs, by ``messages_index_text`` when the text changes
    (migration 0009). Search reads an unindexed row's words on the fly
    (``ix_messages_text_unindexed``). ``(session_id, user_id, agent_id)`` is always a
    session with its user and agent, and goes with it: triggers check it once per INSERT
    statement and delete a session's messages with it (migration 0012, cheaper than the
    foreign key it replaces, which PostgreSQL checks row by row).
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        CheckConstraint(
            "role IN (" + ", ".join(f"'{role}'" for role in MESSAGE_ROLES) + ")",
            name="role_known",
        ),
        CheckConstraint("seq > 0", name="seq_positive"),
        Index(None, "user_id", "created_at"),
        _vector_index("messages"),
        Index(
            "ix_messages_user_words_gin",
            text(f"{SCHEMA}.user_words(content_tsv, user_id)"),  # as PostgreSQL prints it
            postgresql_using="gin",
            postgresql_where=text("content_tsv IS NOT NULL"),
        ),
        Index(
            "ix_messages_text_unindexed", "user_id", postgresql_where=text("content_tsv IS NULL")
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    agent_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    session_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str | None] = mapped_column(Text, nullable=True)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    token_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    embedding: Mapped[list[float] | None] = _embedding()
    content_tsv: Mapped[Any] = mapped_column(TSVECTOR, nullable=True)


class Episode(Base):
    """M1: consecutive messages of one session packed into a chunk, with lineage to M0."""

    __tablename__ = "episodes"
    __table_args__ = (
        UniqueConstraint("session_id", "first_seq"),
        Index(None, "user_id", "session_id", "first_seq"),
        Index(None, "agent_id"),
        CheckConstraint("first_seq <= last_seq", name="seq_range"),
        *_memory_indexes("episodes"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _tenant("users")
    agent_id: Mapped[uuid.UUID] = _tenant("agents")
    session_id: Mapped[uuid.UUID] = _tenant("sessions")
    content: Mapped[str] = mapped_column(Text, nullable=False)
    token_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    message_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), nullable=False)
    first_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    embedding: Mapped[list[float] | None] = _embedding()
    content_tsv: Mapped[Any] = _content_tsv()


class Fact(Base):
    """M2: one atomic fact with lineage; a newer contradicting fact closes ``valid_to``.

    A fact has no vector of its own: its group's (:class:`FactGroup`) stands for it.
    """

    __tablename__ = "facts"
    __table_args__ = (
        Index(
            "ix_facts_user_id_live",
            "user_id",
            postgresql_where=text("valid_to IS NULL"),
        ),
        Index(
            "ix_facts_user_id_fact_key_live",
            "user_id",
            "fact_key",
            postgresql_where=text("valid_to IS NULL AND fact_key IS NOT NULL"),
        ),
        Index(
            "uq_facts_user_id_content_live",
            "user_id",
            text("md5(content)"),
            unique=True,
            postgresql_where=text("valid_to IS NULL"),
        ),
        Index(None, "session_id", "group_no"),
        Index(None, "agent_id"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="validity_range"),
        _text_index("facts"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _tenant("users")
    agent_id: Mapped[uuid.UUID | None] = _tenant("agents", nullable=True)
    session_id: Mapped[uuid.UUID | None] = _tenant("sessions", nullable=True)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    fact_type: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'statement'"))
    entities: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
    )
    fact_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    confidence: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("1.0"))
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), nullable=False, server_default=text("'{}'::uuid[]")
    )
    episode_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey(f"{SCHEMA}.episodes.id", ondelete="SET NULL"),
        nullable=True,
    )
    valid_from: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=_NOW
    )
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey(f"{SCHEMA}.facts.id", ondelete="SET NULL"),
        nullable=True,
    )
    group_no: Mapped[int] = mapped_column(BigInteger, nullable=False)
    """The fact group of its first source message (:func:`fact_group`)."""
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    content_tsv: Mapped[Any] = _content_tsv()


class FactGroup(Base):
    """The one stored vector of a fact group: the facts of a session whose first source message
    is one of the same :data:`FACT_GROUP_MESSAGES` consecutive messages, embedded as one text.

    The embedding worker creates the row when it writes the vector, and writes it only while
    the group's text is the one it embedded; the M2 vector list ranks groups, then their live
    facts. Deleting a session's facts deletes its groups.
    """

    __tablename__ = "fact_groups"
    __table_args__ = (
        Index(None, "user_id"),
        Index(None, "agent_id"),
        _vector_index("fact_groups"),
    )

    session_id: Mapped[uuid.UUID] = _session_key()
    group_no: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[uuid.UUID] = _tenant("users")
    agent_id: Mapped[uuid.UUID | None] = _tenant("agents", nullable=True)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    embedding: Mapped[list[float]] = mapped_column(Vector(), nullable=False)


class Knowledge(Base):
    """A knowledge item: something a user or an app states outright ("Alice is allergic to
    peanuts"), kept per user beside the conversation layers and searched as its own layer.

    ``namespace`` and ``key`` address an item the way a key-value store does (LangGraph's
    ``BaseStore``: one live item per user, namespace and key); items without a key are plain
    statements. ``value`` holds the caller's JSON as given; ``content`` is the text that is
    embedded and full-text indexed. ``expires_at`` (from ``ttl_seconds``) hides an item from
    every read once passed; a sweep deletes it later. An item stored with ``indexed`` false
    (LangGraph's ``index=False``) is neither embedded nor full-text indexed: it is found by
    namespace, key and value only.
    """

    __tablename__ = "knowledge"
    __table_args__ = (
        Index(
            "uq_knowledge_user_id_namespace_key",
            "user_id",
            "namespace",
            "key",
            unique=True,
            postgresql_where=text("key IS NOT NULL"),
        ),
        Index(None, "user_id", "created_at"),
        Index(
            "ix_knowledge_expires_at", "expires_at", postgresql_where=text("expires_at IS NOT NULL")
        ),
        CheckConstraint("ttl_seconds IS NULL OR ttl_seconds > 0", name="ttl_positive"),
        *_memory_indexes("knowledge"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _tenant("users")
    namespace: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
    )
    key: Mapped[str | None] = mapped_column(Text, nullable=True)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    value: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    ttl_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    indexed: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    embedding: Mapped[list[float] | None] = _embedding()
    content_tsv: Mapped[Any] = _content_tsv(KNOWLEDGE_TSVECTOR)


class ApiKey(Base):
    """A server API key of one user, stored only as its SHA-256 hash.

    The clear key is shown once, when it is created; ``prefix`` (its first characters) lets a
    user tell keys apart. A key past ``expires_at`` is refused.
    """

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "user_id"),)

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _tenant("users")
    name: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_hash: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    permissions: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=_EMPTY_OBJECT
    )
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = _created_at()


class LayerProgress(Base):
    """How far one layer (``m1`` or ``m2``) has processed one session's messages.

    ``processed_seq`` moves in the same transaction as the layer's rows, so a crash leaves
    the messages after it to be processed again and none twice. An edit of a message resets
    it and bumps ``generation``, so work computed from the old text is discarded.
    ``failures`` and ``retry_after`` back off a session whose processing keeps failing.
    """

    __tablename__ = "layer_progress"
    __table_args__ = (
        CheckConstraint(
            "layer IN (" + ", ".join(f"'{layer}'" for layer in DERIVED_LAYERS) + ")",
            name="layer_known",
        ),
        CheckConstraint("processed_seq >= 0", name="processed_seq_positive"),
        Index(None, "user_id"),
    )

    session_id: Mapped[uuid.UUID] = _session_key()
    layer: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[uuid.UUID] = _tenant("users")
    processed_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    retry_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = _updated_at()


class EmbeddingJob(Base):
    """A queued embedding of one row, written by a trigger in the row's own transaction."""

    __tablename__ = "embedding_jobs"
    __table_args__ = (
        CheckConstraint(
            "table_name IN (" + ", ".join(f"'{name}'" for name in EMBEDDABLE_TABLES) + ")",
            name="table_known",
        ),
        Index(None, "retry_after", "id"),
        Index(None, "table_name", "row_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    table_name: Mapped[str] = mapped_column(Text, nullable=False)
    row_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    retry_after: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The lease of the worker embedding this job: no row lock is held while the model runs.
    locked_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EmbeddingDeadLetter(Base):
    """A job that failed too often, kept with its last error until someone re-queues it."""

    __tablename__ = "embedding_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    table_name: Mapped[str] = mapped_column(Text, nullable=False)
    row_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    last_error: Mapped[str] = mapped_column(Text, nullable=False)
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=_NOW
    )
