"""The embedding queue's SQL: which jobs a claim takes, and which a flush makes due."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memfuse.repositories.jobs import MESSAGE_HEAD_START, JobRepository

LEASE = timedelta(seconds=60)


async def queue(engine: AsyncEngine, table_name: str, *, age: timedelta) -> uuid.UUID:
    """Queue a job of ``table_name`` that became due ``age`` ago; its row id."""
    row_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO memfuse.embedding_jobs (table_name, row_id, retry_after)"
                " VALUES (:table_name, :row_id, clock_timestamp() - CAST(:age AS interval))"
            ),
            {"table_name": table_name, "row_id": row_id, "age": age},
        )
    return row_id


async def claim_one(engine: AsyncEngine) -> uuid.UUID:
    async with async_sessionmaker(engine).begin() as db:
        (job,) = await JobRepository(db).claim(1, owner="test", lease=LEASE)
    return job.row_id


async def test_a_message_is_claimed_before_derived_rows_queued_a_little_earlier(
    migrated_engine: AsyncEngine,
) -> None:
    fact = await queue(migrated_engine, "facts", age=timedelta(seconds=2))
    episode = await queue(migrated_engine, "episodes", age=timedelta(seconds=1))
    message = await queue(migrated_engine, "messages", age=timedelta(0))
    assert [await claim_one(migrated_engine) for _ in range(3)] == [message, fact, episode]


async def test_derived_rows_waiting_longer_than_the_head_start_go_first(
    migrated_engine: AsyncEngine,
) -> None:
    """The head start is bounded, so a steady stream of messages never starves facts."""
    fact = await queue(migrated_engine, "facts", age=MESSAGE_HEAD_START + timedelta(seconds=5))
    message = await queue(migrated_engine, "messages", age=timedelta(0))
    assert [await claim_one(migrated_engine) for _ in range(2)] == [fact, message]


async def test_flush_makes_held_back_jobs_due_but_keeps_a_failing_jobs_backoff(
    migrated_engine: AsyncEngine,
) -> None:
    held_back = await queue(migrated_engine, "episodes", age=-timedelta(minutes=5))
    failing = await queue(migrated_engine, "facts", age=-timedelta(minutes=5))
    async with migrated_engine.begin() as connection:
        await connection.execute(
            text("UPDATE memfuse.embedding_jobs SET attempts = 1 WHERE row_id = :row_id"),
            {"row_id": failing},
        )
    async with async_sessionmaker(migrated_engine).begin() as db:
        assert await JobRepository(db).claim(10, owner="test", lease=LEASE) == []
        assert await JobRepository(db).expedite_deferred() == 1
    assert await claim_one(migrated_engine) == held_back
    async with async_sessionmaker(migrated_engine).begin() as db:
        assert await JobRepository(db).claim(10, owner="test", lease=LEASE) == []
