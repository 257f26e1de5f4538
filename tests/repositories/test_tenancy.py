"""Tenancy: concurrent get-or-create, the per-session message counter, and ``init`` racing
the deletion of its own user or session."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import await_only

from memfuse.container import resolve
from memfuse.db.models import Message, Session
from memfuse.errors import ConflictError, MemfuseError, NotFoundError
from memfuse.memory import MemFuse, Memory
from memfuse.monitor import PerformanceMonitor
from memfuse.repositories import AgentRepository, SessionRepository, UserRepository
from memfuse.repositories.tenancy import DeletedConcurrentlyError
from memfuse.services.changes import AfterCommit
from memfuse.services.messages import MessageWriter, WriteRequest
from memfuse.services.tenancy import RESOLVE_ATTEMPTS, TenancyService
from memfuse.types import MemoryScope
from memfuse.validation import MessageInput


async def test_concurrent_get_or_create_returns_one_user(migrated_engine: AsyncEngine) -> None:
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)

    async def create() -> uuid.UUID:
        async with factory.begin() as session:
            return (await UserRepository(session).get_or_create("dana")).id

    ids = await asyncio.gather(*(create() for _ in range(10)))
    assert len(set(ids)) == 1


async def scoped(
    factory: async_sessionmaker[AsyncSession], user: str, session: str = "chat"
) -> MemoryScope:
    async with factory.begin() as db:
        owner = await UserRepository(db).get_or_create(user)
        agent = await AgentRepository(db).get_or_create(owner.id, "default")
        chat = await SessionRepository(db).get_or_create(owner.id, agent.id, session)
    return MemoryScope(owner.id, agent.id, chat.id, user, "default", session)


def request(scope: MemoryScope, count: int) -> WriteRequest:
    return WriteRequest(scope, [MessageInput(uuid.uuid4(), "user", f"m{i}") for i in range(count)])


async def test_sequence_numbers_never_repeat_across_concurrent_calls(
    migrated_engine: AsyncEngine,
) -> None:
    """The session's counter (``sessions.message_count``) numbers every write's rows after
    the last committed one, in commit order, with no gap and no repeat."""
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)
    chat = await scoped(factory, "erin")
    writer = MessageWriter(factory)
    sizes = [1, 3, 2, 5, 1, 4] * 5
    await asyncio.gather(*(writer.write([request(chat, n)]) for n in sizes))
    async with factory() as db:
        numbers = (
            await db.scalars(
                select(Message.seq).where(Message.session_id == chat.session_id).order_by("seq")
            )
        ).all()
        counter = await db.scalar(
            select(Session.message_count).where(Session.id == chat.session_id)
        )
    assert list(numbers) == list(range(1, sum(sizes) + 1))
    assert counter == sum(sizes)


async def test_counter_is_scoped_to_the_owning_user(migrated_engine: AsyncEngine) -> None:
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)
    chat = await scoped(factory, "owner")
    intruder = await scoped(factory, "intruder", "own")
    stolen = MemoryScope(
        intruder.user_id, intruder.agent_id, chat.session_id, "intruder", "default", "chat"
    )
    with pytest.raises(NotFoundError, match="no longer exists"):
        await MessageWriter(factory).write([request(stolen, 1)])
    async with factory() as session:
        assert await SessionRepository(session).get(intruder.user_id, chat.session_id) is None
        assert await session.scalar(select(func.count()).select_from(Message)) == 0


# --- init racing delete_user / delete_session --------------------------------------------------

ROUNDS = 120
INITS = 4  # concurrent inits of the same names per round


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    """A MemFuse whose every statement waits 0-1 ms first, like a round trip over a network.

    On a local socket the gap between two statements of ``init`` is a fraction of a
    millisecond; the latency lets a concurrent delete land in it often enough to be tested.
    """
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        engine = await resolve(mf.container.engine)
        rng = random.Random(7)

        def network_latency(*_: object) -> None:
            await_only(asyncio.sleep(rng.uniform(0, 0.001)))

        event.listen(engine.sync_engine, "before_cursor_execute", network_latency)
        yield mf


def describe(outcome: BaseException) -> str:
    text = str(outcome).strip()
    return f"{type(outcome).__name__}: {text.splitlines()[0] if text else ''}"


async def race_init_with(
    mf: MemFuse,
    delete: Callable[[Memory], Awaitable[None]],
    removed: Callable[[Memory, Memory], bool],
) -> list[str]:
    """Each round: create a scope, then delete it while ``init``s of the same names run.

    Returns every broken expectation: the delete must succeed or answer NotFoundError, each
    ``init`` must return a memory or raise a MemfuseError, and the returned memory's scope must
    exist (a message can be added) unless ``removed(victim, memory)``: the delete of this round
    removed it after ``init`` returned, and adding raises NotFoundError.
    """
    rng = random.Random(11)
    names = {"user": "racer", "agent": "assistant", "session": "chat"}

    async def init() -> Memory:
        await asyncio.sleep(rng.uniform(0, 0.004))
        return await mf.init(**names)

    problems: list[str] = []
    for round_ in range(ROUNDS):
        victim = await mf.init(**names)
        deleted, *inits = await asyncio.gather(
            delete(victim), *(init() for _ in range(INITS)), return_exceptions=True
        )
        if isinstance(deleted, BaseException) and not isinstance(deleted, NotFoundError):
            problems.append(f"round {round_}: delete raised {describe(deleted)}")
        memories = [outcome for outcome in inits if isinstance(outcome, Memory)]
        problems += [
            f"round {round_}: init raised raw {describe(outcome)}"
            for outcome in inits
            if isinstance(outcome, BaseException) and not isinstance(outcome, MemfuseError)
        ]
        added = await asyncio.gather(
            *(m.add([{"role": "user", "content": f"round {round_}"}]) for m in memories),
            return_exceptions=True,
        )
        for memory, outcome in zip(memories, added, strict=True):
            gone = deleted is None and removed(victim, memory)
            if isinstance(outcome, NotFoundError):
                if not gone:
                    problems.append(f"round {round_}: init returned a scope that does not exist")
            elif isinstance(outcome, BaseException):
                problems.append(f"round {round_}: add raised {describe(outcome)}")
            elif gone:
                problems.append(f"round {round_}: the deleted scope still takes writes")
    return problems


@pytest.mark.slow
async def test_init_racing_delete_user_never_raises_raw_errors(mf: MemFuse) -> None:
    problems = await race_init_with(
        mf,
        lambda victim: victim.delete_user(),
        lambda victim, memory: memory.scope.user_id == victim.scope.user_id,
    )
    assert not problems, f"{len(problems)} of {(INITS + 1) * ROUNDS} calls: {problems[:5]}"


@pytest.mark.slow
async def test_init_racing_delete_session_never_raises_raw_errors(mf: MemFuse) -> None:
    problems = await race_init_with(
        mf,
        lambda victim: victim.delete_session(),
        lambda victim, memory: memory.scope.session_id == victim.scope.session_id,
    )
    assert not problems, f"{len(problems)} of {(INITS + 1) * ROUNDS} calls: {problems[:5]}"


async def test_resolve_gives_up_cleanly_when_every_attempt_loses_its_session(
    migrated_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0

    async def deleted_meanwhile(self: SessionRepository, *_: object) -> None:
        nonlocal attempts
        attempts += 1
        raise DeletedConcurrentlyError("session 'chat' was deleted by a concurrent call")

    monkeypatch.setattr(SessionRepository, "get_or_create", deleted_meanwhile)
    factory = async_sessionmaker(migrated_engine, expire_on_commit=False)
    tenancy = TenancyService(
        factory, PerformanceMonitor(), after_commit=AfterCommit(invalidate=lambda _user: None)
    )
    with pytest.raises(ConflictError, match="retrying is safe") as raised:
        await tenancy.resolve("frank", "assistant", "chat")
    assert not isinstance(raised.value, DeletedConcurrentlyError)
    assert attempts == RESOLVE_ATTEMPTS
    async with factory() as session:  # every attempt rolled back: nothing was created
        assert await UserRepository(session).get_by_name("frank") is None
