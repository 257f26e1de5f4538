"""Leased embedding jobs: the worker holds no lock while the model runs.

Before this revision a worker held ``FOR UPDATE`` locks on its jobs for the whole model call
and then updated the memory rows, while a deletion locks the memory rows first and its
``drop_embedding_jobs`` trigger then needs the job rows: the opposite order, and deadlocks.
Now a worker *leases* jobs in a short transaction (``locked_by``, ``locked_until``) and
commits; it embeds with no transaction open, then writes vectors in a second short
transaction that locks memory rows before jobs, as every writer does, and never waits for a
lock (``SKIP LOCKED``). A lease that expires (a crashed worker) makes its jobs claimable again.

The coalescing trigger of 0003 now skips jobs under a live lease instead of jobs under a row
lock: a leased job's worker may have read the old text. When an edit coalesces into a job
whose lease has expired, it clears the lease, so the late worker no longer owns the job and
cannot delete it after embedding the old text.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from memfuse.db.migrate import migration_options

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = migration_options(context.config).schema
    op.add_column("embedding_jobs", sa.Column("locked_by", sa.Text(), nullable=True), schema=s)
    op.add_column(
        "embedding_jobs",
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        schema=s,
    )
    op.execute(f"""
        CREATE OR REPLACE FUNCTION "{s}".enqueue_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                UPDATE "{s}".embedding_jobs SET locked_by = NULL, locked_until = NULL
                WHERE id = (
                    SELECT id FROM "{s}".embedding_jobs
                    WHERE table_name = TG_TABLE_NAME AND row_id = NEW.id AND attempts = 0
                      AND (locked_until IS NULL OR locked_until < clock_timestamp())
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                );
                IF FOUND THEN
                    RETURN NULL;
                END IF;
            END IF;
            INSERT INTO "{s}".embedding_jobs (table_name, row_id) VALUES (TG_TABLE_NAME, NEW.id);
            RETURN NULL;
        END
        $$""")


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.execute(f"""
        CREATE OR REPLACE FUNCTION "{s}".enqueue_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                PERFORM 1 FROM "{s}".embedding_jobs
                WHERE table_name = TG_TABLE_NAME AND row_id = NEW.id AND attempts = 0
                LIMIT 1
                FOR UPDATE SKIP LOCKED;
                IF FOUND THEN
                    RETURN NULL;
                END IF;
            END IF;
            INSERT INTO "{s}".embedding_jobs (table_name, row_id) VALUES (TG_TABLE_NAME, NEW.id);
            RETURN NULL;
        END
        $$""")
    op.drop_column("embedding_jobs", "locked_until", schema=s)
    op.drop_column("embedding_jobs", "locked_by", schema=s)
