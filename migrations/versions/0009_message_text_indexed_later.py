"""A message's words are indexed off the write path, and a message has one key to its session.

Issue 14 measured where one ``add()`` of 100 messages spends its time
(``benchmarks/m0_batch_variants.py``): stemming every message into the generated
``content_tsv`` column at insert was the largest share, three foreign keys the next. Now:

- ``messages.content_tsv`` is a plain column. The embedding worker fills it in the same UPDATE
  that stores the message's vector (it reads the row then anyway); ``write_messages`` fills it at
  insert when asked to (``p_index_text``: a process without an embedder, so no worker comes).
  Until then the row is NULL there and the M0 full-text list reads it through
  ``ix_messages_text_unindexed`` (its user's unindexed rows, stemmed on the fly), so a word is
  searchable as soon as ``add()`` returns. The GIN index holds indexed rows only.
- A changed text (``content`` or ``name``) is indexed again by a trigger in the same UPDATE
  (``index_message_text``), so an edit never leaves a stale or missing entry. The worker's
  vector write sets neither column, so the trigger does not fire for it (and PostgreSQL no
  longer re-stems every message when the worker writes its vector, as it did for the
  generated column on a table with a BEFORE UPDATE trigger).
- ``(session_id, user_id, agent_id)`` references the session's ``(id, user_id, agent_id)``:
  one key check per row instead of three, and a message can no longer name a user or an agent
  other than its session's. Deleting a user or an agent still deletes their messages, through
  their sessions. The index on ``agent_id`` served only the agent key's cascade and goes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from memfuse.db.migrate import migration_options

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


WRITE_MESSAGES_0006 = (
    "uuid[], uuid[], uuid[], integer[], integer[], uuid[], boolean[], "
    "text[], text[], text[], integer[], text[], timestamptz[]"
)
WRITE_MESSAGES_0009 = f"{WRITE_MESSAGES_0006}, boolean"


def _write_messages(s: str, *, index_text: bool) -> str:
    """``write_messages`` of migration 0006, with (``index_text``) or without the argument
    that fills ``content_tsv`` at insert."""
    parameter = ",\n            p_index_text boolean DEFAULT false  -- stem at insert" * index_text
    column = ", content_tsv" * index_text
    one = f", CASE WHEN p_index_text THEN {_tsvector('t.')} END" * index_text
    return f"""
        CREATE FUNCTION "{s}".write_messages(
            p_users uuid[],            -- per request: its user, agent and session
            p_agents uuid[],
            p_sessions uuid[],
            p_request integer[],       -- per message: its request (1-based)
            p_rank integer[],          -- per message: its place among the call's messages of
                                       -- its session (1-based), if none is skipped
            p_ids uuid[],
            p_client boolean[],        -- per message: the caller chose the id; NULL: none did
            p_roles text[],
            p_names text[],
            p_contents text[],
            p_tokens integer[],
            p_metadata text[],         -- JSON text; NULL is an empty object
                                       -- p_created: NULL is the transaction's time
            p_created timestamptz[]{parameter}
        ) RETURNS integer
        LANGUAGE plpgsql
        -- Custom plans of these statements cost more to make than they save (measured).
        SET plan_cache_mode = force_generic_plan
        AS $$
        DECLARE
            v_sessions uuid[];
            v_counts bigint[];
            v_first bigint;
            v_gone boolean;
            v_missing integer;
            v_rank integer[] := p_rank;
            v_bad bigint;
            v_written integer;
        BEGIN
            -- 1. users, shared key lock, in id order
            PERFORM 1 FROM "{s}".users WHERE id = ANY(p_users) ORDER BY id FOR KEY SHARE;
            IF cardinality(p_sessions) = 1 AND p_client IS NULL THEN
                -- One request whose ids are all new (a lone caller): nothing can be skipped,
                -- so one UPDATE locks the session and advances its counter by the count.
                UPDATE "{s}".sessions SET message_count = message_count + cardinality(p_ids)
                WHERE id = p_sessions[1] AND user_id = p_users[1]
                RETURNING message_count - cardinality(p_ids) INTO v_first;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'session no longer exists'
                        USING ERRCODE = 'MF002', DETAIL = '1';
                END IF;
                INSERT INTO "{s}".messages (
                    id, user_id, agent_id, session_id, seq, role, name, content, token_count,
                    metadata, created_at{column}
                )
                SELECT t.id, p_users[1], p_agents[1], p_sessions[1], v_first + t.rank,
                       t.role, t.name, t.content, t.tokens,
                       coalesce(t.metadata::jsonb, '{{}}'::jsonb),
                       coalesce(t.created_at, now()){one}
                FROM unnest(
                         p_ids, p_rank, p_roles, p_names, p_contents, p_tokens, p_metadata,
                         p_created
                     ) AS t(id, rank, role, name, content, tokens, metadata, created_at);
                RETURN cardinality(p_ids);
            END IF;
            -- 2. sessions (of their user), in id order: their counters stay locked until commit
            SELECT array_agg(x.id ORDER BY x.id), array_agg(x.message_count ORDER BY x.id),
                   count(*) < (SELECT count(DISTINCT i) FROM unnest(p_sessions) AS i)
            INTO v_sessions, v_counts, v_gone
            FROM (
                SELECT s.id, s.message_count
                FROM "{s}".sessions AS s
                JOIN (SELECT DISTINCT u, i FROM unnest(p_users, p_sessions) AS p(u, i)) AS p
                  ON s.id = p.i AND s.user_id = p.u
                ORDER BY s.id
                FOR NO KEY UPDATE OF s
            ) AS x;
            IF v_gone THEN
                SELECT min(r.n) INTO v_missing
                FROM unnest(p_sessions) WITH ORDINALITY AS r(i, n)
                WHERE NOT (r.i = ANY(coalesce(v_sessions, '{{}}')));
                RAISE EXCEPTION 'session no longer exists'
                    USING ERRCODE = 'MF002', DETAIL = v_missing::text;
            END IF;
            -- 3. ids the callers chose: stored in the same session (or earlier in this call)
            --    is a retry, skipped; stored in another session is an error
            IF p_client IS NOT NULL THEN
                SELECT array_agg(k.rank ORDER BY k.n), min(k.n) FILTER (WHERE k.bad)
                INTO v_rank, v_bad
                FROM (
                    SELECT c.n, c.bad,
                           CASE WHEN c.keep THEN (count(*) FILTER (WHERE c.keep)
                               OVER (PARTITION BY c.session ORDER BY c.n))::integer END AS rank
                    FROM (
                        SELECT i.n, i.session,
                               NOT i.client OR (e.id IS NULL AND i.occurrence = 1) AS keep,
                               i.client AND coalesce(e.session_id, i.first_session) <> i.session
                                   AS bad
                        FROM (
                            SELECT t.n, t.id, t.client, r.session,
                                   row_number() OVER w AS occurrence,
                                   first_value(r.session) OVER w AS first_session
                            FROM unnest(p_ids, p_client, p_request)
                                 WITH ORDINALITY AS t(id, client, req, n)
                            JOIN unnest(p_sessions) WITH ORDINALITY AS r(session, req)
                              ON r.req = t.req
                            WINDOW w AS (PARTITION BY t.id ORDER BY t.n)
                        ) AS i
                        LEFT JOIN "{s}".messages AS e ON i.client AND e.id = i.id
                    ) AS c
                ) AS k;
                IF v_bad IS NOT NULL THEN
                    RAISE EXCEPTION 'message id is stored in another session'
                        USING ERRCODE = 'MF001', DETAIL = v_bad::text;
                END IF;
            END IF;
            -- 4. the rows, numbered after their session's counter, and the counters
            WITH inserted AS (
                INSERT INTO "{s}".messages AS m (
                    id, user_id, agent_id, session_id, seq, role, name, content, token_count,
                    metadata, created_at{column}
                )
                SELECT t.id, r.u, r.a, r.i, c.counted + t.rank, t.role, t.name, t.content,
                       t.tokens, coalesce(t.metadata::jsonb, '{{}}'::jsonb),
                       coalesce(t.created_at, now()){one}
                FROM unnest(
                         p_ids, p_request, v_rank, p_roles, p_names, p_contents, p_tokens,
                         p_metadata, p_created
                     ) AS t(id, req, rank, role, name, content, tokens, metadata, created_at)
                JOIN unnest(p_users, p_agents, p_sessions) WITH ORDINALITY AS r(u, a, i, req)
                  ON r.req = t.req
                JOIN unnest(v_sessions, v_counts) AS c(i, counted) ON c.i = r.i
                WHERE t.rank IS NOT NULL
                RETURNING m.session_id
            ), added AS (
                SELECT session_id, count(*) AS n FROM inserted GROUP BY session_id
            ), bumped AS (
                UPDATE "{s}".sessions AS s SET message_count = s.message_count + a.n
                FROM added AS a WHERE s.id = a.session_id
                RETURNING a.n
            )
            SELECT coalesce(sum(n), 0) INTO v_written FROM bumped;
            RETURN v_written;
        END
        $$"""


def _tsvector(prefix: str = "") -> str:
    """A copy of memfuse.db.models.MESSAGE_TSVECTOR as of this revision, over the columns
    ``{prefix}name`` and ``{prefix}content``."""
    return (
        f"to_tsvector('english'::regconfig, coalesce({prefix}name || ': ', '') || {prefix}content)"
    )


def upgrade() -> None:
    s = migration_options(context.config).schema
    # The words: a plain column (values kept), indexed rows in the GIN index, the rest findable.
    op.execute(f'ALTER TABLE "{s}".messages ALTER COLUMN content_tsv DROP EXPRESSION')
    op.drop_index("ix_messages_content_tsv_gin", "messages", schema=s)
    op.create_index(
        "ix_messages_content_tsv_gin",
        "messages",
        ["content_tsv"],
        schema=s,
        postgresql_using="gin",
        postgresql_where=sa.text("content_tsv IS NOT NULL"),
    )
    op.create_index(
        "ix_messages_text_unindexed",
        "messages",
        ["user_id"],
        schema=s,
        postgresql_where=sa.text("content_tsv IS NULL"),
    )
    op.execute(f"""
        CREATE FUNCTION "{s}".index_message_text() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.content_tsv := {_tsvector("NEW.")};
            RETURN NEW;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER messages_index_text BEFORE UPDATE OF content, name ON "{s}".messages
        FOR EACH ROW
        WHEN (OLD.content IS DISTINCT FROM NEW.content OR OLD.name IS DISTINCT FROM NEW.name)
        EXECUTE FUNCTION "{s}".index_message_text()""")
    op.execute(f'DROP FUNCTION "{s}".write_messages({WRITE_MESSAGES_0006})')
    op.execute(_write_messages(s, index_text=True))

    # One key to the session, which holds the user and the agent.
    op.create_unique_constraint(
        "uq_sessions_id_user_id_agent_id", "sessions", ["id", "user_id", "agent_id"], schema=s
    )
    for name in (
        "fk_messages_user_id_users",
        "fk_messages_agent_id_agents",
        "fk_messages_session_id_sessions",
    ):
        op.drop_constraint(name, "messages", schema=s, type_="foreignkey")
    op.create_foreign_key(
        "fk_messages_session_id_sessions",
        "messages",
        "sessions",
        ["session_id", "user_id", "agent_id"],
        ["id", "user_id", "agent_id"],
        source_schema=s,
        referent_schema=s,
        ondelete="CASCADE",
    )
    op.drop_index("ix_messages_agent_id", "messages", schema=s)


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.create_index("ix_messages_agent_id", "messages", ["agent_id"], schema=s)
    op.drop_constraint("fk_messages_session_id_sessions", "messages", schema=s, type_="foreignkey")
    for column, table in (("user_id", "users"), ("agent_id", "agents"), ("session_id", "sessions")):
        op.create_foreign_key(
            f"fk_messages_{column}_{table}",
            "messages",
            table,
            [column],
            ["id"],
            source_schema=s,
            referent_schema=s,
            ondelete="CASCADE",
        )
    op.drop_constraint("uq_sessions_id_user_id_agent_id", "sessions", schema=s, type_="unique")

    op.execute(f'DROP FUNCTION "{s}".write_messages({WRITE_MESSAGES_0009})')
    op.execute(_write_messages(s, index_text=False))
    op.execute(f'DROP TRIGGER messages_index_text ON "{s}".messages')
    op.execute(f'DROP FUNCTION "{s}".index_message_text()')
    op.drop_index("ix_messages_text_unindexed", "messages", schema=s)
    op.drop_index("ix_messages_content_tsv_gin", "messages", schema=s)
    op.drop_column("messages", "content_tsv", schema=s)
    op.add_column(
        "messages",
        sa.Column("content_tsv", postgresql.TSVECTOR(), sa.Computed(_tsvector(), persisted=True)),
        schema=s,
    )
    op.create_index(
        "ix_messages_content_tsv_gin", "messages", ["content_tsv"], schema=s, postgresql_using="gin"
    )
