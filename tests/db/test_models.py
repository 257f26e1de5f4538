"""The ORM models and the migrations describe the same schema, and its SQL rules agree with
their Python twins."""

from __future__ import annotations

from typing import Any

import parts
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.db.models import (
    SCHEMA,
    SPEAKER_SEPARATOR,
    VERSION_TABLE,
    Base,
    message_text,
    message_user_words,
    user_word,
)
from memfuse.memory import MemFuse


def autogenerate_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "version_table": VERSION_TABLE,
            "version_table_schema": SCHEMA,
            "include_schemas": True,
            "include_name": lambda name, type_, _parents: type_ != "schema" or name == SCHEMA,
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_equal_migrations(migrated_engine: AsyncEngine) -> None:
    async with migrated_engine.connect() as connection:
        diff = await connection.run_sync(autogenerate_diff)
    assert diff == []


async def test_a_message_is_indexed_as_message_text_reads_it(database_url: str) -> None:
    """The full-text column (SQL, in the models and migration 0004) and ``message_text`` (what
    the worker embeds and an episode line shows) are one rule: they agree, with and without a
    speaker, after every migration."""
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("alice", session="chat")
        cases = [("Caroline", "I went to a support group"), (None, "Melanie paints sunsets")]
        await memory.add(
            [
                {"role": "user", "content": content, **({"name": name} if name else {})}
                for name, content in cases
            ]
        )
        async with parts.db(mf) as db:
            for name, content in cases:
                same = await db.scalar(
                    text(
                        "SELECT content_tsv = to_tsvector('english', :expected)"
                        " FROM memfuse.messages WHERE content = :content"
                    ),
                    {"expected": message_text(name, content), "content": content},
                )
                assert same is True, (name, content)
    assert message_text("Caroline", "hi") == f"Caroline{SPEAKER_SEPARATOR}hi"
    assert message_text(None, "hi") == message_text("", "hi") == "hi"


async def test_a_users_word_keys_fit_a_lexeme_and_keep_the_word(
    migrated_engine: AsyncEngine,
) -> None:
    """``ix_messages_user_words_gin`` holds each word of a message under its user's key (8 hex
    digits of the user's id, then the word), and a search asks for the keys ``user_word``
    makes. Words of more than 2038 bytes are their own keys: prefixed, they would overflow a
    lexeme's 2046 bytes and fail the indexing write. Quotes, backslashes, spaces and other
    scripts are kept as they are."""
    user = "b481f44c-7c24-4678-8490-597f4f4e3f74"
    lexemes = ["it's", "a\\b", "' y", "東京", "a" * 2038, "b" * 2039, "é" * 1019, "é" * 1020]
    sql = f"""
        WITH row AS (
            SELECT CAST(:user AS uuid) AS user_id, array_to_tsvector(CAST(:lexemes AS text[]))
                AS content_tsv
        )
        SELECT ARRAY(SELECT k FROM unnest(tsvector_to_array({message_user_words(SCHEMA)})) AS k),
               ARRAY(SELECT {user_word(SCHEMA, "w", "CAST(:user AS uuid)")}
                     FROM unnest(CAST(:lexemes AS text[])) AS w)
        FROM row"""
    async with migrated_engine.connect() as connection:
        indexed, asked = (
            await connection.execute(text(sql), {"user": user, "lexemes": lexemes})
        ).one()
    assert asked == [
        "b481f44cit's", "b481f44ca\\b", "b481f44c' y", "b481f44c東京",
        "b481f44c" + "a" * 2038, "b" * 2039, "b481f44c" + "é" * 1019, "é" * 1020,
    ]  # fmt: skip
    assert sorted(indexed) == sorted(asked)
