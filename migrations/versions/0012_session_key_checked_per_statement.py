"""A message's key to its session is checked once per statement, not once per row.

Issue 14 measured where a batch ``add()`` spends the server's time (docs/benchmarks.md): the
composite foreign key of migration 0009, ``(session_id, user_id, agent_id)`` to the session's
``(id, user_id, agent_id)``, is checked by PostgreSQL one row at a time, 0.41 ms of an
``add()`` of 100 messages to one session. The same rule now holds through triggers:

- ``messages_check_session`` (after an INSERT, once per statement, over its new rows): every
  distinct ``(session_id, user_id, agent_id)`` among them must be a session with that user and
  agent, which is locked as a foreign key locks it (``FOR KEY SHARE``, in id order), so a
  concurrent deletion of the session waits for the writer or the writer fails. One key of 100
  rows costs 0.1 ms. A missing session raises SQLSTATE 23503 (``foreign_key_violation``) with
  the constraint name ``messages_session_key``.
- ``sessions_delete_messages`` (after a DELETE of sessions, once per statement): their
  messages go with them, as the key's ``ON DELETE CASCADE`` did; so deleting a user or an
  agent still deletes their messages, through their sessions. In READ COMMITTED each statement
  of the trigger sees every message committed before it, including those of a writer the
  deletion waited for. ``sessions_truncate_messages``: truncating the sessions (``TRUNCATE
  ... CASCADE`` from ``users``, as the foreign key's cascade did) deletes every message.
- ``messages_keep_session`` / ``sessions_keep_owner``: the key columns of a message, and a
  session's id, user and agent, never change (memfuse never changes them; a change would
  separate a message from its session's owner). Raises SQLSTATE 23000.

Difference from the foreign key, stated: under REPEATABLE READ, PostgreSQL's cascade would
fail to serialize against messages committed after its snapshot; these triggers do not see
them. memfuse's own writes (``write_messages``) update the session's counter in the same
transaction, so such a deletion fails to serialize there too; only rows inserted into
``messages`` by hand, under REPEATABLE READ, beside a deletion of their session, could outlive
it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from memfuse.db.migrate import migration_options

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SESSION_KEY = "messages_session_key"
"""The constraint name a missing session is reported under."""


def upgrade() -> None:
    s = migration_options(context.config).schema
    op.drop_constraint("fk_messages_session_id_sessions", "messages", schema=s, type_="foreignkey")
    op.drop_constraint("uq_sessions_id_user_id_agent_id", "sessions", schema=s, type_="unique")
    op.execute(f"""
        CREATE FUNCTION "{s}".check_message_sessions() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            v_keys bigint;
            v_found bigint;
        BEGIN
            SELECT count(*) INTO v_keys
            FROM (SELECT DISTINCT session_id, user_id, agent_id FROM new_rows) AS k;
            -- id is the primary key: each key matches at most one session
            SELECT count(*) INTO v_found
            FROM (
                SELECT 1
                FROM "{s}".sessions AS s
                WHERE (s.id, s.user_id, s.agent_id) IN (
                    SELECT session_id, user_id, agent_id FROM new_rows
                )
                ORDER BY s.id
                FOR KEY SHARE OF s
            ) AS locked;
            IF v_found < v_keys THEN
                RAISE EXCEPTION 'a message names no session of its user and agent'
                    USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{SESSION_KEY}';
            END IF;
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER messages_check_session AFTER INSERT ON "{s}".messages
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".check_message_sessions()""")
    op.execute(f"""
        CREATE FUNCTION "{s}".delete_session_messages() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM "{s}".messages AS m USING old_rows AS o WHERE m.session_id = o.id;
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER sessions_delete_messages AFTER DELETE ON "{s}".sessions
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".delete_session_messages()""")
    op.execute(f"""
        CREATE FUNCTION "{s}".delete_all_messages() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM "{s}".messages;  -- not TRUNCATE: the rows' own triggers drop their jobs
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER sessions_truncate_messages AFTER TRUNCATE ON "{s}".sessions
        FOR EACH STATEMENT EXECUTE FUNCTION "{s}".delete_all_messages()""")
    op.execute(f"""
        CREATE FUNCTION "{s}".refuse_key_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the % of a row of % never change', TG_ARGV[0], TG_TABLE_NAME
                USING ERRCODE = 'integrity_constraint_violation';
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER messages_keep_session
        BEFORE UPDATE OF session_id, user_id, agent_id ON "{s}".messages
        FOR EACH ROW
        WHEN (OLD.session_id IS DISTINCT FROM NEW.session_id
              OR OLD.user_id IS DISTINCT FROM NEW.user_id
              OR OLD.agent_id IS DISTINCT FROM NEW.agent_id)
        EXECUTE FUNCTION "{s}".refuse_key_change('session, user and agent')""")
    op.execute(f"""
        CREATE TRIGGER sessions_keep_owner
        BEFORE UPDATE OF id, user_id, agent_id ON "{s}".sessions
        FOR EACH ROW
        WHEN (OLD.id IS DISTINCT FROM NEW.id
              OR OLD.user_id IS DISTINCT FROM NEW.user_id
              OR OLD.agent_id IS DISTINCT FROM NEW.agent_id)
        EXECUTE FUNCTION "{s}".refuse_key_change('id, user and agent')""")


def downgrade() -> None:
    s = migration_options(context.config).schema
    op.execute(f'DROP TRIGGER sessions_keep_owner ON "{s}".sessions')
    op.execute(f'DROP TRIGGER messages_keep_session ON "{s}".messages')
    op.execute(f'DROP FUNCTION "{s}".refuse_key_change()')
    op.execute(f'DROP TRIGGER sessions_truncate_messages ON "{s}".sessions')
    op.execute(f'DROP FUNCTION "{s}".delete_all_messages()')
    op.execute(f'DROP TRIGGER sessions_delete_messages ON "{s}".sessions')
    op.execute(f'DROP FUNCTION "{s}".delete_session_messages()')
    op.execute(f'DROP TRIGGER messages_check_session ON "{s}".messages')
    op.execute(f'DROP FUNCTION "{s}".check_message_sessions()')
    op.create_unique_constraint(
        "uq_sessions_id_user_id_agent_id", "sessions", ["id", "user_id", "agent_id"], schema=s
    )
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
