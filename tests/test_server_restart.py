"""Issue 12: the database restarts mid-traffic. Nothing acknowledged is lost or stored twice,
callers see only memfuse's own errors meanwhile, and the same ``MemFuse`` recovers by itself.

The test runs its own embedded PostgreSQL in a private temporary directory (the shared test
server must not go down under other tests), stops it with a fast shutdown while writers add
messages with client-supplied ids, and starts it again on the same data directory (and so the
same socket path and URL) about 1.5 s later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import parts
import pytest

from memfuse import MemFuse
from memfuse.config.urls import asyncpg_connect_args
from memfuse.db.embedded import EmbeddedPostgres
from memfuse.errors import ClosedError, DatabaseUnavailableError, MemfuseError
from memfuse.memory import Memory
from memfuse.types import MessageRow

logger = logging.getLogger(__name__)

ACCEPTABLE_DURING_OUTAGE: tuple[type[MemfuseError], ...] = (DatabaseUnavailableError, ClosedError)
"""What a caller may see while the server is down: an outage, or (for a call in the write
buffer's batch at the wrong moment) "closed, retry with the same ids"."""

OUTAGE_SECONDS = 1.5
RECOVERY_SECONDS = 30.0
"""After the restart every caller must succeed again within this long."""
CALL_SECONDS = 15.0
"""A single call taking longer than this counts as hung (an unexpected ``TimeoutError``)."""
RETRY_PAUSE = 0.05
WRITE_PAUSE = 0.02
SPEAKERS = ("Ana", "Ben")
LINES = (
    "I live in Porto and work as a nurse.",
    "My favourite food is grilled sardines.",
    "We are flying to Lisbon on May 3rd.",
    "Yesterday I adopted a cat called Miso.",
    "What time does the museum open?",
)


@dataclass
class CallerLog:
    """What one caller saw: the ids acknowledged (a writer's, in order), when it last
    succeeded, and every error by type (``unexpected``: those no caller should see)."""

    name: str
    acknowledged: list[uuid.UUID] = field(default_factory=list)
    last_ack: float = 0.0
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def failed(self, error: Exception) -> None:
        """Count a failed call; anything but the outage's own errors is the bug under test
        (a raw driver or OS error that leaked, above all)."""
        self.errors[type(error).__name__] += 1
        if not isinstance(error, ACCEPTABLE_DURING_OUTAGE):
            self.unexpected.append(_origin(error))


def _origin(error: BaseException) -> str:
    """The error with the innermost memfuse frame that raised or passed it on, for reports."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if "/memfuse/" in frame.filename]
    where = f" at {ours[-1].filename}:{ours[-1].lineno} ({ours[-1].name})" if ours else ""
    causes: list[str] = []
    inner: BaseException | None = error.__cause__ or error.__context__
    while inner is not None and len(causes) < 4:
        causes.append(type(inner).__name__)
        inner = inner.__cause__ or inner.__context__
    chain = f" <- {' <- '.join(causes)}" if causes else ""
    first_line = next(iter(str(error).splitlines()), "")  # a bare TimeoutError() has none
    return f"{type(error).__name__}{chain}: {first_line[:200]}{where}"


async def _writer(memory: Memory, log: CallerLog, stop: asyncio.Event) -> None:
    """Add two messages per call until stopped; a failed call is retried with the same ids
    until it is acknowledged, so every call attempted ends acknowledged."""
    number = 0
    while not stop.is_set():
        batch = []
        for _ in range(2):
            number += 1
            batch.append(
                {
                    "id": str(uuid.uuid4()),
                    "role": "user" if number % 2 else "assistant",
                    "name": SPEAKERS[number % 2],
                    "content": f"{LINES[number % len(LINES)]} ({log.name} #{number})",
                }
            )
        expected = [uuid.UUID(str(message["id"])) for message in batch]
        while True:
            log.calls += 1
            try:
                ids = await asyncio.wait_for(memory.add(batch), CALL_SECONDS)
            except Exception as error:
                log.failed(error)
            else:
                assert ids == expected, f"{log.name}: add() returned other ids"
                log.acknowledged.extend(ids)
                log.last_ack = time.monotonic()
                break
            await asyncio.sleep(RETRY_PAUSE)
        await asyncio.sleep(WRITE_PAUSE)


async def _reader(mf: MemFuse, memory: Memory, log: CallerLog, stop: asyncio.Event) -> None:
    """Every other kind of call, round robin, until stopped: each must work or fail clearly."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: memory.query(f"Lisbon {uuid.uuid4()}"),  # a new text: never a cached result
        lambda: mf.init(memory.user, memory.agent, "reader"),
        lambda: memory.list_messages(limit=5),
        lambda: memory.get_message(uuid.uuid4()),
        mf.flush,
    ]
    number = 0
    while not stop.is_set():
        number += 1
        log.calls += 1
        try:
            await asyncio.wait_for(calls[number % len(calls)](), CALL_SECONDS)
        except Exception as error:
            log.failed(error)
        else:
            log.last_ack = time.monotonic()
        await asyncio.sleep(RETRY_PAUSE)


