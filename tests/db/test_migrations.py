"""Migrations: upgrade, downgrade, triggers, the NOTIFY wake-up and the recorded dimension."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from memfuse.config.urls import asyncpg_connect_args
from memfuse.db import migrate
from memfuse.db.migrate import MigrationOptions
from memfuse.db.models import embedding_channel
from memfuse.errors import DimensionMismatchError, SchemaError
from memfuse.memory import MemFuse

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "schema_info",
    "users",
    "agents",
    "sessions",
    "messages",
    "episodes",
    "layer_progress",
    "facts",
    "fact_groups",
    "embedding_jobs",
    "knowledge",
    "api_keys",
    "embedding_dead_letters",
    "memfuse_alembic_version",
}


async def tables_in(engine: AsyncEngine, schema: str = "memfuse") -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"), {"schema": schema}
        )
        return {row[0] for row in rows}


async def memfuse_objects(engine: AsyncEngine, schema: str = "memfuse") -> int:
    """Tables, functions and the schema itself: all that memfuse may leave behind."""
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text(
                        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = :s)"
                        " + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n"
                        "    ON n.oid = p.pronamespace WHERE n.nspname = :s)"
                        " + (SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                        "    ON n.oid = c.relnamespace WHERE n.nspname = :s)"
                    ),
                    {"s": schema},
                )
            ).scalar_one()
        )


async def insert_message(engine: AsyncEngine, content: str = "hello", *, user: str = "u") -> str:
    """A user, agent, session and one message; returns the message id."""
    async with engine.begin() as connection:
        user_id = (
            await connection.execute(
                text("INSERT INTO memfuse.users (name) VALUES (:name) RETURNING id"),
                {"name": user},
            )
        ).scalar_one()
        agent = (
            await connection.execute(
                text("INSERT INTO memfuse.agents (user_id, name) VALUES (:u, 'a') RETURNING id"),
                {"u": user_id},
            )
        ).scalar_one()
        session = (
            await connection.execute(
                text(
                    "INSERT INTO memfuse.sessions (user_id, agent_id, name)"
                    " VALUES (:u, :a, 's') RETURNING id"
                ),
                {"u": user_id, "a": agent},
            )
        ).scalar_one()
        message = (
            await connection.execute(
                text(
                    "INSERT INTO memfuse.messages"
                    " (user_id, agent_id, session_id, seq, role, content)"
                    " VALUES (:u, :a, :s, 1, 'user', :c) RETURNING id"
                ),
                {"u": user_id, "a": agent, "s": session, "c": content},
            )
        ).scalar_one()
    return str(message)


async def jobs_for(engine: AsyncEngine, row_id: str) -> int:
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text("SELECT count(*) FROM memfuse.embedding_jobs WHERE row_id = :id"),
                    {"id": row_id},
                )
            ).scalar_one()
        )


async def test_upgrade_downgrade_upgrade(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await tables_in(engine) == TABLES

    await migrate.downgrade(engine, "base")
    assert await migrate.current_revision(engine) is None
    assert await memfuse_objects(engine) == 0

    await migrate.upgrade(engine)
    assert await tables_in(engine) == TABLES


async def test_upgrade_is_idempotent_and_serialized(engine: AsyncEngine) -> None:
    await asyncio.gather(*(migrate.upgrade(engine) for _ in range(3)))
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_custom_schema_and_dimension(engine: AsyncEngine) -> None:
    options = MigrationOptions(schema="agent_memory", embedding_dimension=8)
    await migrate.upgrade(engine, options=options)
    assert await tables_in(engine, "agent_memory") == TABLES
    assert await tables_in(engine, "memfuse") == set()
    async with engine.connect() as connection:
        assert await migrate.recorded_dimension(connection, "agent_memory") == 8
        column_type = (
            await connection.execute(
                text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = 'agent_memory.messages'::regclass AND attname = 'embedding'"
                )
            )
        ).scalar_one()
    assert column_type == "vector(8)"
    await migrate.downgrade(engine, "base", options)
    assert await memfuse_objects(engine, "agent_memory") == 0


async def test_dimension_mismatch_is_refused(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine, options=MigrationOptions(embedding_dimension=384))
    with pytest.raises(DimensionMismatchError, match="vector\\(384\\)"):
        await migrate.upgrade(engine, options=MigrationOptions(embedding_dimension=768))
    with pytest.raises(DimensionMismatchError) as raised:
        await migrate.check_embedding_dimension(engine, 768, source="embedder test-model")
    assert (raised.value.expected, raised.value.actual) == (768, 384)
    await migrate.check_embedding_dimension(engine, 384, source="embedder test-model")


async def test_dimension_check_before_migration_says_to_migrate(engine: AsyncEngine) -> None:
    with pytest.raises(SchemaError, match="memfuse db upgrade"):
        await migrate.check_embedding_dimension(engine, 384, source="embedder")


async def test_insert_enqueues_one_embedding_job(migrated_engine: AsyncEngine) -> None:
    message_id = await insert_message(migrated_engine)
    assert await jobs_for(migrated_engine, message_id) == 1
    async with migrated_engine.connect() as connection:
        table = (
            await connection.execute(
                text("SELECT table_name FROM memfuse.embedding_jobs WHERE row_id = :id"),
                {"id": message_id},
            )
        ).scalar_one()
    assert table == "messages"


async def test_content_update_requeues_and_clears_stale_vector(
    migrated_engine: AsyncEngine,
) -> None:
    message_id = await insert_message(migrated_engine)
    vector = [0.1] * 384
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET embedding = :v WHERE id = :id"),
            {"v": vector, "id": message_id},
        )
    assert await jobs_for(migrated_engine, message_id) == 1, "a vector write must not re-queue"

    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET metadata = '{\"k\": 1}' WHERE id = :id"),
            {"id": message_id},
        )
        await connection.execute(
            text("UPDATE memfuse.messages SET content = content WHERE id = :id"), {"id": message_id}
        )
    assert await jobs_for(migrated_engine, message_id) == 1, "unchanged content must not re-queue"

    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET content = 'changed' WHERE id = :id"),
            {"id": message_id},
        )
        embedding = (
            await connection.execute(
                text("SELECT embedding FROM memfuse.messages WHERE id = :id"), {"id": message_id}
            )
        ).scalar_one()
    assert embedding is None
    assert await jobs_for(migrated_engine, message_id) == 1, "the queued job covers the new text"

    async with migrated_engine.begin() as connection:
        await connection.execute(text("DELETE FROM memfuse.embedding_jobs"))
        await connection.execute(
            text("UPDATE memfuse.messages SET content = 'changed again' WHERE id = :id"),
            {"id": message_id},
        )
    assert await jobs_for(migrated_engine, message_id) == 1, "with no job queued, an edit queues"


async def test_rolled_back_insert_leaves_no_job(migrated_engine: AsyncEngine) -> None:
    async with migrated_engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(text("INSERT INTO memfuse.users (name) VALUES ('x')"))
        await transaction.rollback()
    async with migrated_engine.connect() as connection:
        count = (
            await connection.execute(text("SELECT count(*) FROM memfuse.embedding_jobs"))
        ).scalar_one()
    assert count == 0


async def test_updated_at_is_maintained(migrated_engine: AsyncEngine) -> None:
    message_id = await insert_message(migrated_engine)
    async with migrated_engine.begin() as connection:
        before = (
            await connection.execute(
                text("SELECT updated_at FROM memfuse.messages WHERE id = :id"), {"id": message_id}
            )
        ).scalar_one()
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET name = 'Caroline' WHERE id = :id"), {"id": message_id}
        )
        after = (
            await connection.execute(
                text("SELECT updated_at FROM memfuse.messages WHERE id = :id"), {"id": message_id}
            )
        ).scalar_one()
    assert after > before


async def words_of(engine: AsyncEngine, message_id: str) -> str | None:
    async with engine.connect() as connection:
        words = (
            await connection.execute(
                text("SELECT content_tsv::text FROM memfuse.messages WHERE id = :id"),
                {"id": message_id},
            )
        ).scalar_one()
    return None if words is None else str(words)


async def tsvector(engine: AsyncEngine, message_text: str) -> str:
    async with engine.connect() as connection:
        return str(
            (
                await connection.execute(
                    text("SELECT to_tsvector('english', :t)::text"), {"t": message_text}
                )
            ).scalar_one()
        )


async def test_a_message_is_indexed_later_and_again_when_its_text_changes(
    migrated_engine: AsyncEngine,
) -> None:
    """A row as inserted has no words yet (the embedding worker, or the writer without one,
    indexes them); changing its content or its speaker indexes the new text at once."""
    message_id = await insert_message(migrated_engine, "Caroline went to the support groups")
    assert await words_of(migrated_engine, message_id) is None

    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET content = 'Melanie paints sunsets' WHERE id = :id"),
            {"id": message_id},
        )
    assert await words_of(migrated_engine, message_id) == await tsvector(
        migrated_engine, "Melanie paints sunsets"
    )
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.messages SET name = 'Mel' WHERE id = :id"), {"id": message_id}
        )
    assert await words_of(migrated_engine, message_id) == await tsvector(
        migrated_engine, "Mel: Melanie paints sunsets"
    )


async def scope_of(engine: AsyncEngine, message_id: str) -> Any:
    async with engine.begin() as connection:
        return (
            await connection.execute(
                text("SELECT user_id, agent_id, session_id FROM memfuse.messages WHERE id = :id"),
                {"id": message_id},
            )
        ).one()


async def second_agent(engine: AsyncEngine, user_id: uuid.UUID) -> uuid.UUID:
    """Another agent of the user, ``b``."""
    async with engine.begin() as connection:
        agent: uuid.UUID = (
            await connection.execute(
                text("INSERT INTO memfuse.agents (user_id, name) VALUES (:u, 'b') RETURNING id"),
                {"u": user_id},
            )
        ).scalar_one()
    return agent


INSERT_TWO_MESSAGES = (
    "INSERT INTO memfuse.messages (user_id, agent_id, session_id, seq, role, content)"
    " VALUES (:u, :a, :s, 2, 'user', 'x'), (:u2, :a2, :s2, 3, 'user', 'y')"
)


async def test_a_message_names_its_sessions_user_and_agent(migrated_engine: AsyncEngine) -> None:
    """Every row of an INSERT names a session with its user and agent (checked once per
    statement, migration 0012): one wrong row refuses the whole statement."""
    scope = await scope_of(migrated_engine, await insert_message(migrated_engine))
    other_agent = await second_agent(migrated_engine, scope.user_id)
    async with migrated_engine.begin() as connection:
        other_user = (
            await connection.execute(
                text("INSERT INTO memfuse.users (name) VALUES ('v') RETURNING id")
            )
        ).scalar_one()
    good = {"u": scope.user_id, "a": scope.agent_id, "s": scope.session_id}
    second = {f"{key}2": value for key, value in good.items()}
    for wrong in ({"a2": other_agent}, {"u2": other_user}, {"s2": uuid.uuid4()}):
        with pytest.raises(IntegrityError, match="names no session of its user and agent") as e:
            async with migrated_engine.begin() as connection:
                await connection.execute(text(INSERT_TWO_MESSAGES), good | second | wrong)
        cause = e.value.orig.__cause__  # type: ignore[union-attr]
        assert isinstance(cause, asyncpg.ForeignKeyViolationError)
        assert cause.constraint_name == "messages_session_key"
    async with migrated_engine.begin() as connection:
        await connection.execute(text(INSERT_TWO_MESSAGES), good | second)
        count = await connection.scalar(text("SELECT count(*) FROM memfuse.messages"))
    assert count == 3


async def test_a_sessions_messages_go_with_it_and_with_its_user(
    migrated_engine: AsyncEngine,
) -> None:
    """Deleting sessions deletes their messages (one statement for many sessions); deleting
    a user deletes them through the user's sessions."""
    kept = await scope_of(migrated_engine, await insert_message(migrated_engine))
    doomed = [
        await scope_of(migrated_engine, await insert_message(migrated_engine, user=user))
        for user in ("v", "w")
    ]

    async def messages_of(session_id: uuid.UUID) -> int:
        async with migrated_engine.begin() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM memfuse.messages WHERE session_id = :s"),
                {"s": session_id},
            )
        return int(found or 0)

    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM memfuse.sessions WHERE id = ANY(:ids)"),
            {"ids": [scope.session_id for scope in doomed]},
        )
    assert [await messages_of(scope.session_id) for scope in doomed] == [0, 0]
    assert await messages_of(kept.session_id) == 1
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM memfuse.users WHERE id = :u"), {"u": kept.user_id}
        )
        left = await connection.scalar(text("SELECT count(*) FROM memfuse.messages"))
    assert left == 0


