"""Write path and layers benchmark: ``add()`` latency and throughput, M1/M2 processing time.

Run: ``.venv/bin/python -m benchmarks.layers [--rounds 5] [--ops 300] [--batch-size 100]
[--batch-ops 40] [--writers 64] [--writer-ops 20] [--messages 2000] [--layer-rounds 2]
[--output FILE.json]``
(database: ``MEMFUSE_DATABASE_URL``, else a fresh embedded server in a temporary directory).

Four measurements on one server in one run (``add_latency``, ``batch_insert``,
``throughput``, ``layers``), each against a baseline measured in the same run; what each one
times: docs/benchmarks.md, "Write path and layers". All memfuse instances run as configured by
default (the local embedder) with the in-process worker off: the embedding worker, which also
indexes the messages' words (migration 0009), is measured apart. Everything runs in schemas of its
own (dropped at the start and at the end), so a real database given by
``MEMFUSE_DATABASE_URL`` keeps its ``memfuse`` schema untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from benchmarks.foundation import Operation, compare, summary
from benchmarks.harness import run_benchmark
from memfuse.config.urls import asyncpg_connect_args
from memfuse.embedding.embedders import cpu_has_native_bfloat16
from memfuse.ingest import load_conversations
from memfuse.memory import MemFuse, Memory
from memfuse.monitor.performance import Alert, PerformanceMonitor
from memfuse.tokens import count_tokens
from memfuse.types import MemoryScope

DEFAULT_LOCOMO = Path(__file__).resolve().parents[2] / "shared/data/locomo/locomo_dev.json"
WRITE_SCHEMA = "bench_write"
LAYER_SCHEMA = "bench_layers"
RAW_SCHEMA = "bench_raw"
TARGETS_MS = {"m0_add": 100.0, "m1_per_message": 150.0, "m2_per_message": 150.0}
"""The original's budgets: M0 < 100 ms per add, M1 and M2 < 150 ms per message."""

RAW_TABLE = f"""
CREATE TABLE {RAW_SCHEMA}.bench_raw_messages (
    id uuid PRIMARY KEY,
    session_id uuid,
    seq bigint,
    role text,
    content text,
    metadata jsonb,
    created_at timestamptz DEFAULT now()
)"""
RAW_INSERT = (
    f"INSERT INTO {RAW_SCHEMA}.bench_raw_messages (id, session_id, seq, role, content, metadata)"
    " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
)

Message = dict[str, Any]
RawPool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


