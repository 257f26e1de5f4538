"""Coalesce embedding jobs: a row edited again before a worker took its job keeps one job.

An M1 episode grows with every message of its session, and each growth changed its text and
queued another job; the worker then embedded the same row many times over. A queued job that
no worker holds reads the row's text when it is claimed, so it already covers any later edit.
The trigger locks that job until the edit commits (so no worker claims it in between, with the
old text); a job a worker holds right now is skipped (``SKIP LOCKED``), and the edit queues a
new one, since that worker may have read the old text.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from memfuse.db.migrate import migration_options

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.execute(f"""
        CREATE OR REPLACE FUNCTION "{s}".enqueue_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{s}".embedding_jobs (table_name, row_id) VALUES (TG_TABLE_NAME, NEW.id);
            RETURN NULL;
        END
        $$""")
