"""Knowledge items, server API keys, and agents shared by every user.

``knowledge`` holds what a user or an app states outright, per user, beside the conversation
layers: embedded and full-text indexed through the same queue triggers as messages, episodes
and facts (unless stored with ``indexed`` false), and searched as its own layer.
``namespace`` + ``key`` address an item as a key-value store does (one live item per user,
namespace and key), ``value`` keeps the caller's JSON, ``ttl_seconds``/``expires_at`` let it
expire.

``api_keys`` holds the server's per-user keys as SHA-256 hashes only.

The queue's ``table_known`` check now admits ``knowledge``.

An agent's ``user_id`` may be NULL: an agent shared by every user, as the REST server's clients
create agents before they name a user. Shared names are unique among shared agents.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from memfuse.db.migrate import DIMENSION_KEY, migration_options
from memfuse.db.vector import Vector

KNOWLEDGE_TSVECTOR = (
    "CASE WHEN indexed THEN to_tsvector('english'::regconfig, content) ELSE ''::tsvector END"
)
"""A copy of memfuse.db.models.KNOWLEDGE_TSVECTOR as of this revision."""

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED_BEFORE = ("messages", "episodes", "facts")
QUEUED_AFTER = (*QUEUED_BEFORE, "knowledge")


TABLE_KNOWN = "ck_embedding_jobs_ck_embedding_jobs_table_known"
"""The queue's check as 0001 named it (the naming convention prefixed the given name)."""


def _replace_table_known(s: str, tables: Sequence[str]) -> None:
    allowed = ", ".join(f"'{name}'" for name in tables)
    op.execute(f"""
        ALTER TABLE "{s}".embedding_jobs DROP CONSTRAINT {TABLE_KNOWN},
        ADD CONSTRAINT {TABLE_KNOWN} CHECK (table_name IN ({allowed}))""")


def _user_fk(s: str, owner: str) -> sa.Column[object]:
    return sa.Column(
        "user_id",
        postgresql.UUID(as_uuid=True),
        sa.ForeignKey(f"{s}.users.id", ondelete="CASCADE", name=f"fk_{owner}_user_id_users"),
        nullable=False,
    )


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    )


def upgrade() -> None:
    s = migration_options(context.config).schema
    # The dimension the schema was created with, not the one configured now.
    dimension = int(
        op.get_bind()
        .execute(
            sa.text(f'SELECT value FROM "{s}".schema_info WHERE key = :key'),
            {"key": DIMENSION_KEY},
        )
        .scalar_one()
    )
    op.create_table(
        "knowledge",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            server_default=sa.text("gen_random_uuid()"),
        ),
        _user_fk(s, "knowledge"),
        sa.Column(
            "namespace",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("ttl_seconds", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("indexed", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("embedding", Vector(dimension), nullable=True),
        sa.Column(
            "content_tsv",
            postgresql.TSVECTOR(),
            sa.Computed(KNOWLEDGE_TSVECTOR, persisted=True),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_knowledge"),
        # The naming convention makes this ck_knowledge_ttl_positive.
        sa.CheckConstraint("ttl_seconds IS NULL OR ttl_seconds > 0", name="ttl_positive"),
        schema=s,
    )
    op.create_index(
        "uq_knowledge_user_id_namespace_key",
        "knowledge",
        ["user_id", "namespace", "key"],
        unique=True,
        schema=s,
        postgresql_where=sa.text("key IS NOT NULL"),
    )
    op.create_index(
        "ix_knowledge_user_id_created_at", "knowledge", ["user_id", "created_at"], schema=s
    )
    op.create_index(
        "ix_knowledge_expires_at",
        "knowledge",
        ["expires_at"],
        schema=s,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_knowledge_embedding_hnsw",
        "knowledge",
        ["embedding"],
        schema=s,
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index(
        "ix_knowledge_content_tsv_gin",
        "knowledge",
        ["content_tsv"],
        schema=s,
        postgresql_using="gin",
    )
    # The same triggers as the other memory tables (0001, 0005, 0006).
    # updated_at is the item's last change by a caller: not its vector's arrival, nor a read
    # that restarts its TTL (LangGraph's stores keep it so).
    op.execute(f"""
        CREATE TRIGGER knowledge_touch_updated_at
        BEFORE UPDATE OF content, value, metadata, namespace, key, ttl_seconds, indexed
        ON "{s}".knowledge
        FOR EACH ROW EXECUTE FUNCTION "{s}".touch_updated_at()""")
    op.execute(f"""
        CREATE TRIGGER knowledge_clear_stale_embedding
        BEFORE UPDATE OF content, indexed ON "{s}".knowledge
        FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content OR NOT NEW.indexed)
        EXECUTE FUNCTION "{s}".clear_stale_embedding()""")
    # As enqueue_embedding_rows (0006), for indexed items only.
    op.execute(f"""
        CREATE FUNCTION "{s}".enqueue_knowledge_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_rows WHERE embedding IS NULL AND indexed) THEN
                INSERT INTO "{s}".embedding_jobs (table_name, row_id)
                SELECT TG_TABLE_NAME, n.id FROM new_rows AS n
                WHERE n.embedding IS NULL AND n.indexed;
            END IF;
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER knowledge_enqueue_on_insert AFTER INSERT ON "{s}".knowledge
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".enqueue_knowledge_rows()""")
    op.execute(f"""
        CREATE TRIGGER knowledge_enqueue_on_content_change
        AFTER UPDATE OF content, indexed ON "{s}".knowledge
        FOR EACH ROW WHEN (
            NEW.indexed AND (OLD.content IS DISTINCT FROM NEW.content OR NOT OLD.indexed)
        )
        EXECUTE FUNCTION "{s}".enqueue_embedding()""")
    op.execute(f"""
        CREATE TRIGGER knowledge_drop_embedding_jobs AFTER DELETE ON "{s}".knowledge
        FOR EACH ROW EXECUTE FUNCTION "{s}".drop_embedding_jobs()""")
    _replace_table_known(s, QUEUED_AFTER)

    op.create_table(
        "api_keys",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            server_default=sa.text("gen_random_uuid()"),
        ),
        _user_fk(s, "api_keys"),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column(
            "permissions",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        schema=s,
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"], schema=s)

    op.alter_column("agents", "user_id", nullable=True, schema=s)
    op.create_index(
        "uq_agents_name_shared",
        "agents",
        ["name"],
        unique=True,
        schema=s,
        postgresql_where=sa.text("user_id IS NULL"),
    )


def downgrade() -> None:
    s = migration_options(context.config).schema
    # Shared agents have no user to belong to: they go, with their sessions' memory.
    op.execute(f'DELETE FROM "{s}".agents WHERE user_id IS NULL')
    op.drop_index("uq_agents_name_shared", "agents", schema=s)
    op.alter_column("agents", "user_id", nullable=False, schema=s)
    op.drop_table("api_keys", schema=s)
    op.execute(f"DELETE FROM \"{s}\".embedding_jobs WHERE table_name = 'knowledge'")
    op.execute(f"DELETE FROM \"{s}\".embedding_dead_letters WHERE table_name = 'knowledge'")
    _replace_table_known(s, QUEUED_BEFORE)
    op.drop_table("knowledge", schema=s)
    op.execute(f'DROP FUNCTION "{s}".enqueue_knowledge_rows()')