async def _eventually(
    check: Callable[[], Awaitable[bool]],
    seconds: float,
    what: str,
    pause: float = 0.05,
    state: Callable[[], Awaitable[str]] | None = None,
) -> float:
    """Wait until ``check()`` holds; returns how long it took, fails after ``seconds``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started >= seconds:
            details = await state() if state is not None else ""
            raise AssertionError(f"{what}: not within {seconds} s; {details}")
        await asyncio.sleep(pause)
    return time.monotonic() - started


def _stack(task: asyncio.Task[Any]) -> str:
    """The awaited chain of a suspended task, outermost first (``get_stack`` gives one frame)."""
    frames: list[str] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None and len(frames) < 30:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            frames.append(type(awaitable).__name__)
            break
        frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return " > ".join(frames)


async def _state(url: str, logs: list[CallerLog], mf: MemFuse, since: float) -> str:
    """Where each caller and task is, and what the server's sessions do: for a failure."""
    lines = [
        f"{log.name}: {log.calls} calls, last success {log.last_ack - since:+.2f} s after "
        f"the restart, errors {dict(log.errors)}, unexpected {log.unexpected[-2:]}"
        for log in logs
    ]
    states = [*(await parts.pipeline(mf)).task_states()]
    if (await parts.write_buffer(mf)) is not None:
        states.extend((await parts.write_buffer(mf)).task_states())
    lines.append(str(states))
    lines.extend(f"{task.get_name()}: {_stack(task)}" for task in asyncio.all_tasks())
    try:
        rows = await _fetch(
            url,
            "SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS age,"
            " left(query, 160) AS query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        lines.extend(str(dict(row)) for row in rows)
        locks = await _fetch(
            url,
            "SELECT pid, locktype, mode, granted, relation::regclass::text AS rel"
            " FROM pg_locks WHERE NOT granted OR locktype = 'advisory'",
        )
        lines.extend(str(dict(row)) for row in locks)
    except Exception as error:
        lines.append(f"no server state: {error!r}")
    return "\n".join(lines)


async def _outage_error(call: Awaitable[Any]) -> str:
    """The type of error ``call`` raised while the server is down (it must raise)."""
    try:
        await asyncio.wait_for(call, CALL_SECONDS)
    except Exception as error:
        if isinstance(error, DatabaseUnavailableError):
            return type(error).__name__
        return _origin(error)
    return "no error"


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _pipeline_pending(url: str, layers: list[str]) -> list[str]:
    """Session layers whose progress is behind the session's message counter."""
    rows = await _fetch(
        url,
        "SELECT s.id, s.message_count, l.layer, coalesce(p.processed_seq, 0) AS done"
        " FROM memfuse.sessions s"
        f" CROSS JOIN unnest(ARRAY{layers!r}::text[]) AS l(layer)"
        " LEFT JOIN memfuse.layer_progress p ON p.session_id = s.id AND p.layer = l.layer"
        " WHERE s.message_count <> coalesce(p.processed_seq, 0)",
    )
    return [f"{row['layer']} of {row['id']}: {row['done']}/{row['message_count']}" for row in rows]


async def _nothing_pending(url: str, layers: list[str]) -> bool:
    return not await _pipeline_pending(url, layers)


class _Server:
    """The private embedded server, stopped and started again on the same data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._handle: EmbeddedPostgres | None = None

    async def start(self) -> str:
        self._handle = EmbeddedPostgres(self.data_dir)
        return await self._handle.start()

    async def stop(self) -> None:
        """A fast shutdown (``pg_ctl stop``'s default mode): sessions are terminated."""
        handle, self._handle = self._handle, None
        if handle is not None:
            await handle.stop()


@pytest.mark.slow
async def test_a_server_restart_mid_traffic_loses_nothing_and_the_same_memfuse_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="memfuse")
    with tempfile.TemporaryDirectory(prefix="memfuse-restart-") as data_dir:
        server = _Server(Path(data_dir))
        url = await server.start()
        mf = MemFuse(url)  # write buffer and in-process pipeline on (the defaults)
        try:
            await mf.start()
            await _restart_mid_traffic(mf, url, server)
        finally:
            await mf.close()
            await server.stop()
            # What the background tasks went through (logged, never raised to a caller).
            seen = Counter(
                f"{record.name}: {record.getMessage().splitlines()[0][:160]}"
                for record in caplog.records
                if record.name.startswith("memfuse") and record.levelno >= logging.WARNING
            )
            logger.info("restart: library warnings %s", dict(seen))


async def _restart_mid_traffic(mf: MemFuse, url: str, server: _Server) -> None:
    """The scenario, on a started ``mf`` over ``server``."""
    sessions = [("alice", "trip"), ("alice", "trip"), ("alice", "work"), ("bob", "trip")]
    memories = [await mf.init(user, "assistant", session) for user, session in sessions]
    logs = [CallerLog(f"writer-{n}") for n in range(len(memories))]
    readers = [CallerLog(f"reader-{n}") for n in range(2)]
    stop = asyncio.Event()
    writers = [
        asyncio.create_task(_writer(memory, log, stop))
        for memory, log in zip(memories, logs, strict=True)
    ] + [asyncio.create_task(_reader(mf, memories[n], log, stop)) for n, log in enumerate(readers)]
    try:
        warmup = await _eventually(
            _all(lambda: all(len(log.acknowledged) >= 6 for log in logs)), 10, "warm-up"
        )

        # Outage: a fast shutdown, with the writers going on.
        await server.stop()
        down_at = time.monotonic()
        during = {
            "query": await _outage_error(memories[0].query(f"Lisbon {uuid.uuid4()}")),
            "init": await _outage_error(mf.init("carol", "assistant", "during-outage")),
            "flush": await _outage_error(mf.flush()),
            "list": await _outage_error(memories[1].list_messages()),
        }
        health = await mf.health()
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        errors_in_outage = sum((log.errors for log in logs), Counter[str]())

        assert await server.start() == url, "the restarted server has another URL"
        up_at = time.monotonic()
        recovery = await _eventually(
            _all(lambda: all(log.last_ack > up_at for log in (*logs, *readers))),
            RECOVERY_SECONDS,
            "every caller succeeds again after the restart",
            state=lambda: _state(url, [*logs, *readers], mf, up_at),
        )
        found_after = await memories[0].query(f"Lisbon {uuid.uuid4()}")
        memory_after = await mf.init("carol", "assistant", "after-outage")
        # More traffic on the recovered connections before stopping.
        acked = [len(log.acknowledged) for log in logs]
        await _eventually(
            _all(
                lambda: all(
                    len(log.acknowledged) >= n + 6 for log, n in zip(logs, acked, strict=True)
                )
            ),
            RECOVERY_SECONDS,
            "writes go on after the recovery",
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*writers), RECOVERY_SECONDS)
    finally:
        stop.set()
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)

    errors = sum((log.errors for log in (*logs, *readers)), Counter[str]())
    unexpected = [f"{log.name}: {error}" for log in (*logs, *readers) for error in log.unexpected]
    summary = (
        f"errors seen: {dict(errors)}; during the outage: {during}; "
        f"recovered in {recovery:.2f} s; acknowledged: {[len(log.acknowledged) for log in logs]}"
    )
    logger.info("restart: %s", summary)
    assert not unexpected, (
        f"raw or unexpected errors reached a caller: {unexpected[:10]}; {summary}"
    )
    assert set(during.values()) == {"DatabaseUnavailableError"}, summary
    assert errors_in_outage["DatabaseUnavailableError"] > 0, f"no writer saw the outage; {summary}"
    assert not health.ok, "health() during the outage reported ok"
    assert isinstance(found_after, list)
    assert memory_after.session == "after-outage"

    # The background tasks, which back off while the server is down, run again; and the
    # background pipeline (not replaced either) processes a new write without a flush().
    healthy = await _eventually(_healthy(mf), 15, "health() ok after the restart", 0.1)
    last = {"id": str(uuid.uuid4()), "role": "user", "content": "I moved to Braga last week."}
    assert await memories[-1].add([last]) == [uuid.UUID(last["id"])]
    logs[-1].acknowledged.append(uuid.UUID(last["id"]))
    layers = sorted((await parts.pipeline(mf)).processors)
    catch_up = await _eventually(
        lambda: _nothing_pending(url, layers), RECOVERY_SECONDS, "the pipeline catches up", 0.1
    )
    logger.info(
        "restart: warm-up %.2f s, healthy again %.2f s, pipeline catch-up %.2f s",
        warmup,
        healthy,
        catch_up,
    )
    # flush() works on the same MemFuse; every acknowledged message is there once, in order.
    await asyncio.wait_for(mf.flush(), RECOVERY_SECONDS)
    await _check_messages(url, memories, logs)
    assert not await _pipeline_pending(url, layers), "the pipeline did not catch up"
    await _check_episodes(url)


