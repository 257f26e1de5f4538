"""A message's words are indexed under keys of its user: a full-text search reads only its
user's posting lists.

Migration 0010 indexed each message's words plus one lexeme naming its user, and the search
ANDed that lexeme into its query: the index returned only the user's matches, but GIN walked
the user lexeme's posting list, one entry per message of the user, to do it (1.4 of the M0
full-text list's 4.3 ms with 100,000 messages of the user, and growing with the history).
Now each word is indexed as its user's key (the first 8 hex digits of the user's id, then the
word; words of more than 2038 bytes as they are, so that every key fits a lexeme's 2046
bytes), and the search ORs the user's keys of its terms: the scan reads only the posting lists
of this user's words. It replaces ``ix_messages_words_gin``.

The keys are made by two immutable SQL functions in memfuse's schema, ``user_word`` (one
lexeme) and ``user_words`` (a tsvector): the index and the search call the same rule. A first
version made them with ``regexp_replace`` over the tsvector's text (built-ins only) and cost
1.7 ms per indexed row; these cost about 27 microseconds (docs/retrieval.md).

Upgrading builds the index over every indexed message in the migration's transaction, so
writes to ``messages`` wait for it: 5.9 s for the 150,000 messages of the retrieval
benchmark's 100k schema on its 2-core machine (1.0 s for migration 0010's index).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
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

MESSAGE_WORDS_OF_USER = "(content_tsv || array_to_tsvector(ARRAY['user '::text || user_id::text]))"
"""Migration 0010's expression, for the downgrade."""


def _functions(s: str) -> tuple[str, str]:
    return (
        f"""
        -- The key of one word of a user: 8 hex digits of the user's id, then the word; a word
        -- too long for a prefixed key to fit a lexeme (2046 bytes) is its own key.
        CREATE FUNCTION "{s}".user_word(word text, owner uuid) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$
            SELECT CASE WHEN octet_length(word) <= 2038 THEN left(owner::text, 8) || word
                        ELSE word END
        $$
        """,
        f"""
        -- Every word of a tsvector as its user's key (no positions: the index only matches).
        CREATE FUNCTION "{s}".user_words(words tsvector, owner uuid) RETURNS tsvector
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$
            SELECT array_to_tsvector(ARRAY(
                SELECT "{s}".user_word(word, owner) FROM unnest(tsvector_to_array(words)) AS word
            ))
        $$
        """,
    )


def upgrade() -> None:
    s = migration_options(context.config).schema
    for function in _functions(s):
        op.execute(function)
    op.create_index(
        "ix_messages_user_words_gin",
        "messages",
        [sa.text(f'"{s}".user_words(content_tsv, user_id)')],
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
    op.execute(f'DROP FUNCTION "{s}".user_words(tsvector, uuid), "{s}".user_word(text, uuid)')
