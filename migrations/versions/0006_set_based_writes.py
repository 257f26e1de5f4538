"""Set-based writes: one ``add()`` (or one buffer batch) is one statement, and one NOTIFY.

Before this revision an ``add()`` was seven round trips after the pool's ping (BEGIN, lock the
users, lock the sessions, look the ids up, ``executemany`` of the rows, store the counters,
COMMIT), and each inserted row fired a row trigger that ran an INSERT into the queue, whose
statement trigger then called ``pg_notify``: once per row. Now:

- ``write_messages(...)`` does the whole M0 write in one call, so the client sends one
  statement in autocommit mode (its own transaction: all or nothing). Every argument is an
  array, one element per message (or per request), so any number of messages is one call with
  thirteen parameters. Inside, in the writers' lock order (docs/layers.md#lock-order): the users
  ``FOR KEY SHARE``, the sessions in id order ``FOR NO KEY UPDATE``, then (only when the caller
  supplied ids) the lookup of ids already stored, then one ``INSERT ... SELECT FROM unnest(...)``
  numbering the new rows after each session's counter, and the counters' update, in one
  statement. Each statement of a PL/pgSQL function takes a new snapshot, so the lookup after the
  session lock sees every write committed before the lock was granted: a retry of the same ids
  in the same session is skipped, not a unique violation.
- Errors carry their own SQLSTATE: ``MF001`` (a client id is stored in another session; the
  detail is the 1-based position of the message in the call's arrays) and ``MF002`` (a session
  no longer exists for its user; the detail is the 1-based request). Nothing is written then.
- The enqueue-on-insert trigger is ``FOR EACH STATEMENT`` with a transition table, so an
  INSERT of n rows queues their n jobs in one INSERT ... SELECT (one NOTIFY), and an INSERT of
  no rows queues nothing and wakes nobody. The UPDATE trigger and its coalescing (0003, 0005)
  stay row by row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from memfuse.db.migrate import migration_options

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDABLE = ("messages", "episodes", "facts")

WRITE_MESSAGES_ARGUMENTS = (
    "uuid[], uuid[], uuid[], integer[], integer[], uuid[], boolean[], "
    "text[], text[], text[], integer[], text[], timestamptz[]"
)
"""The signature, for ``DROP FUNCTION``; the parameters are described in the function."""


def _write_messages(s: str) -> str:
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
            p_created timestamptz[]    -- NULL is the transaction's time
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
                    metadata, created_at
                )
                SELECT t.id, p_users[1], p_agents[1], p_sessions[1], v_first + t.rank,
                       t.role, t.name, t.content, t.tokens,
                       coalesce(t.metadata::jsonb, '{{}}'::jsonb), coalesce(t.created_at, now())
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
                    metadata, created_at
                )
                SELECT t.id, r.u, r.a, r.i, c.counted + t.rank, t.role, t.name, t.content,
                       t.tokens, coalesce(t.metadata::jsonb, '{{}}'::jsonb),
                       coalesce(t.created_at, now())
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


def upgrade() -> None:
    s = migration_options(context.config).schema
    op.execute(_write_messages(s))
    # One INSERT of the inserted rows' jobs per statement: one NOTIFY, and none for no rows.
    op.execute(f"""
        CREATE FUNCTION "{s}".enqueue_embedding_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_rows WHERE embedding IS NULL) THEN
                INSERT INTO "{s}".embedding_jobs (table_name, row_id)
                SELECT TG_TABLE_NAME, n.id FROM new_rows AS n WHERE n.embedding IS NULL;
            END IF;
            RETURN NULL;
        END
        $$""")
    for table in EMBEDDABLE:
        op.execute(f'DROP TRIGGER {table}_enqueue_on_insert ON "{s}".{table}')
        op.execute(f"""
            CREATE TRIGGER {table}_enqueue_on_insert AFTER INSERT ON "{s}".{table}
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION "{s}".enqueue_embedding_rows()""")


def downgrade() -> None:
    s = migration_options(context.config).schema
    for table in EMBEDDABLE:
        op.execute(f'DROP TRIGGER {table}_enqueue_on_insert ON "{s}".{table}')
        op.execute(f"""
            CREATE TRIGGER {table}_enqueue_on_insert AFTER INSERT ON "{s}".{table}
            FOR EACH ROW WHEN (NEW.embedding IS NULL)
            EXECUTE FUNCTION "{s}".enqueue_embedding()""")
    op.execute(f'DROP FUNCTION "{s}".enqueue_embedding_rows()')
    op.execute(f'DROP FUNCTION "{s}".write_messages({WRITE_MESSAGES_ARGUMENTS})')
