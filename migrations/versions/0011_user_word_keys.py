"""A message's words are indexed under keys of its user: a full-text search reads only its
user's posting lists.

Migration 0010 indexed each message's words plus one lexeme naming its user, and the search
ANDed that lexeme into its query: the index returned only the user's matches, but GIN walked
the user lexeme's posting list, one entry per message of the user, to do it (1.4 of the M0
full-text list's 4.3 ms with 100,000 messages of the user, and growing with the history).
Now each word is indexed as its user's key (the first 8 hex digits of the user's id, then the
word; words over 200 characters as they are, so a key still fits a lexeme), and the search
ORs the user's keys of its terms: the scan reads only the posting lists of this user's words
(0.17 ms for the same list). It replaces ``ix_messages_words_gin``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from memfuse.db.migrate import migration_options

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE_USER_WORDS = (
    "(regexp_replace(content_tsv::text, "
    r"'(^| )''((?:[^''\\]|''''|\\\\){1,200}''(?=:| |$))'::text, "
    r"""('\1'''::text || "left"(user_id::text, 8)) || '\2'::text, 'g'::text)::tsvector)"""
)
"""A copy of memfuse.db.models.MESSAGE_USER_WORDS as of this revision."""

MESSAGE_WORDS_OF_USER = "(content_tsv || array_to_tsvector(ARRAY['user '::text || user_id::text]))"
"""Migration 0010's expression, for the downgrade."""


def upgrade() -> None:
    s = migration_options(context.config).schema
    op.create_index(
        "ix_messages_user_words_gin",
        "messages",
        [sa.text(MESSAGE_USER_WORDS)],
        schema=s,
        postgresql_using="gin",
        postgresql_where=sa.text("content_tsv IS NOT NULL"),
    )
    op.drop_index("ix_messages_words_gin", "messages", schema=s)


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.create_index(
        "ix_messages_words_gin",
        "messages",
        [sa.text(MESSAGE_WORDS_OF_USER)],
        schema=s,
        postgresql_using="gin",
        postgresql_where=sa.text("content_tsv IS NOT NULL"),
    )
    op.drop_index("ix_messages_user_words_gin", "messages", schema=s)
