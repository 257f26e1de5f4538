"""``mf.requeue_dead_letters()``: rows the worker gave up on get a fresh start, while the real
worker and the pipeline run."""

from __future__ import annotations

import parts
import pytest
from real_model import memfuse_with_model
from sqlalchemy import text

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import ValidationError
from memfuse.memory import MemFuse


async def test_a_dead_letter_is_requeued_and_embedded(
    database_url: str, model: LocalEmbedder
) -> None:
    async with memfuse_with_model(database_url, model) as mf:
        memory = await mf.init("alice", session="pets")
        [message_id] = await memory.add([{"role": "user", "content": "I adopted a cat."}])
        await mf.flush()
        # as if the worker had given up on the row: no vector, no job, one dead letter
        async with parts.transaction(mf) as db:
            await db.execute(
                text("UPDATE memfuse.messages SET embedding = NULL WHERE id = :id"),
                {"id": message_id},
            )
            await db.execute(text("DELETE FROM memfuse.embedding_jobs"))
            await db.execute(
                text(
                    "INSERT INTO memfuse.embedding_dead_letters"
                    " (id, table_name, row_id, enqueued_at, attempts, last_error)"
                    " VALUES (1, 'messages', :id, now(), 5, 'the model was away')"
                ),
                {"id": message_id},
            )
        assert [row.embedded for row in await memory.list_messages()] == [False]
        health = await mf.health()
        assert not health.ok, "a dead letter fails the dead-letter check"

        assert await mf.requeue_dead_letters("episodes") == 0, "only the table asked for"
        assert await mf.requeue_dead_letters("messages") == 1
        await mf.flush()
        assert [row.embedded for row in await memory.list_messages()] == [True]
        assert (await mf.health()).ok
        assert await mf.requeue_dead_letters() == 0


async def test_an_unknown_table_is_refused(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        with pytest.raises(ValidationError, match="messages, episodes, facts") as caught:
            await mf.requeue_dead_letters("users")
        assert caught.value.field == "table"
