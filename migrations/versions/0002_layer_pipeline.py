"""Layer pipeline: per-session progress of M1/M2, fact slots and one live copy of each fact.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from memfuse.db.migrate import migration_options

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = migration_options(context.config).schema
    # How far each layer has folded each session's messages; advanced in the same
    # transaction as the layer's rows, so a crash can neither lose nor repeat work.
    op.create_table(
        "layer_progress",
        sa.Column(
            "session_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                f"{s}.sessions.id", ondelete="CASCADE", name="fk_layer_progress_session_id_sessions"
            ),
            nullable=False,
        ),
        sa.Column("layer", sa.Text(), nullable=False),
        sa.Column(
            "user_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                f"{s}.users.id", ondelete="CASCADE", name="fk_layer_progress_user_id_users"
            ),
            nullable=False,
        ),
        sa.Column("processed_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("retry_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("session_id", "layer", name="pk_layer_progress"),
        sa.CheckConstraint("layer IN ('m1', 'm2')", name="ck_layer_progress_layer_known"),
        sa.CheckConstraint("processed_seq >= 0", name="ck_layer_progress_processed_seq_positive"),
        schema=s,
    )
    op.create_index("ix_layer_progress_user_id", "layer_progress", ["user_id"], schema=s)
    op.execute(f"""
        CREATE TRIGGER layer_progress_touch_updated_at BEFORE UPDATE ON "{s}".layer_progress
        FOR EACH ROW EXECUTE FUNCTION "{s}".touch_updated_at()""")

    op.create_unique_constraint(
        "uq_episodes_session_id_first_seq", "episodes", ["session_id", "first_seq"], schema=s
    )

    op.add_column("facts", sa.Column("fact_key", sa.Text(), nullable=True), schema=s)
    op.create_index(
        "ix_facts_user_id_fact_key_live",
        "facts",
        ["user_id", "fact_key"],
        schema=s,
        postgresql_where=sa.text("valid_to IS NULL AND fact_key IS NOT NULL"),
    )
    # The rule "an exact duplicate of a live fact is not stored twice", kept by the database.
    op.create_index(
        "uq_facts_user_id_content_live",
        "facts",
        ["user_id", sa.text("md5(content)")],
        unique=True,
        schema=s,
        postgresql_where=sa.text("valid_to IS NULL"),
    )


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.drop_index("uq_facts_user_id_content_live", "facts", schema=s)
    op.drop_index("ix_facts_user_id_fact_key_live", "facts", schema=s)
    op.drop_column("facts", "fact_key", schema=s)
    op.drop_constraint("uq_episodes_session_id_first_seq", "episodes", schema=s)
    op.drop_table("layer_progress", schema=s)