@dataclass(frozen=True, slots=True)
class ReplaySql:
    """memfuse's write for one message, as plain SQL on its own tables.

    The one statement ``MessageWriter.write`` sends for a single-message call (the
    ``write_messages`` function of migration 0006, in autocommit). Replayed on raw asyncpg it
    separates the server's share (locks, schema, indexes, triggers) from the client's
    (SQLAlchemy, validation, the buffer, the pool's ping).
    """

    call: str

    @classmethod
    def for_schema(cls, schema: str) -> ReplaySql:
        return cls(
            call=f'SELECT "{schema}".write_messages('
            "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        )

    async def write(
        self,
        connection: PoolConnectionProxy[asyncpg.Record],
        scope: MemoryScope,
        messages: Sequence[Message],
    ) -> None:
        """The statement for one call of ``messages`` (new ids, no client ids), as sent."""
        count = len(messages)
        await connection.fetchval(
            self.call,
            [scope.user_id],
            [scope.agent_id],
            [scope.session_id],
            [1] * count,
            list(range(1, count + 1)),
            [uuid.uuid4() for _ in messages],
            None,
            [message["role"] for message in messages],
            [message.get("name") for message in messages],
            [message["content"] for message in messages],
            [count_tokens(message["content"]) for message in messages],
            [
                json.dumps(message["metadata"]) if message.get("metadata") else None
                for message in messages
            ],
            [None] * count,
        )


def log(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - benchmark output


# --- the text ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conversation:
    """One user's sessions of chat messages (dicts as ``Memory.add`` takes them, no ids)."""

    user: str
    sessions: tuple[tuple[Message, ...], ...]


def load_corpus(path: Path) -> tuple[str, list[Conversation]]:
    """LoCoMo's conversations if ``path`` exists, else generated ones; with the source's name.

    Ids are dropped: they are global, and every mode and round writes the text again.
    """
    if not path.is_file():
        return "generated (benchmarks.layers.generated_corpus)", generated_corpus()
    conversations = [
        Conversation(
            user=data.user,
            sessions=tuple(
                tuple({k: v for k, v in m.items() if k != "id"} for m in session.messages)
                for session in data.sessions
            ),
        )
        for data in load_conversations(path)
    ]
    return f"LoCoMo dev split ({path.name})", conversations


def generated_corpus(users: int = 5, sessions: int = 24, turns: int = 24) -> list[Conversation]:
    """Fixed chat-like text for when the LoCoMo file is missing (seeded, so always the same)."""
    rng = random.Random(20240503)
    names = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon"]
    openers = ["Guess what,", "By the way,", "Honestly,", "So,", "Last weekend", "Yesterday"]
    verbs = ["started", "finished", "signed up for", "gave up on", "booked", "found"]
    things = [
        "a pottery class",
        "a trip to Lisbon",
        "the marathon training plan",
        "a new job at the library",
        "volunteering at the shelter",
        "a painting of the lake",
        "guitar lessons",
        "a book club",
    ]
    tails = [
        "and it felt great.",
        "because my sister recommended it.",
        "- I'll tell you how it goes!",
        "which was harder than I expected.",
        "with my kids, they loved it.",
        "and I think I'll keep doing it.",
    ]
    start = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    corpus = []
    for user in range(users):
        pair = rng.sample(names, 2)
        user_sessions = []
        for number in range(sessions):
            at = start + timedelta(days=7 * number, hours=user)
            user_sessions.append(
                tuple(
                    {
                        "role": "user",
                        "name": pair[turn % 2],
                        "content": " ".join(
                            (rng.choice(openers), "I", rng.choice(verbs), rng.choice(things))
                        )
                        + " "
                        + rng.choice(tails),
                        "created_at": at,
                        "metadata": {"turn": f"D{number + 1}:{turn + 1}"},
                    }
                    for turn in range(turns)
                )
            )
        corpus.append(Conversation(f"generated-{user}", tuple(user_sessions)))
    return corpus


def first_messages(conversations: list[Conversation], count: int) -> list[Conversation]:
    """The first ``count`` messages in file order, cut into whole conversations and sessions.

    If the corpus is shorter, it is repeated under new user names.
    """
    taken: list[Conversation] = []
    left = count
    for copy in itertools.count():
        for conversation in conversations:
            sessions = []
            for session in conversation.sessions:
                if left <= 0:
                    break
                sessions.append(session[:left])
                left -= len(sessions[-1])
            if sessions:
                taken.append(Conversation(f"{conversation.user}-{copy}", tuple(sessions)))
            if left <= 0:
                return taken
    raise AssertionError("unreachable")


def flat_messages(conversations: list[Conversation]) -> list[Message]:
    """Every message in file order, without its time (the server stamps it)."""
    return [
        {k: v for k, v in message.items() if k != "created_at"}
        for conversation in conversations
        for session in conversation.sessions
        for message in session
    ]


def single_messages(conversations: list[Conversation]) -> Iterator[Message]:
    """An endless stream of one-message payloads (no id, no time: the server stamps it)."""
    return itertools.cycle(flat_messages(conversations))


def raw_args(message: Message, session_id: uuid.UUID, seq: int) -> tuple[object, ...]:
    """The baseline row for one message: the same text, role and metadata as memfuse writes."""
    return (
        uuid.uuid4(),
        session_id,
        seq,
        message["role"],
        message["content"],
        json.dumps(message.get("metadata", {})),
    )


class AlertTally:
    """The monitor's threshold alerts counted by operation (its own list keeps only 100)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, alert: Alert) -> None:
        self.counts[alert.operation] += 1

    def mark(self) -> Counter[str]:
        return Counter(self.counts)

    def since(self, mark: Counter[str]) -> dict[str, int]:
        return dict(sorted((self.counts - mark).items()))


# --- 1. add() latency -------------------------------------------------------------------------


async def add_latency(
    buffered: MemFuse,
    direct: MemFuse,
    raw_pool: RawPool,
    messages: Iterator[Message],
    rounds: int,
    ops: int,
) -> dict[str, Any]:
    on = await buffered.init("bench-latency", "bench", "buffer-on")
    off = await direct.init("bench-latency", "bench", "buffer-off")
    replayed = (await direct.init("bench-latency", "bench", "replay")).scope
    replay = ReplaySql.for_schema(WRITE_SCHEMA)
    session_id = uuid.uuid4()
    seq = itertools.count(1)

    def add(memory: Memory) -> Operation:
        async def operation() -> object:
            return await memory.add([next(messages)])

        return operation

    async def raw_transaction() -> None:
        args = raw_args(next(messages), session_id, next(seq))
        async with raw_pool.acquire() as connection, connection.transaction():
            await connection.execute(RAW_INSERT, *args)

    async def raw_autocommit() -> None:
        args = raw_args(next(messages), session_id, next(seq))
        async with raw_pool.acquire() as connection:
            await connection.execute(RAW_INSERT, *args)

    async def raw_replay() -> None:
        async with raw_pool.acquire() as connection:
            await replay.write(connection, replayed, [next(messages)])

    result = await compare(
        "add_latency",
        {
            "asyncpg_insert_transaction": raw_transaction,
            "asyncpg_insert_autocommit": raw_autocommit,
            "asyncpg_memfuse_sql": raw_replay,
            "memfuse_add_buffer_on": add(on),
            "memfuse_add_buffer_off": add(off),
        },
        "asyncpg_insert_transaction",
        rounds,
        ops,
    )
    for key in ("memfuse_add_buffer_on", "memfuse_add_buffer_off"):
        target = TARGETS_MS["m0_add"]
        result[key]["p50_ratio_vs_target_100ms"] = round(result[key]["p50_ms"] / target, 4)
        result[key]["p95_ratio_vs_target_100ms"] = round(result[key]["p95_ms"] / target, 4)
    result["baseline_note"] = (
        "raw asyncpg, pooled connection, explicit transaction: BEGIN; INSERT one row; COMMIT "
        "(asyncpg_insert_autocommit: the INSERT alone, committed by the server; "
        "asyncpg_memfuse_sql: memfuse's own statement on its own tables, see ReplaySql)"
    )
    return result


# --- 2. batch inserts ------------------------------------------------------------------------


async def batch_insert(
    direct: MemFuse,
    raw_pool: RawPool,
    messages: Iterator[Message],
    *,
    size: int,
    rounds: int,
    ops: int,
) -> dict[str, Any]:
    """One ``add()`` of ``size`` messages against raw ``executemany`` of as many rows.

    Both are one transaction per call; rows per second come from each side's median call.
    """
    memory = await direct.init("bench-batch", "bench", "batch")
    replayed = (await direct.init("bench-batch", "bench", "batch-replay")).scope
    replay = ReplaySql.for_schema(WRITE_SCHEMA)
    session_id = uuid.uuid4()
    seq = itertools.count(1)

    async def add_batch() -> object:
        return await memory.add([next(messages) for _ in range(size)])

    async def raw_replay() -> None:
        batch = [next(messages) for _ in range(size)]
        async with raw_pool.acquire() as connection:
            await replay.write(connection, replayed, batch)

    async def raw_executemany() -> None:
        rows = [raw_args(next(messages), session_id, next(seq)) for _ in range(size)]
        async with raw_pool.acquire() as connection, connection.transaction():
            await connection.executemany(RAW_INSERT, rows)

    result = await compare(
        "batch_insert",
        {
            "asyncpg_executemany": raw_executemany,
            "asyncpg_memfuse_sql": raw_replay,
            "memfuse_add_batch": add_batch,
        },
        "asyncpg_executemany",
        rounds,
        ops,
    )
    for key in ("asyncpg_executemany", "asyncpg_memfuse_sql", "memfuse_add_batch"):
        result[key]["rows_per_s_p50"] = round(size / (result[key]["p50_ms"] / 1000.0), 1)
    result["rows_per_call"] = size
    result["rows_per_s_ratio_vs_memfuse_sql"] = round(
        result["memfuse_add_batch"]["rows_per_s_p50"]
        / result["asyncpg_memfuse_sql"]["rows_per_s_p50"],
        3,
    )
    result["rows_per_s_ratio_vs_baseline"] = round(
        result["memfuse_add_batch"]["rows_per_s_p50"]
        / result["asyncpg_executemany"]["rows_per_s_p50"],
        3,
    )
    result["baseline_note"] = (
        f"raw asyncpg: BEGIN; executemany of {size} rows into a plain table; COMMIT. memfuse: "
        f"one Memory.add() of {size} messages with the buffer off (one transaction); "
        "asyncpg_memfuse_sql: memfuse's own statement for such a call (the write_messages "
        "function on its tables: full-text column, indexes, job trigger) sent by raw asyncpg, "
        "the server's share of the gap"
    )
    return result


# --- 3. throughput with concurrent writers ----------------------------------------------------


@dataclass(slots=True)
class WriterRun:
    """One round of concurrent writers: messages per second, this process's CPU per message
    (the client side: memfuse or asyncpg, not the server) and every call's latency."""

    msgs_per_s: float
    client_cpu_ms_per_msg: float
    latencies: list[float]


async def run_writers(
    writers: int, per_writer: int, write: Callable[[int], Awaitable[object]]
) -> WriterRun:
    """``writers`` concurrent tasks, each making ``per_writer`` sequential calls."""
    latencies: list[float] = []

    async def writer(index: int) -> None:
        for _ in range(per_writer):
            start = time.perf_counter()
            await write(index)
            latencies.append((time.perf_counter() - start) * 1000.0)

    messages = writers * per_writer
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(writer(index) for index in range(writers)))
    wall = time.perf_counter() - start
    cpu_ms = (time.process_time() - cpu) * 1000.0
    return WriterRun(messages / wall, cpu_ms / messages, latencies)


def buffer_counts(mf: MemFuse) -> dict[str, int]:
    stats = mf.buffer_stats()
    assert stats is not None
    return {
        "batches": sum(stats.batches.values()),
        "messages": stats.messages_written,
        **{f"batches_{reason}": count for reason, count in stats.batches.items()},
    }


async def throughput(
    buffered: MemFuse,
    direct: MemFuse,
    raw_pool: RawPool,
    messages: Iterator[Message],
    *,
    writers: int,
    per_writer: int,
    rounds: int,
    alerts: AlertTally,
) -> dict[str, Any]:
    on = [await buffered.init("bench-writers", "bench", f"on-{i}") for i in range(writers)]
    off = [await direct.init("bench-writers", "bench", f"off-{i}") for i in range(writers)]
    replayed = [
        (await direct.init("bench-writers", "bench", f"replay-{i}")).scope for i in range(writers)
    ]
    replay = ReplaySql.for_schema(WRITE_SCHEMA)
    raw_sessions = [uuid.uuid4() for _ in range(writers)]
    raw_seq = [itertools.count(1) for _ in range(writers)]

    async def raw(index: int) -> None:
        args = raw_args(next(messages), raw_sessions[index], next(raw_seq[index]))
        async with raw_pool.acquire() as connection, connection.transaction():
            await connection.execute(RAW_INSERT, *args)

    async def raw_replay(index: int) -> None:
        async with raw_pool.acquire() as connection:
            await replay.write(connection, replayed[index], [next(messages)])

    def add(memories: list[Memory]) -> Callable[[int], Awaitable[object]]:
        async def write(index: int) -> object:
            return await memories[index].add([next(messages)])

        return write

    candidates = {
        "asyncpg_pool_insert_transaction": raw,
        "asyncpg_pool_memfuse_sql": raw_replay,
        "memfuse_add_buffer_on": add(on),
        "memfuse_add_buffer_off": add(off),
    }
    baseline = "asyncpg_pool_insert_transaction"
    for write in candidates.values():  # warm-up: opens the pools' connections
        await run_writers(writers, 2, write)
    rates: dict[str, list[float]] = {key: [] for key in candidates}
    cpu: dict[str, list[float]] = {key: [] for key in candidates}
    latencies: dict[str, list[float]] = {key: [] for key in candidates}
    alerted: dict[str, Counter[str]] = {key: Counter() for key in candidates}
    batches: list[dict[str, int]] = []
    buffered.monitor.clear("buffer_flush")
    names = list(candidates)
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for key in order:
            before = buffer_counts(buffered)
            mark = alerts.mark()
            outcome = await run_writers(writers, per_writer, candidates[key])
            alerted[key].update(alerts.since(mark))
            rates[key].append(outcome.msgs_per_s)
            cpu[key].append(outcome.client_cpu_ms_per_msg)
            latencies[key].extend(outcome.latencies)
            if key == "memfuse_add_buffer_on":
                after = buffer_counts(buffered)
                batches.append({name: after[name] - before[name] for name in after})
    result: dict[str, Any] = {
        "writers": writers,
        "adds_per_writer": per_writer,
        "messages_per_round": writers * per_writer,
        "baseline": baseline,
    }
    base = statistics.median(rates[baseline])
    for key in candidates:
        ratios = [mine / theirs for mine, theirs in zip(rates[key], rates[baseline], strict=True)]
        result[key] = {
            "median_msgs_per_s": round(statistics.median(rates[key]), 1),
            "rounds_msgs_per_s": [round(rate, 1) for rate in rates[key]],
            "ratio_vs_baseline": round(statistics.median(rates[key]) / base, 3),
            "round_ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
            "call_latency": summary(latencies[key]),
            "median_client_cpu_ms_per_msg": round(statistics.median(cpu[key]), 4),
            "monitor_alerts": dict(sorted(alerted[key].items())),
        }
    flushes = buffered.monitor.stats("buffer_flush")
    buffer_stats = buffered.buffer_stats()
    per_round = [entry["batches"] for entry in batches]
    result["memfuse_add_buffer_on"]["buffer"] = {
        "batches_per_round": per_round,
        "median_batches_per_round": statistics.median(per_round),
        "mean_messages_per_batch": round(
            sum(entry["messages"] for entry in batches) / max(1, sum(per_round)), 2
        ),
        "reasons": {
            name.removeprefix("batches_"): sum(entry[name] for entry in batches)
            for name in batches[0]
            if name.startswith("batches_")
        },
        "largest_batch_calls": buffer_stats.largest_batch if buffer_stats else 0,
        "monitor_buffer_flush": None
        if flushes is None
        else {
            "count": flushes.count,
            "p50_ms": round(flushes.p50_ms, 3),
            "p95_ms": round(flushes.p95_ms, 3),
            "max_ms": round(flushes.max_ms, 3),
        },
    }
    log(f"throughput: {json.dumps(result)}")
    return result


# --- 4. M1 and M2 processing ------------------------------------------------------------------


def operation_total(monitor: PerformanceMonitor, operation: str) -> dict[str, float]:
    stats = monitor.stats(operation)
    if stats is None:
        return {"units": 0, "total_ms": 0.0, "unit_p50_ms": 0.0, "unit_max_ms": 0.0}
    return {
        "units": stats.count,
        "total_ms": round(stats.count * stats.avg_ms, 3),
        "unit_p50_ms": round(stats.p50_ms, 3),
        "unit_max_ms": round(stats.max_ms, 3),
    }


async def layer_round(
    mf: MemFuse, conversations: list[Conversation], mode: str, tag: str
) -> dict[str, Any]:
    """Load the conversations as fresh users, then time one flush in ``mode``."""
    count = sum(len(session) for c in conversations for session in c.sessions)
    start = time.perf_counter()
    for conversation in conversations:
        for number, session in enumerate(conversation.sessions):
            memory = await mf.init(f"{conversation.user}-{tag}", "bench", f"session-{number}")
            await memory.add(session)
    load_s = time.perf_counter() - start
    mf.set_parallel(mode == "parallel")
    mf.monitor.clear("m1_operation")
    mf.monitor.clear("m2_operation")
    cpu = time.process_time()
    start = time.perf_counter()
    await mf.flush()
    flush_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    m1 = operation_total(mf.monitor, "m1_operation")
    m2 = operation_total(mf.monitor, "m2_operation")
    return {
        "messages": count,
        "load_s": round(load_s, 3),
        "flush_s": round(flush_s, 3),
        "flush_ms_per_message": round(flush_s * 1000.0 / count, 4),
        "flush_client_cpu_s": round(cpu_s, 3),
        "m1": {**m1, "ms_per_message": round(m1["total_ms"] / count, 4)},
        "m2": {**m2, "ms_per_message": round(m2["total_ms"] / count, 4)},
    }


async def layers(
    mf: MemFuse, conversations: list[Conversation], count: int, rounds: int
) -> dict[str, Any]:
    subset = first_messages(conversations, count)
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "parallel": []}
    for number in range(rounds):
        modes = ["sequential", "parallel"] if number % 2 == 0 else ["parallel", "sequential"]
        for mode in modes:
            run = await layer_round(mf, subset, mode, f"{mode}-{number}")
            runs[mode].append(run)
            log(f"layers {mode} round {number}: {json.dumps(run)}")
    sequential, parallel = runs["sequential"], runs["parallel"]
    m1 = statistics.median(run["m1"]["ms_per_message"] for run in sequential)
    m2 = statistics.median(run["m2"]["ms_per_message"] for run in sequential)
    wall_seq = statistics.median(run["flush_s"] for run in sequential)
    wall_par = statistics.median(run["flush_s"] for run in parallel)
    load = statistics.median(run["load_s"] for run in sequential + parallel)
    messages = sequential[0]["messages"]
    sessions = sum(len(c.sessions) for c in subset)
    result = {
        "messages": messages,
        "users": len(subset),
        "sessions": sessions,
        "rounds": rounds,
        "sequential": {
            "median_flush_s": round(wall_seq, 3),
            "median_msgs_per_s": round(messages / wall_seq, 1),
            "m1_ms_per_message": round(m1, 4),
            "m2_ms_per_message": round(m2, 4),
            "median_flush_client_cpu_s": statistics.median(
                run["flush_client_cpu_s"] for run in sequential
            ),
            "m1_ratio_vs_target_150ms": round(m1 / TARGETS_MS["m1_per_message"], 5),
            "m2_ratio_vs_target_150ms": round(m2 / TARGETS_MS["m2_per_message"], 5),
        },
        "parallel": {
            "median_flush_s": round(wall_par, 3),
            "median_msgs_per_s": round(messages / wall_par, 1),
            "median_flush_client_cpu_s": statistics.median(
                run["flush_client_cpu_s"] for run in parallel
            ),
            "speedup_vs_sequential": round(wall_seq / wall_par, 3),
        },
        "load": {
            "median_load_s": round(load, 3),
            "median_msgs_per_s": round(messages / load, 1),
            "note": "one add() per session (whole session per call), buffer on",
        },
        "runs": runs,
    }
    log(f"layers: {json.dumps({k: v for k, v in result.items() if k != 'runs'})}")
    return result