def _healthy(mf: MemFuse) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await mf.health()).ok

    return check


def _all(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def _check_messages(url: str, memories: list[Memory], logs: list[CallerLog]) -> None:
    """Every acknowledged id is stored once, in its writer's session, and nothing else is;
    each session's numbers are 1..message_count with no gap and no repeat."""
    rows = await _fetch(url, "SELECT id, session_id, seq FROM memfuse.messages")
    stored = Counter(row["id"] for row in rows)
    assert not [i for i, n in stored.items() if n > 1], "a message is stored twice"
    expected: dict[uuid.UUID, uuid.UUID] = {}
    for memory, log in zip(memories, logs, strict=True):
        assert len(set(log.acknowledged)) == len(log.acknowledged)
        for message_id in log.acknowledged:
            expected[message_id] = memory.scope.session_id
    by_id = {row["id"]: row["session_id"] for row in rows}
    missing = [i for i in expected if i not in by_id]
    assert not missing, f"{len(missing)} acknowledged messages were lost"
    assert {i: by_id[i] for i in expected} == expected, "a message is in the wrong session"
    assert set(by_id) == set(expected), "messages nobody was told about were stored"

    counters = {
        row["id"]: row["message_count"]
        for row in await _fetch(url, "SELECT id, message_count FROM memfuse.sessions")
    }
    seqs: dict[uuid.UUID, list[int]] = {}
    for row in rows:
        seqs.setdefault(row["session_id"], []).append(row["seq"])
    for session_id, numbers in seqs.items():
        assert sorted(numbers) == list(range(1, counters[session_id] + 1)), (
            f"session {session_id}: numbers are not 1..{counters[session_id]}"
        )

    # The same through the API, per session in order: each writer's messages in the order it
    # was told they were written (a call's messages are numbered after the previous call's).
    for memory in {m.scope.session_id: m for m in memories}.values():
        listed: list[MessageRow] = []
        while page := await memory.list_messages(limit=1000, offset=len(listed), order="asc"):
            listed.extend(page)
        assert [m.seq for m in listed] == list(range(1, len(listed) + 1))
        position = {m.id: m.seq for m in listed}
        for log, owner in zip(logs, memories, strict=True):
            if owner.scope.session_id == memory.scope.session_id:
                numbers = [position[i] for i in log.acknowledged]
                assert numbers == sorted(numbers), f"{log.name}: numbers out of order"


async def _check_episodes(url: str) -> None:
    """M1 holds every message exactly once: nothing processed twice across the outage."""
    in_episodes = Counter(
        row["id"]
        for row in await _fetch(url, "SELECT unnest(message_ids) AS id FROM memfuse.episodes")
    )
    stored = {row["id"] for row in await _fetch(url, "SELECT id FROM memfuse.messages")}
    assert set(in_episodes) == stored, "M1 misses messages or names unknown ones"
    assert max(in_episodes.values()) == 1, "a message is in two episodes"


def _server_processes(pgdata: Path) -> list[int]:
    """The postmaster and its children (backends, checkpointer, ...)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *(int(pid) for pid in children)]


@pytest.mark.slow
async def test_a_frozen_server_fails_calls_in_time_and_close_still_ends() -> None:
    """A server that accepts connections but never answers (SIGSTOP: what a partition that
    drops packets looks like) must not hang callers or close(): the command and connect
    timeouts turn it into DatabaseUnavailableError."""
    with tempfile.TemporaryDirectory(prefix="memfuse-frozen-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir))
        url = await server.start()
        mf = MemFuse(url, command_timeout=2.0, connect_timeout=2.0)
        frozen: list[int] = []
        try:
            await mf.start()
            memory = await mf.init("ana")
            await memory.add([{"role": "user", "content": "before the freeze"}])
            await mf.flush()
            frozen = _server_processes(server.pgdata)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            for call in (
                memory.add([{"role": "user", "content": "during the freeze"}]),
                memory.list_messages(),
            ):
                with pytest.raises(DatabaseUnavailableError, match="no answer in time"):
                    await asyncio.wait_for(call, 30)
            assert time.monotonic() - started < 20
            await asyncio.wait_for(mf.close(), 30)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            await mf.close()
            await server.stop()
