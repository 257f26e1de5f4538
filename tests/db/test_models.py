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
    MESSAGE_USER_WORDS,
    SCHEMA,
    SPEAKER_SEPARATOR,
    VERSION_TABLE,
    Base,
    message_text,
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


async def test_the_user_words_index_keys_are_the_ones_a_search_asks_for(
    migrated_engine: AsyncEngine,
) -> None:
    """``ix_messages_user_words_gin`` rewrites a tsvector's text into the user's keys with a
    regular expression; a search builds each key from a lexeme (``user_word``). Both agree on
    lexemes that stress the rewrite: quotes and backslashes (doubled in the text), spaces,
    other scripts, words of 200 characters (prefixed) and longer (kept as they are, up to the
    2046-byte maximum, which a prefix would overflow)."""
    lexemes = [
        "it's", "a\\b", "'", "\\", " x", "a''b", "' y", "x:1", "東京", "naïve",
        "a" * 200, "é" * 200, "b" * 201, "'" * 200, "'" * 201, "\\" * 199 + "z", "q" * 2046,
    ]  # fmt: skip
    texts = ["Caroline: I went to a support group", "back\\slash o'brien 東京 café", ""]
    user = "b481f44c-7c24-4678-8490-597f4f4e3f74"
    sql = f"""
        WITH rows AS (
            SELECT CAST(:user AS uuid) AS user_id, array_to_tsvector(CAST(:lexemes AS text[]))
                AS content_tsv
            UNION ALL
            SELECT CAST(:user AS uuid), to_tsvector('english', t)
            FROM unnest(CAST(:texts AS text[])) AS t
        )
        SELECT ARRAY(SELECT k FROM unnest(tsvector_to_array({MESSAGE_USER_WORDS})) AS k ORDER BY k),
               ARRAY(SELECT {user_word("lexeme", "user_id")} AS k
                     FROM unnest(tsvector_to_array(content_tsv)) AS lexeme ORDER BY k),
               cardinality(tsvector_to_array(content_tsv))
        FROM rows"""
    async with migrated_engine.connect() as connection:
        found = (
            await connection.execute(text(sql), {"user": user, "lexemes": lexemes, "texts": texts})
        ).all()
    assert [count for _, _, count in found] == [len(lexemes), 4, 6, 0]
    for indexed, asked, _ in found:
        assert indexed == asked
    keys = set(found[0][0])
    assert "b481f44c" + "a" * 200 in keys and "b" * 201 in keys and "q" * 2046 in keys
    assert "b481f44c東京" in keys and "b481f44c' y" in keys