async def test_truncating_the_users_takes_the_messages_and_their_jobs(
    migrated_engine: AsyncEngine,
) -> None:
    """``TRUNCATE users CASCADE`` reaches the sessions through their foreign keys and the
    messages through the sessions' trigger, which deletes them row by row so their queued
    embedding jobs go too."""
    message_id = await insert_message(migrated_engine)
    assert await jobs_for(migrated_engine, message_id) == 1
    async with migrated_engine.begin() as connection:
        await connection.execute(text("TRUNCATE memfuse.users CASCADE"))
        left = await connection.scalar(text("SELECT count(*) FROM memfuse.messages"))
    assert left == 0
    assert await jobs_for(migrated_engine, message_id) == 0


@pytest.mark.parametrize(
    ("statement", "column"),
    [
        ("UPDATE memfuse.messages SET agent_id = :other_agent WHERE id = :id", "agent"),
        ("UPDATE memfuse.sessions SET agent_id = :other_agent WHERE id = :session", "agent"),
        ("UPDATE memfuse.sessions SET id = gen_random_uuid() WHERE id = :session", "id"),
    ],
)
async def test_the_keys_between_a_message_and_its_session_never_change(
    migrated_engine: AsyncEngine, statement: str, column: str
) -> None:
    message_id = await insert_message(migrated_engine)
    scope = await scope_of(migrated_engine, message_id)
    other_agent = await second_agent(migrated_engine, scope.user_id)
    with pytest.raises(IntegrityError, match=f"the .*{column}.* never change"):
        async with migrated_engine.begin() as connection:
            await connection.execute(
                text(statement),
                {"id": message_id, "session": scope.session_id, "other_agent": other_agent},
            )
    async with migrated_engine.begin() as connection:  # an unchanged key is no change
        await connection.execute(
            text("UPDATE memfuse.messages SET agent_id = agent_id, content = 'y' WHERE id = :id"),
            {"id": message_id},
        )
        await connection.execute(
            text("UPDATE memfuse.sessions SET name = 'renamed' WHERE id = :s"),
            {"s": scope.session_id},
        )
    assert await scope_of(migrated_engine, message_id) == scope