# --- the run ----------------------------------------------------------------------------------


def total_memory() -> str | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    kib = int(meminfo.read_text().splitlines()[0].split()[1])
    return f"{round(kib / 1024 / 1024, 1)} GiB"


def cpu_description() -> str | None:
    """The CPU's model name and whether it multiplies bfloat16 natively: the model's speed,
    hence every embedding figure, depends on both (machines here differ in each)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    native = "native bfloat16" if cpu_has_native_bfloat16() else "no native bfloat16"
    return f"{name} ({native})"


async def machine(url: str, source: str) -> dict[str, Any]:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        server = await connection.fetchval("SHOW server_version")
        vector = await connection.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
    finally:
        await connection.close()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_description(),
        "memory": total_memory(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "server_version": server,
        "pgvector_version": vector,
        "database": source,
    }


async def reset_schemas(url: str, *, create_raw: bool) -> None:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        for schema in (WRITE_SCHEMA, LAYER_SCHEMA, RAW_SCHEMA):
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if create_raw:
            await connection.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
            await connection.execute(RAW_TABLE)
    finally:
        await connection.close()


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    alerts = AlertTally()
    text_source, conversations = load_corpus(args.locomo)
    messages = single_messages(conversations)
    results: dict[str, Any] = {"machine": {}}
    await reset_schemas(url, create_raw=True)
    # The default embedder, so writes leave the words and vectors to the worker, as they do
    # for users; the worker off: it would embed in the background and skew every figure here.
    # Embedding (and the words it indexes) is measured on its own (issue 4, sustained).
    common: dict[str, Any] = {
        "pipeline_auto": False,
        "embedder": "local",
        "worker_enabled": False,
        "monitor_history_size": 100_000,
    }
    buffered = MemFuse(url, schema=WRITE_SCHEMA, **common)
    direct = MemFuse(url, schema=WRITE_SCHEMA, buffer_enabled=False, **common)
    pool = buffered.settings.pool
    pool_size = pool.pool_size + pool.max_overflow
    raw_pool: RawPool = await asyncpg.create_pool(
        **asyncpg_connect_args(url), min_size=pool_size, max_size=pool_size
    )
    try:
        async with buffered, direct:
            results["machine"] = await machine(url, source)
            buffered.monitor.add_alert_callback(alerts)
            results["settings"] = {
                "pool_size": pool.pool_size,
                "max_overflow": pool.max_overflow,
                "pool_pre_ping": pool.pool_pre_ping,
                "raw_asyncpg_pool_size": pool_size,
                "buffer_max_messages": buffered.settings.buffer_max_messages,
                "buffer_max_delay": buffered.settings.buffer_max_delay,
                "monitor_enabled": buffered.settings.monitor_enabled,
            }
            results["text"] = {
                "source": text_source,
                "messages": sum(len(s) for c in conversations for s in c.sessions),
                "mean_chars": round(
                    statistics.mean(
                        len(m["content"]) for c in conversations for s in c.sessions for m in s
                    ),
                    1,
                ),
            }
            mark = alerts.mark()
            results["add_latency"] = await add_latency(
                buffered, direct, raw_pool, messages, args.rounds, args.ops
            )
            results["add_latency"]["monitor_alerts"] = alerts.since(mark)
            results["batch_insert"] = await batch_insert(
                direct,
                raw_pool,
                messages,
                size=args.batch_size,
                rounds=args.rounds,
                ops=args.batch_ops,
            )
            results["throughput"] = await throughput(
                buffered,
                direct,
                raw_pool,
                messages,
                writers=args.writers,
                per_writer=args.writer_ops,
                rounds=args.rounds,
                alerts=alerts,
            )
        async with MemFuse(url, schema=LAYER_SCHEMA, **common) as mf:
            mark = alerts.mark()
            results["layers"] = await layers(mf, conversations, args.messages, args.layer_rounds)
            results["layers"]["monitor_alerts"] = alerts.since(mark)
            results["layers"]["settings"] = {
                "fact_extractor": mf.settings.fact_extractor,
                "pipeline_concurrency": mf.settings.pipeline_concurrency,
                "pipeline_batch_messages": mf.settings.pipeline_batch_messages,
                "episode_target_tokens": mf.settings.episode_target_tokens,
                "episode_max_tokens": mf.settings.episode_max_tokens,
            }
            mf.monitor.remove_alert_callback(alerts)
    finally:
        await raw_pool.close()
        if not args.keep:
            await reset_schemas(url, create_raw=False)
    results["targets_ms"] = TARGETS_MS
    results["monitor_alerts"] = alerts.since(Counter())
    results["monitor_thresholds_ms"] = buffered.monitor.thresholds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of parts 1 and 2")
    parser.add_argument("--ops", type=int, default=300, help="adds per candidate per round")
    parser.add_argument("--batch-size", type=int, default=100, help="messages per batch add")
    parser.add_argument("--batch-ops", type=int, default=40, help="batch adds per round")
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--writer-ops", type=int, default=20, help="adds per writer per round")
    parser.add_argument("--messages", type=int, default=2000, help="messages for M1/M2")
    parser.add_argument("--layer-rounds", type=int, default=2, help="flushes per mode")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schemas")
    parser.add_argument("--output", type=Path)
    run_benchmark("benchmarks.layers", run, parser.parse_args())


if __name__ == "__main__":
    main()
