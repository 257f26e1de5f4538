"""Writers that can meet, run together with the real embedding worker and pipeline.

Every writer takes its locks in one order (docs/layers.md#lock-order): user, session, layer
progress, the user's fact lock, memory rows, embedding jobs; the worker takes memory rows then
jobs and never waits (``SKIP LOCKED``). These tests run each pair that can meet (add, edit,
delete message, delete session, delete user, the pipeline, the worker) at once, many rounds,
and check PostgreSQL's own deadlock counter as well as every call's outcome.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import pytest
from real_model import memfuse_with_model

from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import NotFoundError
from memfuse.memory import Memory


async def deadlocks(url: str) -> int:
    """PostgreSQL's count of deadlocks in this database (read from a new connection)."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        return int(
            await connection.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await connection.close()


async def orphans(url: str) -> dict[str, int]:
    """Rows left without their session (messages: the trigger's cascade, migration 0012;
    the others: foreign keys) or their message's job without its message."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        messages = await connection.fetchval(
            "SELECT count(*) FROM memfuse.messages AS m WHERE NOT EXISTS ("
            " SELECT 1 FROM memfuse.sessions AS s WHERE (s.id, s.user_id, s.agent_id)"
            " = (m.session_id, m.user_id, m.agent_id))"
        )
        jobs = await connection.fetchval(
            "SELECT count(*) FROM memfuse.embedding_jobs AS j WHERE j.table_name = 'messages'"
            " AND NOT EXISTS (SELECT 1 FROM memfuse.messages AS m WHERE m.id = j.row_id)"
        )
        return {"messages": int(messages), "message_jobs": int(jobs)}
    finally:
        await connection.close()


def turns(prefix: str, count: int) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{prefix} says thing {i}"}
        for i in range(count)
    ]


async def edit_and_delete(memory: Memory, rng: random.Random) -> None:
    """Edit some of a session's messages and delete others, one call at a time."""
    rows = await memory.list_messages(limit=100)
    rng.shuffle(rows)
    for row in rows[: len(rows) // 2]:
        if rng.random() < 0.5:
            await memory.update_message(row.id, content=f"{row.content} (edited)")
        else:
            await memory.delete_message(row.id)


def unexpected(outcomes: list[object]) -> list[BaseException]:
    """Errors other than the NotFoundError a deleted scope may answer with."""
    return [
        o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, NotFoundError)
    ]


@pytest.mark.slow
async def test_writers_racing_the_worker_and_the_pipeline_never_deadlock(
    database_url: str, model: LocalEmbedder
) -> None:
    rng = random.Random(12)
    async with memfuse_with_model(
        database_url, model, worker_poll_interval=0.2, pipeline_poll_interval=0.5
    ) as mf:
        before = await deadlocks(database_url)
        for round_ in range(4):
            tag = f"r{round_}-{uuid.uuid4().hex[:6]}"
            doomed = await mf.init(f"doomed-{tag}", session="a")
            other_doomed = await mf.init(f"doomed-{tag}", session="b")
            pruned = await mf.init(f"pruned-{tag}", session="a")
            kept = await mf.init(f"pruned-{tag}", session="b")
            edited = await mf.init(f"edited-{tag}", session="a")
            growing = await mf.init(f"growing-{tag}", session="a")
            for memory in (doomed, other_doomed, pruned, kept, edited, growing):
                await memory.add(turns(memory.user, 12))
            # The worker and the pipeline are busy with what was just added; now every kind
            # of writer meets them and each other.
            outcomes = await asyncio.gather(
                doomed.delete_user(),
                other_doomed.add(turns("late", 4)),
                pruned.delete_session(),
                edit_and_delete(kept, rng),
                edit_and_delete(edited, rng),
                edit_and_delete(edited, rng),
                growing.add(turns("more", 6)),
                growing.add(turns("again", 6)),
                mf.flush(),
                return_exceptions=True,
            )
            assert unexpected(outcomes) == [], f"round {round_}: {unexpected(outcomes)}"
            assert await orphans(database_url) == {"messages": 0, "message_jobs": 0}
        await mf.flush()
        assert (await resolve(mf.container.embedding_worker)) is not None and await (
            await resolve(mf.container.embedding_worker)
        ).queue_depth() == 0
    assert await deadlocks(database_url) == before


@pytest.mark.slow
async def test_deleting_users_while_the_worker_embeds_their_rows(
    database_url: str, model: LocalEmbedder
) -> None:
    """The worker writes vectors for rows whose user is being deleted: the deletion wins
    at once or waits for the worker's short write, never the other way round."""
    async with memfuse_with_model(database_url, model, worker_poll_interval=0.2) as mf:
        before = await deadlocks(database_url)
        for round_ in range(6):
            memories = [await mf.init(f"user-{round_}-{n}") for n in range(4)]
            await asyncio.gather(*(m.add(turns(m.user, 24)) for m in memories))
            await asyncio.sleep(0.05 * (round_ % 4))  # meet the worker at different points
            outcomes = await asyncio.gather(
                *(m.delete_user() for m in memories), return_exceptions=True
            )
            assert unexpected(outcomes) == []
        await mf.flush()
    assert await deadlocks(database_url) == before


@pytest.mark.slow
async def test_adds_racing_the_deletion_of_their_session_leave_no_orphan(
    database_url: str, model: LocalEmbedder
) -> None:
    """A session is deleted while several callers add to it, beside the worker and the
    pipeline: each add() is written before the deletion (and deleted with the session) or
    fails with NotFoundError; no message outlives its session (the trigger's cascade,
    migration 0012)."""
    async with memfuse_with_model(
        database_url, model, buffer_enabled=False, worker_poll_interval=0.2
    ) as mf:
        for round_ in range(6):
            memory = await mf.init(f"racer-{round_}", session="doomed")
            await memory.add(turns("first", 8))
            writers = [memory.add(turns(f"w{n}", 5)) for n in range(6)]
            await asyncio.sleep(0.02 * (round_ % 3))
            outcomes = await asyncio.gather(
                *writers[:3], memory.delete_session(), *writers[3:], return_exceptions=True
            )
            assert unexpected(outcomes) == [], f"round {round_}: {unexpected(outcomes)}"
            assert await orphans(database_url) == {"messages": 0, "message_jobs": 0}
            assert await (await mf.init(f"racer-{round_}", session="doomed")).list_messages() == []
        await mf.flush()