async def test_0009_keeps_indexed_words_and_gives_them_back_as_generated(
    engine: AsyncEngine,
) -> None:
    """Upgrading to 0009 keeps every message's words; downgrading computes them again."""
    await migrate.upgrade(engine, "0008")
    message_id = await insert_message(engine, "Caroline went to the support groups")
    expected = await tsvector(engine, "Caroline went to the support groups")
    assert await words_of(engine, message_id) == expected
    await migrate.upgrade(engine)
    assert await words_of(engine, message_id) == expected
    await migrate.downgrade(engine, "0008")
    assert await words_of(engine, message_id) == expected
    async with engine.connect() as connection:
        generated = (
            await connection.execute(
                text(
                    "SELECT attgenerated::text FROM pg_attribute"
                    " WHERE attrelid = 'memfuse.messages'::regclass AND attname = 'content_tsv'"
                )
            )
        ).scalar_one()
    assert generated == "s"


async def test_listen_connection_receives_wake_up(
    migrated_engine: AsyncEngine, database_url: str
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        await listener.add_listener(
            embedding_channel("memfuse"),
            lambda _conn, _pid, channel, _payload: received.put_nowait(channel),
        )
        await insert_message(migrated_engine)
        channel = await asyncio.wait_for(received.get(), timeout=5)
    finally:
        await listener.close()
    assert channel == "memfuse_embedding_jobs"


def test_alembic_command_line_upgrades_from_repository_root(database_url: str) -> None:
    env = {"MEMFUSE_DATABASE_URL": database_url, "PATH": "", "HOME": str(ROOT)}
    alembic = [sys.executable, "-m", "alembic"]
    subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, check=True)
    current = subprocess.run(
        [*alembic, "current"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    assert f"{migrate.head_revision()} (head)" in current.stdout
    subprocess.run([*alembic, "downgrade", "base"], cwd=ROOT, env=env, check=True)


def test_memfuse_db_commands(database_url: str) -> None:
    memfuse = [sys.executable, "-m", "memfuse.cli", "--database-url", database_url, "db"]
    up = subprocess.run([*memfuse, "upgrade"], check=True, capture_output=True, text=True)
    assert f"current revision: {migrate.head_revision()}" in up.stdout
    current = subprocess.run([*memfuse, "current"], check=True, capture_output=True, text=True)
    assert f"current revision: {migrate.head_revision()}" in current.stdout
    down = subprocess.run(
        [*memfuse, "downgrade", "base"], check=True, capture_output=True, text=True
    )
    assert "current revision: (none)" in down.stdout


async def test_deleting_a_user_drops_their_pending_jobs(migrated_engine: AsyncEngine) -> None:
    message_id = await insert_message(migrated_engine)
    assert await jobs_for(migrated_engine, message_id) == 1
    async with migrated_engine.begin() as connection:
        await connection.execute(text("DELETE FROM memfuse.users"))
    assert await jobs_for(migrated_engine, message_id) == 0


def test_cli_downgrade_needs_no_dimension(database_url: str) -> None:
    memfuse = [sys.executable, "-m", "memfuse.cli", "--database-url", database_url, "db"]
    subprocess.run([*memfuse, "upgrade", "--embedding-dimension", "8"], check=True)
    down = subprocess.run(
        [*memfuse, "downgrade", "base"], check=True, capture_output=True, text=True
    )
    assert "current revision: (none)" in down.stdout


# --- set-based writes (0006): one job per row, one NOTIFY per statement ----------------------


async def function_calls(connection: AsyncConnection, name: str) -> int:
    """Calls of memfuse's PL/pgSQL function ``name`` in this transaction so far."""
    return int(
        (
            await connection.execute(
                text("SELECT coalesce(pg_stat_get_xact_function_calls(CAST(:f AS regproc)), 0)"),
                {"f": f"memfuse.{name}"},
            )
        ).scalar_one()
    )


async def test_a_multi_row_insert_queues_one_job_per_row_and_notifies_once(
    migrated_engine: AsyncEngine,
) -> None:
    """The insert trigger runs once per statement (not per row) and queues every row's job in
    one INSERT, whose statement trigger sends the one NOTIFY; rows inserted with a vector and
    statements inserting nothing queue nothing and wake nobody."""
    first = await insert_message(migrated_engine)
    async with migrated_engine.begin() as connection:
        await connection.execute(text("SET LOCAL track_functions = 'pl'"))
        scope = (
            await connection.execute(
                text("SELECT user_id, agent_id, session_id FROM memfuse.messages WHERE id = :id"),
                {"id": first},
            )
        ).one()
        inserted = await connection.execute(
            text(
                "INSERT INTO memfuse.messages (user_id, agent_id, session_id, seq, role, content)"
                " SELECT :u, :a, :s, n, 'user', 'line ' || n FROM generate_series(2, 101) AS n"
                " RETURNING id"
            ),
            {"u": scope.user_id, "a": scope.agent_id, "s": scope.session_id},
        )
        ids = [str(row.id) for row in inserted]
        assert await function_calls(connection, "enqueue_embedding_rows") == 1
        assert await function_calls(connection, "notify_embedding_jobs") == 1
        await connection.execute(
            text(
                "INSERT INTO memfuse.messages (user_id, agent_id, session_id, seq, role, content)"
                " SELECT :u, :a, :s, 200, 'user', 'never' WHERE false"
            ),
            {"u": scope.user_id, "a": scope.agent_id, "s": scope.session_id},
        )
        await connection.execute(
            text(
                "INSERT INTO memfuse.messages"
                " (user_id, agent_id, session_id, seq, role, content, embedding)"
                " VALUES (:u, :a, :s, 300, 'user', 'embedded already', :v)"
            ),
            {"u": scope.user_id, "a": scope.agent_id, "s": scope.session_id, "v": [0.1] * 384},
        )
        assert await function_calls(connection, "enqueue_embedding_rows") == 3
        assert await function_calls(connection, "notify_embedding_jobs") == 1, "nothing queued"
    for row_id in [first, *ids]:
        assert await jobs_for(migrated_engine, row_id) == 1
    async with migrated_engine.connect() as connection:
        total = (
            await connection.execute(text("SELECT count(*) FROM memfuse.embedding_jobs"))
        ).scalar_one()
    assert total == 101


async def test_the_write_function_lives_in_the_configured_schema(
    engine: AsyncEngine, database_url: str
) -> None:
    """``write_messages`` and the trigger functions name the configured schema's tables, so a
    memfuse in another schema writes there and nowhere else."""
    await migrate.upgrade(engine, options=MigrationOptions(schema="agent_memory"))
    async with MemFuse(database_url, schema="agent_memory", pipeline_auto=False) as mf:
        memory = await mf.init("alice")
        await memory.add([{"role": "user", "content": "hello"}] * 3)
    async with engine.connect() as connection:
        counts = (
            await connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM agent_memory.messages),"
                    " (SELECT count(*) FROM agent_memory.embedding_jobs),"
                    " (SELECT message_count FROM agent_memory.sessions),"
                    " (SELECT count(*) FROM pg_proc WHERE proname = 'write_messages')"
                )
            )
        ).one()
    assert tuple(counts) == (3, 3, 3, 1)
    assert await tables_in(engine, "memfuse") == set()


