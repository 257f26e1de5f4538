"""Tenancy repositories: concurrent get-or-create and the per-session message counter."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memfuse.repositories import AgentRepository, SessionRepository, UserRepository


async def test_concurrent_get_or_create_returns_one_user(migrated_engine: AsyncEngine) -> None:
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)

    async def create() -> uuid.UUID:
        async with factory.begin() as session:
            return (await UserRepository(session).get_or_create("dana")).id

    ids = await asyncio.gather(*(create() for _ in range(10)))
    assert len(set(ids)) == 1


async def test_sequence_numbers_never_repeat_across_concurrent_calls(
    migrated_engine: AsyncEngine,
) -> None:
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)
    async with factory.begin() as session:
        user = await UserRepository(session).get_or_create("erin")
        agent = await AgentRepository(session).get_or_create(user.id, "default")
        chat = await SessionRepository(session).get_or_create(user.id, agent.id, "chat")

    async def allocate(count: int) -> list[int]:
        async with factory.begin() as session:
            first = await SessionRepository(session).allocate_sequence(user.id, chat.id, count)
            return list(range(first, first + count))

    batches = await asyncio.gather(*(allocate(n) for n in [1, 3, 2, 5, 1, 4] * 5))
    numbers = sorted(n for batch in batches for n in batch)
    assert numbers == list(range(1, len(numbers) + 1))


async def test_counter_is_scoped_to_the_owning_user(migrated_engine: AsyncEngine) -> None:
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)
    async with factory.begin() as session:
        owner = await UserRepository(session).get_or_create("owner")
        agent = await AgentRepository(session).get_or_create(owner.id, "default")
        chat = await SessionRepository(session).get_or_create(owner.id, agent.id, "chat")
        intruder = await UserRepository(session).get_or_create("intruder")
    async with factory.begin() as session:
        with pytest.raises(LookupError):
            await SessionRepository(session).allocate_sequence(intruder.id, chat.id, 1)
        assert await SessionRepository(session).get(intruder.id, chat.id) is None
        assert await AgentRepository(session).get_by_name(intruder.id, "default") is None
