"""One stored vector per fact group: ``fact_groups`` holds it, facts point to their group.

Since issue 14 the facts drawn from the same four consecutive messages of a session (a *fact
group*, ``memfuse.db.models.fact_group``) are embedded as one text, but every fact row stored
that group's vector again: about eight copies per group, each in the facts' HNSW index. Now:

- ``facts.group_no`` is the group of a fact's first source message (``(seq - 1) / 4``, set when
  the fact is stored; filled here from each fact's source message). The index on
  ``(session_id, group_no)`` finds a group's facts and replaces the one on ``session_id``.
- ``fact_groups`` holds one row per embedded group, keyed by ``(session_id, group_no)``, with
  its owner and its vector (never NULL: the embedding worker creates the row when it writes
  the vector). Its HNSW index replaces the facts'. The group's vector is written only while the
  group's text is the one that was embedded (the worker checks it in the same transaction).
- ``facts.embedding`` goes, with its HNSW index and its stale-vector trigger. A fact is still
  queued for embedding when it is stored (its job embeds its group's text), so the queue, the
  held-back groups and ``flush()`` are unchanged; the insert trigger no longer reads a vector.

Existing vectors move: each group keeps the vector of its newest embedded fact. Downgrading
copies each group's vector back to its facts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from memfuse.db.migrate import DIMENSION_KEY, migration_options
from memfuse.db.vector import Vector

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACT_GROUP_MESSAGES = 4
"""A copy of memfuse.db.models.FACT_GROUP_MESSAGES as of this revision."""


def _dimension(s: str) -> int:
    """The dimension the schema was created with, not the one configured now."""
    return int(
        op.get_bind()
        .execute(
            sa.text(f'SELECT value FROM "{s}".schema_info WHERE key = :key'),
            {"key": DIMENSION_KEY},
        )
        .scalar_one()
    )


def _tenant(s: str, column: str, table: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(
        column,
        postgresql.UUID(as_uuid=True),
        sa.ForeignKey(
            f"{s}.{table}.id", ondelete="CASCADE", name=f"fk_fact_groups_{column}_{table}"
        ),
        nullable=nullable,
    )


def _create_vector_index(s: str, table: str) -> None:
    op.create_index(
        f"ix_{table}_embedding_hnsw",
        table,
        ["embedding"],
        schema=s,
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    )


def upgrade() -> None:
    s = migration_options(context.config).schema
    dimension = _dimension(s)
    op.add_column("facts", sa.Column("group_no", sa.BigInteger(), nullable=True), schema=s)
    op.execute(f"""
        UPDATE "{s}".facts AS f SET group_no = (m.seq - 1) / {FACT_GROUP_MESSAGES}
        FROM "{s}".messages AS m WHERE m.id = f.message_ids[1]""")
    # A fact whose first source message is gone (a session rebuilt meanwhile) is its own group
    # 0 until the pipeline derives the session again.
    op.execute(f'UPDATE "{s}".facts SET group_no = 0 WHERE group_no IS NULL')
    op.alter_column("facts", "group_no", nullable=False, schema=s)
    op.drop_index("ix_facts_session_id", "facts", schema=s)
    op.create_index("ix_facts_session_id_group_no", "facts", ["session_id", "group_no"], schema=s)

    op.create_table(
        "fact_groups",
        _tenant(s, "session_id", "sessions", nullable=False),
        sa.Column("group_no", sa.BigInteger(), nullable=False),
        _tenant(s, "user_id", "users", nullable=False),
        _tenant(s, "agent_id", "agents", nullable=True),
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
        sa.Column("embedding", Vector(dimension), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "group_no", name="pk_fact_groups"),
        schema=s,
    )
    op.create_index("ix_fact_groups_user_id", "fact_groups", ["user_id"], schema=s)
    op.create_index("ix_fact_groups_agent_id", "fact_groups", ["agent_id"], schema=s)
    op.execute(f"""
        INSERT INTO "{s}".fact_groups (session_id, group_no, user_id, agent_id, embedding)
        SELECT DISTINCT ON (session_id, group_no) session_id, group_no, user_id, agent_id,
               embedding
        FROM "{s}".facts
        WHERE embedding IS NOT NULL AND session_id IS NOT NULL
        ORDER BY session_id, group_no, created_at DESC, id""")
    _create_vector_index(s, "fact_groups")

    op.execute(f'DROP TRIGGER facts_clear_stale_embedding ON "{s}".facts')
    op.execute(f'DROP TRIGGER facts_enqueue_on_insert ON "{s}".facts')
    # Every stored fact is queued: its job embeds its group's text.
    op.execute(f"""
        CREATE FUNCTION "{s}".enqueue_all_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_rows) THEN
                INSERT INTO "{s}".embedding_jobs (table_name, row_id)
                SELECT TG_TABLE_NAME, n.id FROM new_rows AS n;
            END IF;
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER facts_enqueue_on_insert AFTER INSERT ON "{s}".facts
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".enqueue_all_rows()""")
    op.drop_index("ix_facts_embedding_hnsw", "facts", schema=s)
    op.drop_column("facts", "embedding", schema=s)
    op.execute(
        f'CREATE TRIGGER fact_groups_touch_updated_at BEFORE UPDATE ON "{s}".fact_groups '
        f'FOR EACH ROW EXECUTE FUNCTION "{s}".touch_updated_at()'
    )


def downgrade() -> None:
    s = migration_options(context.config).schema
    dimension = _dimension(s)
    op.add_column("facts", sa.Column("embedding", Vector(dimension), nullable=True), schema=s)
    op.execute(f"""
        UPDATE "{s}".facts AS f SET embedding = g.embedding
        FROM "{s}".fact_groups AS g
        WHERE g.session_id = f.session_id AND g.group_no = f.group_no""")
    _create_vector_index(s, "facts")
    op.execute(f'DROP TRIGGER facts_enqueue_on_insert ON "{s}".facts')
    op.execute(f'DROP FUNCTION "{s}".enqueue_all_rows()')
    op.execute(f"""
        CREATE TRIGGER facts_enqueue_on_insert AFTER INSERT ON "{s}".facts
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".enqueue_embedding_rows()""")
    op.execute(f"""
        CREATE TRIGGER facts_clear_stale_embedding BEFORE UPDATE OF content ON "{s}".facts
        FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
        EXECUTE FUNCTION "{s}".clear_stale_embedding()""")
    op.drop_table("fact_groups", schema=s)
    op.drop_index("ix_facts_session_id_group_no", "facts", schema=s)
    op.create_index("ix_facts_session_id", "facts", ["session_id"], schema=s)
    op.drop_column("facts", "group_no", schema=s)