async def test_an_add_of_many_messages_wakes_a_listener_once(
    migrated_engine: AsyncEngine, database_url: str
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        await listener.add_listener(
            embedding_channel("memfuse"),
            lambda _conn, _pid, channel, _payload: received.put_nowait(channel),
        )
        async with MemFuse(database_url, pipeline_auto=False) as mf:
            memory = await mf.init("alice")
            await memory.add([{"role": "user", "content": f"line {i}"} for i in range(100)])
            assert await asyncio.wait_for(received.get(), timeout=5) == "memfuse_embedding_jobs"
            await asyncio.sleep(0.2)
            assert received.empty(), "one notification for the whole call"
    finally:
        await listener.close()


async def test_0008_moves_fact_vectors_into_their_groups_and_back(engine: AsyncEngine) -> None:
    """Facts stored before 0008 each held their group's vector: upgrading keeps one per group
    (the newest fact's), numbers every fact's group from its first source message, and
    downgrading gives every fact its group's vector again."""
    await migrate.upgrade(engine, "0007")
    first_message = await insert_message(engine, "one")
    vectors = {0: [0.1] * 384, 1: [0.2] * 384}
    async with engine.begin() as connection:
        scope = (
            await connection.execute(
                text("SELECT user_id, agent_id, session_id FROM memfuse.messages WHERE id = :id"),
                {"id": first_message},
            )
        ).one()
        fifth_message = (
            await connection.execute(
                text(
                    "INSERT INTO memfuse.messages"
                    " (user_id, agent_id, session_id, seq, role, content)"
                    " VALUES (:u, :a, :s, 5, 'user', 'five') RETURNING id"
                ),
                {"u": scope.user_id, "a": scope.agent_id, "s": scope.session_id},
            )
        ).scalar_one()
        for source, group, content in (
            (first_message, 0, "fact a"),
            (first_message, 0, "fact b"),
            (fifth_message, 1, "fact c"),
        ):
            await connection.execute(
                text(
                    "INSERT INTO memfuse.facts"
                    " (user_id, agent_id, session_id, content, message_ids, embedding)"
                    " VALUES (:u, :a, :s, :c, ARRAY[CAST(:m AS uuid)], :v)"
                ),
                {
                    "u": scope.user_id,
                    "a": scope.agent_id,
                    "s": scope.session_id,
                    "c": content,
                    "m": str(source),
                    "v": vectors[group],
                },
            )

    await migrate.upgrade(engine)
    async with engine.connect() as connection:
        groups = (
            await connection.execute(
                text(
                    "SELECT group_no, user_id, embedding::text FROM memfuse.fact_groups"
                    " ORDER BY group_no"
                )
            )
        ).all()
        numbered = (
            await connection.execute(
                text("SELECT content, group_no FROM memfuse.facts ORDER BY content")
            )
        ).all()
    assert [(g.group_no, g.user_id) for g in groups] == [(0, scope.user_id), (1, scope.user_id)]
    assert [json.loads(g.embedding) for g in groups] == [
        pytest.approx(vectors[0]),
        pytest.approx(vectors[1]),
    ]
    assert [tuple(row) for row in numbered] == [("fact a", 0), ("fact b", 0), ("fact c", 1)]

    await migrate.downgrade(engine, "0007")
    async with engine.connect() as connection:
        restored = (
            await connection.execute(
                text("SELECT content, embedding::text FROM memfuse.facts ORDER BY content")
            )
        ).all()
    assert [(content, json.loads(vector)) for content, vector in restored] == [
        ("fact a", pytest.approx(vectors[0])),
        ("fact b", pytest.approx(vectors[0])),
        ("fact c", pytest.approx(vectors[1])),
    ]
