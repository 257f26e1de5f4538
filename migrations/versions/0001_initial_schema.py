"""Initial schema: tenancy, M0/M1/M2 memory tables, embedding queue and its triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from memfuse.db.migrate import DIMENSION_KEY, migration_options
from memfuse.db.models import embedding_channel
from memfuse.db.vector import Vector

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDABLE = ("messages", "episodes", "facts")
TENANCY = ("users", "agents", "sessions")


def _uuid_pk() -> sa.Column[object]:
    return sa.Column(
        "id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()")
    )


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    ]


def _metadata() -> sa.Column[object]:
    return sa.Column(
        "metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
    )


def _tenant(
    owner: str, column: str, table: str, schema: str, *, nullable: bool = False
) -> sa.Column[object]:
    return sa.Column(
        column,
        postgresql.UUID(as_uuid=True),
        sa.ForeignKey(
            f"{schema}.{table}.id", ondelete="CASCADE", name=f"fk_{owner}_{column}_{table}"
        ),
        nullable=nullable,
    )


def _searchable(dimension: int) -> list[sa.Column[object]]:
    return [
        sa.Column("embedding", Vector(dimension), nullable=True),
        sa.Column(
            "content_tsv",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english'::regconfig, content)", persisted=True),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    options = migration_options(context.config)
    s = options.schema
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")

    op.create_table(
        "schema_info",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_schema_info"),
        schema=s,
    )
    op.execute(
        sa.text(f'INSERT INTO "{s}".schema_info (key, value) VALUES (:key, :value)').bindparams(
            key=DIMENSION_KEY, value=str(options.embedding_dimension)
        )
    )

    op.create_table(
        "users",
        _uuid_pk(),
        sa.Column("name", sa.Text(), nullable=False),
        _metadata(),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        schema=s,
    )
    op.create_table(
        "agents",
        _uuid_pk(),
        _tenant("agents", "user_id", "users", s),
        sa.Column("name", sa.Text(), nullable=False),
        _metadata(),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("user_id", "name", name="uq_agents_user_id_name"),
        schema=s,
    )
    op.create_table(
        "sessions",
        _uuid_pk(),
        _tenant("sessions", "user_id", "users", s),
        _tenant("sessions", "agent_id", "agents", s),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        _metadata(),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("user_id", "name", name="uq_sessions_user_id_name"),
        sa.CheckConstraint("message_count >= 0", name="ck_sessions_message_count_non_negative"),
        schema=s,
    )
    op.create_index("ix_sessions_agent_id", "sessions", ["agent_id"], schema=s)

    op.create_table(
        "messages",
        _uuid_pk(),
        _tenant("messages", "user_id", "users", s),
        _tenant("messages", "agent_id", "agents", s),
        _tenant("messages", "session_id", "sessions", s),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _metadata(),
        *_timestamps(),
        *_searchable(options.embedding_dimension),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("session_id", "seq", name="uq_messages_session_id_seq"),
        sa.CheckConstraint(
            "role IN ('user', 'assistant', 'system', 'tool')", name="ck_messages_role_known"
        ),
        sa.CheckConstraint("seq > 0", name="ck_messages_seq_positive"),
        schema=s,
    )
    op.create_index(
        "ix_messages_user_id_created_at", "messages", ["user_id", "created_at"], schema=s
    )
    op.create_index("ix_messages_agent_id", "messages", ["agent_id"], schema=s)

    op.create_table(
        "episodes",
        _uuid_pk(),
        _tenant("episodes", "user_id", "users", s),
        _tenant("episodes", "agent_id", "agents", s),
        _tenant("episodes", "session_id", "sessions", s),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("message_ids", postgresql.ARRAY(postgresql.UUID(as_uuid=True)), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        _metadata(),
        *_timestamps(),
        *_searchable(options.embedding_dimension),
        sa.PrimaryKeyConstraint("id", name="pk_episodes"),
        sa.CheckConstraint("first_seq <= last_seq", name="ck_episodes_seq_range"),
        schema=s,
    )
    op.create_index(
        "ix_episodes_user_id_session_id_first_seq",
        "episodes",
        ["user_id", "session_id", "first_seq"],
        schema=s,
    )
    op.create_index("ix_episodes_agent_id", "episodes", ["agent_id"], schema=s)

    op.create_table(
        "facts",
        _uuid_pk(),
        _tenant("facts", "user_id", "users", s),
        _tenant("facts", "agent_id", "agents", s, nullable=True),
        _tenant("facts", "session_id", "sessions", s, nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("fact_type", sa.Text(), nullable=False, server_default=sa.text("'statement'")),
        sa.Column(
            "entities",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column("confidence", sa.Float(), nullable=False, server_default=sa.text("1.0")),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "message_ids",
            postgresql.ARRAY(postgresql.UUID(as_uuid=True)),
            nullable=False,
            server_default=sa.text("'{}'::uuid[]"),
        ),
        sa.Column(
            "episode_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                f"{s}.episodes.id", ondelete="SET NULL", name="fk_facts_episode_id_episodes"
            ),
            nullable=True,
        ),
        sa.Column(
            "valid_from",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "superseded_by",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                f"{s}.facts.id", ondelete="SET NULL", name="fk_facts_superseded_by_facts"
            ),
            nullable=True,
        ),
        _metadata(),
        *_timestamps(),
        *_searchable(options.embedding_dimension),
        sa.PrimaryKeyConstraint("id", name="pk_facts"),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_facts_confidence_range"),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to >= valid_from", name="ck_facts_validity_range"
        ),
        schema=s,
    )
    op.create_index(
        "ix_facts_user_id_live",
        "facts",
        ["user_id"],
        schema=s,
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.create_index("ix_facts_session_id", "facts", ["session_id"], schema=s)
    op.create_index("ix_facts_agent_id", "facts", ["agent_id"], schema=s)

    for table in EMBEDDABLE:
        op.create_index(
            f"ix_{table}_embedding_hnsw",
            table,
            ["embedding"],
            schema=s,
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        )
        op.create_index(
            f"ix_{table}_content_tsv_gin", table, ["content_tsv"], schema=s, postgresql_using="gin"
        )

    op.create_table(
        "embedding_jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "enqueued_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column(
            "retry_after",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_embedding_jobs"),
        sa.CheckConstraint(
            "table_name IN ('messages', 'episodes', 'facts')", name="ck_embedding_jobs_table_known"
        ),
        schema=s,
    )
    op.create_index(
        "ix_embedding_jobs_retry_after_id", "embedding_jobs", ["retry_after", "id"], schema=s
    )
    op.create_index(
        "ix_embedding_jobs_table_name_row_id", "embedding_jobs", ["table_name", "row_id"], schema=s
    )
    op.create_table(
        "embedding_dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.PrimaryKeyConstraint("id", name="pk_embedding_dead_letters"),
        schema=s,
    )

    _create_trigger_functions(s)


def _create_trigger_functions(s: str) -> None:
    # updated_at is maintained by the database, so no code path can forget it.
    op.execute(f"""
        CREATE FUNCTION "{s}".touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $$""")
    # A changed text makes its old vector wrong: drop it so search never serves a stale vector.
    op.execute(f"""
        CREATE FUNCTION "{s}".clear_stale_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.embedding := NULL;
            RETURN NEW;
        END
        $$""")
    # Transactional outbox: the job commits with the row, or neither does.
    op.execute(f"""
        CREATE FUNCTION "{s}".enqueue_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{s}".embedding_jobs (table_name, row_id) VALUES (TG_TABLE_NAME, NEW.id);
            RETURN NULL;
        END
        $$""")
    # A deleted row needs no vector: its pending jobs go with it.
    op.execute(f"""
        CREATE FUNCTION "{s}".drop_embedding_jobs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM "{s}".embedding_jobs WHERE table_name = TG_TABLE_NAME AND row_id = OLD.id;
            RETURN NULL;
        END
        $$""")
    # A wake-up only: listeners may miss it, so workers also poll.
    op.execute(f"""
        CREATE FUNCTION "{s}".notify_embedding_jobs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{embedding_channel(s)}', '');
            RETURN NULL;
        END
        $$""")

    for table in (*TENANCY, *EMBEDDABLE):
        op.execute(f"""
            CREATE TRIGGER {table}_touch_updated_at BEFORE UPDATE ON "{s}".{table}
            FOR EACH ROW EXECUTE FUNCTION "{s}".touch_updated_at()""")
    for table in EMBEDDABLE:
        op.execute(f"""
            CREATE TRIGGER {table}_clear_stale_embedding BEFORE UPDATE OF content ON "{s}".{table}
            FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
            EXECUTE FUNCTION "{s}".clear_stale_embedding()""")
        op.execute(f"""
            CREATE TRIGGER {table}_enqueue_on_insert AFTER INSERT ON "{s}".{table}
            FOR EACH ROW WHEN (NEW.embedding IS NULL)
            EXECUTE FUNCTION "{s}".enqueue_embedding()""")
        op.execute(f"""
            CREATE TRIGGER {table}_enqueue_on_content_change
            AFTER UPDATE OF content ON "{s}".{table}
            FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
            EXECUTE FUNCTION "{s}".enqueue_embedding()""")
    for table in EMBEDDABLE:
        op.execute(f"""
            CREATE TRIGGER {table}_drop_embedding_jobs AFTER DELETE ON "{s}".{table}
            FOR EACH ROW EXECUTE FUNCTION "{s}".drop_embedding_jobs()""")
    op.execute(f"""
        CREATE TRIGGER embedding_jobs_notify AFTER INSERT ON "{s}".embedding_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".notify_embedding_jobs()""")


def downgrade() -> None:
    s = migration_options(context.config).schema
    for table in (
        "embedding_dead_letters",
        "embedding_jobs",
        "facts",
        "episodes",
        "messages",
        "sessions",
        "agents",
        "users",
        "schema_info",
    ):
        op.drop_table(table, schema=s)
    for function in (
        "touch_updated_at",
        "clear_stale_embedding",
        "enqueue_embedding",
        "drop_embedding_jobs",
        "notify_embedding_jobs",
    ):
        op.execute(f'DROP FUNCTION "{s}".{function}()')
