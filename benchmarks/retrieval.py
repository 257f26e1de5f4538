"""Retrieval benchmark: query latency for one user among many, against raw pgvector KNN.

Run: ``.venv/bin/python -m benchmarks.retrieval [--sizes 10000,100000] [--rounds 5]
[--queries 300] [--quick] [--output FILE.json]`` (database: ``MEMFUSE_DATABASE_URL``, else a
fresh embedded server in a temporary directory). Needs the ``local`` extra (the real model).

Each line (memfuse's searches, its SQL replayed on raw asyncpg, the model alone) is a ratio to
``raw_knn`` measured in the same run, candidates in rotating rounds. Nothing runs in the
background (result cache, pipeline and worker off), and the data is partly synthetic (jittered
copies of real embeddings): docs/benchmarks.md, "Retrieval latency", says how and what that
changes. Everything runs in a schema of its own (``bench_retrieval``, dropped at the start
and, unless ``--keep``, at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from sqlalchemy import event

from benchmarks.foundation import summary
from benchmarks.harness import drop_schema, run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, Conversation, load_corpus, log, machine
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.models import MESSAGE_TSVECTOR, message_text
from memfuse.db.vector import register_vector_codec
from memfuse.embedding.embedders import Embedder
from memfuse.memory import MemFuse, Memory
from memfuse.monitor.performance import percentile
from memfuse.retrieval.service import RetrievalService, clean_query
from memfuse.tokens import count_tokens
from memfuse.types import MemoryScope

SCHEMA = "bench_retrieval"
MEASURED_USER = "bench-user"
OTHER_USERS = 20
OTHER_ROWS = 50_000
OTHER_SESSION_ROWS = 500
TOP_K = 10
DIMENSION = 384
HNSW_INDEX = "ix_messages_embedding_hnsw"
COPY_DAYS = 400
"""Copy k of a turn is dated k * COPY_DAYS days after the turn, so copies never overlap."""

COLUMNS = (
    "id",
    "user_id",
    "agent_id",
    "session_id",
    "seq",
    "role",
    "name",
    "content",
    "token_count",
    "metadata",
    "created_at",
    "embedding",
)
TUNE = (
    "SELECT set_config('hnsw.ef_search', $1, true), "
    "set_config('hnsw.iterative_scan', 'relaxed_order', true)"
)
KNN = (
    f"SELECT id, content FROM {SCHEMA}.messages WHERE user_id = $1 "
    "ORDER BY embedding <=> $2 LIMIT {limit}"
)

EXACT_KNN = (
    f"SELECT id, embedding <=> $2 AS distance, (metadata->>'turn')::int AS turn"
    f" FROM {SCHEMA}.messages WHERE user_id = $1 ORDER BY embedding <=> $2 LIMIT {TOP_K}"
)
"""Run with ``enable_indexscan = off``. Its own text, so its own prepared statement: a generic
plan cached for the KNN statement with index scans on would ignore the setting."""
EXACT_KNN_ALL_USERS = (
    f"SELECT id, embedding <=> $1 AS distance, (metadata->>'turn')::int AS turn"
    f" FROM {SCHEMA}.messages ORDER BY embedding <=> $1 LIMIT {TOP_K}"
)
KNN_ALL_USERS = f"SELECT id FROM {SCHEMA}.messages ORDER BY embedding <=> $1 LIMIT {TOP_K}"
"""The control for the recall check: the same HNSW search without the user filter."""
DISTANCES = (
    f"SELECT id, embedding <=> $2 AS distance, (metadata->>'turn')::int AS turn"
    f" FROM {SCHEMA}.messages WHERE id = ANY($1::uuid[])"
)

Vectors = npt.NDArray[np.float32]
Row = tuple[Any, ...]
Candidate = Callable[[int], Awaitable[list[uuid.UUID]]]


# --- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One real chat turn: its number, conversation, place in it, speaker, text and time."""

    index: int
    conversation: int
    position: int
    speaker: str | None
    content: str
    created_at: datetime
    source_id: str


@dataclass(slots=True)
class Corpus:
    """The real turns with their real vectors, and the questions asked of them."""

    source: str
    turns: list[Turn]
    questions: list[str]
    question_source: str
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, DIMENSION), np.float32))


def turns_of(conversations: list[Conversation]) -> list[Turn]:
    turns: list[Turn] = []
    for number, conversation in enumerate(conversations):
        position = 0
        for session in conversation.sessions:
            for message in session:
                position += 1
                turns.append(
                    Turn(
                        index=len(turns),
                        conversation=number,
                        position=position,
                        speaker=message.get("name"),
                        content=message["content"],
                        created_at=message.get("created_at") or datetime(2023, 1, 1, tzinfo=UTC),
                        source_id=str(message.get("metadata", {}).get("dia_id", position)),
                    )
                )
    return turns


def locomo_questions(path: Path) -> list[str]:
    """Every category 1-4 question of the LoCoMo file, in file order."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return [
        clean_query(str(qa["question"]))
        for sample in document
        for qa in sample.get("qa", [])
        if qa.get("category") in (1, 2, 3, 4) and str(qa.get("question", "")).strip()
    ]


def generated_questions(turns: list[Turn], count: int = 400) -> list[str]:
    """Questions about the generated turns, for when the LoCoMo file is missing."""
    rng = random.Random(7)
    questions = []
    for turn in rng.sample(turns, min(count, len(turns))):
        words = turn.content.split()
        questions.append(clean_query(f"What did {turn.speaker} say about {' '.join(words[3:7])}?"))
    return questions


def load_data(path: Path) -> Corpus:
    source, conversations = load_corpus(path)
    turns = turns_of(conversations)
    if path.is_file():
        return Corpus(source, turns, locomo_questions(path), "LoCoMo categories 1-4")
    return Corpus(source, turns, generated_questions(turns), "generated from the turns")


def jittered(base: Vectors, sigma: float, rng: np.random.Generator) -> Vectors:
    """``base`` plus Gaussian noise per dimension, each row renormalised to unit length."""
    noisy = base + rng.normal(0.0, sigma, base.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return noisy


# --- loading ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Loader:
    """Writes the benchmark rows with COPY; keeps the sessions it made by key."""

    mf: MemFuse
    connection: asyncpg.Connection
    corpus: Corpus
    sigma: float
    rng: np.random.Generator
    scopes: dict[tuple[str, str], MemoryScope] = field(default_factory=dict)
    rows_loaded: dict[str, int] = field(default_factory=dict)

    async def scope(self, user: str, session: str) -> MemoryScope:
        key = (user, session)
        if key not in self.scopes:
            self.scopes[key] = (await self.mf.init(user, session=session)).scope
        return self.scopes[key]

    async def measured_rows(self, start: int, stop: int) -> list[Row]:
        """Rows ``start..stop`` of the measured user: copy ``i // T`` of turn ``i % T``; one
        session per copy and conversation, ``seq`` the turn's place in its conversation."""
        count = len(self.corpus.turns)
        indexes = np.arange(start, stop)
        copies = indexes // count
        vectors = self.corpus.vectors[indexes % count].copy()
        jitter = copies > 0
        if jitter.any():
            vectors[jitter] = jittered(vectors[jitter], self.sigma, self.rng)
        rows = []
        for index, vector in zip(indexes.tolist(), vectors, strict=True):
            turn = self.corpus.turns[index % count]
            copy = index // count
            scope = await self.scope(MEASURED_USER, f"conversation-{turn.conversation}-{copy}")
            rows.append(self.row(scope, turn, copy, turn.position, vector))
        return rows

    async def other_rows(self, user: int, count: int) -> list[Row]:
        """``count`` rows of another user: jittered copies of a slice of the turns."""
        total = len(self.corpus.turns)
        first = user * count
        indexes = np.arange(first, first + count)
        vectors = jittered(self.corpus.vectors[indexes % total], self.sigma, self.rng)
        rows = []
        for number, (index, vector) in enumerate(zip(indexes.tolist(), vectors, strict=True)):
            turn = self.corpus.turns[index % total]
            session = f"part-{number // OTHER_SESSION_ROWS}"
            scope = await self.scope(f"other-{user:02d}", session)
            copy = index // total + 1
            rows.append(self.row(scope, turn, copy, number % OTHER_SESSION_ROWS + 1, vector))
        return rows

    @staticmethod
    def row(scope: MemoryScope, turn: Turn, copy: int, seq: int, vector: Vectors) -> Row:
        content = turn.content if copy == 0 else f"{turn.content} (copy {copy})"
        return (
            uuid.uuid4(),
            scope.user_id,
            scope.agent_id,
            scope.session_id,
            seq,
            "user",
            turn.speaker,
            content,
            count_tokens(content),
            json.dumps({"turn": turn.index, "source": turn.source_id, "copy": copy}),
            turn.created_at + timedelta(days=COPY_DAYS * copy),
            vector,
        )

    async def copy(self, rows: list[Row]) -> None:
        for start in range(0, len(rows), 5000):
            await self.connection.copy_records_to_table(
                "messages",
                schema_name=SCHEMA,
                columns=list(COLUMNS),
                records=rows[start : start + 5000],
            )

    async def load(self, measured: int, *, others: bool) -> dict[str, Any]:
        """Bring the measured user to ``measured`` rows (and load the others if asked), with
        the HNSW index dropped during the load and rebuilt after it."""
        have = self.rows_loaded.get(MEASURED_USER, 0)
        started = time.perf_counter()
        rows = await self.measured_rows(have, measured)
        if others:
            for user in range(OTHER_USERS):
                rows.extend(await self.other_rows(user, OTHER_ROWS // OTHER_USERS))
        random.Random(measured).shuffle(rows)
        generated = time.perf_counter() - started
        definition = await self.connection.fetchval(
            "SELECT pg_get_indexdef(format('%I.%I', $1::text, $2::text)::regclass)",
            SCHEMA,
            HNSW_INDEX,
        )
        await self.connection.execute(f'DROP INDEX "{SCHEMA}".{HNSW_INDEX}')
        started = time.perf_counter()
        await self.copy(rows)
        copied = time.perf_counter() - started
        queued = await self.connection.fetchval(f"SELECT count(*) FROM {SCHEMA}.embedding_jobs")
        await self.connection.execute(f"DELETE FROM {SCHEMA}.embedding_jobs")
        # The rows stand for embedded ones: the worker would have indexed their words with the
        # vector (migration 0009); unindexed rows would be stemmed by every search instead.
        started = time.perf_counter()
        await self.connection.execute(
            f"UPDATE {SCHEMA}.messages SET content_tsv = {MESSAGE_TSVECTOR}"
            " WHERE content_tsv IS NULL"
        )
        words_indexed = time.perf_counter() - started
        await self.connection.execute(f"""
            UPDATE {SCHEMA}.sessions AS s SET message_count = m.last
            FROM (SELECT session_id, max(seq) AS last FROM {SCHEMA}.messages GROUP BY session_id)
                AS m
            WHERE s.id = m.session_id""")
        started = time.perf_counter()
        # The whole graph in memory: about 2 KB per vector, 2.1 GB at the 1M point.
        await self.connection.execute("SET maintenance_work_mem = '3GB'")
        await self.connection.execute(definition)
        await self.connection.execute("RESET maintenance_work_mem")
        indexed = time.perf_counter() - started
        started = time.perf_counter()
        await self.connection.execute(f"VACUUM {SCHEMA}.messages")
        # memfuse's own ANALYZE: it also drops the term statistics its search read at the last
        # size, which would otherwise be reused until they expire (TERMS_TTL).
        await self.mf.analyze()
        vacuumed = time.perf_counter() - started
        self.rows_loaded[MEASURED_USER] = measured
        counts = {
            row["measured"]: row["rows"]
            for row in await self.connection.fetch(
                f"SELECT user_id = $1 AS measured, count(*) AS rows FROM {SCHEMA}.messages"
                " GROUP BY 1",
                self.scopes[(MEASURED_USER, "conversation-0-0")].user_id,
            )
        }
        result = {
            "rows_added": len(rows),
            "measured_user_rows": counts.get(True, 0),
            "other_users_rows": counts.get(False, 0),
            "sessions": len(self.scopes),
            "embedding_jobs_queued_and_deleted": queued,
            "generate_s": round(generated, 2),
            "copy_s": round(copied, 2),
            "words_index_s": round(words_indexed, 2),
            "hnsw_build_s": round(indexed, 2),
            "vacuum_analyze_s": round(vacuumed, 2),
            "hnsw_index": definition,
        }
        log(f"load N={measured}: {json.dumps(result)}")
        return result


# --- the candidates ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)  # hashable by identity: asyncpg keeps loggers in a set
class Captured:
    """memfuse's search statements as asyncpg got them, by query index and line (an asyncpg
    query logger on each pooled connection), without the pool's checkout ping ``;``."""

    statements: dict[tuple[str, int], tuple[str, tuple[Any, ...]]] = field(default_factory=dict)
    sent: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    current: tuple[str, int] | None = None
    drivers: set[asyncpg.Connection] = field(default_factory=set)

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        if self.current is None:
            return
        statement = record.query
        if statement == ";":
            return
        self.sent.setdefault(self.current, []).append(" ".join(statement.split())[:70])
        if "query_terms AS" in statement:
            self.statements[self.current] = (statement, tuple(record.args))

    def checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        """Pool hook: log the statements of each connection memfuse checks out."""
        driver: asyncpg.Connection = dbapi_connection.driver_connection
        if driver not in self.drivers:
            driver.add_query_logger(self)
            self.drivers.add(driver)

    def stop(self) -> None:
        for driver in self.drivers:
            driver.remove_query_logger(self)
        self.drivers.clear()


@dataclass(slots=True)
class Bench:
    """Everything the candidates need: memfuse, the raw connection, the queries."""

    mf: MemFuse
    retrieval: RetrievalService
    memory: Memory
    raw: asyncpg.Connection
    embedder: Embedder
    queries: list[str]
    vectors: list[Vectors]
    captured: Captured
    ef_search: int
    candidates: int

    async def raw_knn(self, index: int, limit: int = TOP_K) -> list[uuid.UUID]:
        async with self.raw.transaction():
            await self.raw.fetchval(TUNE, str(self.ef_search))
            rows = await self.raw.fetch(
                KNN.format(limit=limit), self.memory.scope.user_id, self.vectors[index]
            )
        return [row["id"] for row in rows]

    async def raw_knn_deep(self, index: int) -> list[uuid.UUID]:
        return await self.raw_knn(index, self.candidates)

    async def exact_knn(self, index: int) -> list[asyncpg.Record]:
        """The exact top 10 (id, distance, source turn): a scan of all the user's rows."""
        async with self.raw.transaction():
            await self.raw.execute("SET LOCAL enable_indexscan = off")
            return await self.raw.fetch(EXACT_KNN, self.memory.scope.user_id, self.vectors[index])

    async def exact_knn_all_users(self, index: int) -> list[asyncpg.Record]:
        async with self.raw.transaction():
            await self.raw.execute("SET LOCAL enable_indexscan = off")
            return await self.raw.fetch(EXACT_KNN_ALL_USERS, self.vectors[index])

    async def raw_knn_all_users(self, index: int) -> list[uuid.UUID]:
        async with self.raw.transaction():
            await self.raw.fetchval(TUNE, str(self.ef_search))
            rows = await self.raw.fetch(KNN_ALL_USERS, self.vectors[index])
        return [row["id"] for row in rows]

    async def located(self, index: int, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
        """Distance to query ``index`` and source turn of the rows ``ids``."""
        return await self.raw.fetch(DISTANCES, ids, self.vectors[index])

    async def memfuse_sql(self, index: int) -> list[uuid.UUID]:
        statement, parameters = self.captured.statements[("fused", index)]
        async with self.raw.transaction():
            await self.raw.fetchval(TUNE, str(self.ef_search))
            rows = await self.raw.fetch(statement, *parameters)
        return [row["id"] for row in rows]

    async def fused(self, index: int) -> list[uuid.UUID]:
        return [r.id for r in await self.memory.query(self.queries[index], top_k=TOP_K)]

    async def vector_only(self, index: int) -> list[uuid.UUID]:
        results = await self.memory.query(
            self.queries[index], top_k=TOP_K, layers=["m0"], methods=["vector"]
        )
        return [r.id for r in results]

    async def uncached(self, index: int) -> list[uuid.UUID]:
        self.retrieval.embeddings.pop((self.embedder.model_name, self.queries[index]))
        return await self.fused(index)

    async def encode(self, index: int) -> list[uuid.UUID]:
        await self.embedder.embed_query(self.queries[index])
        return []

    def all(self) -> dict[str, Candidate]:
        return {
            "raw_knn": self.raw_knn,
            "raw_knn_limit_200": self.raw_knn_deep,
            "memfuse_sql_on_asyncpg": self.memfuse_sql,
            "memfuse_fused_cached": self.fused,
            "memfuse_vector_only": self.vector_only,
            "memfuse_end_to_end_uncached": self.uncached,
            "model_encode": self.encode,
        }

    async def warm(self) -> None:
        """Put every query's vector in memfuse's LRU and capture memfuse's statements."""
        for query in self.queries:
            await self.retrieval.embed_query(query)
        engine = await resolve(self.mf.container.engine)
        pool = engine.sync_engine.pool
        event.listen(pool, "checkout", self.captured.checkout)
        try:
            for index in range(len(self.queries)):
                for line, search in (("fused", self.fused), ("vector", self.vector_only)):
                    self.captured.current = (line, index)
                    await search(index)
                    await asyncio.sleep(0)  # asyncpg calls loggers soon after a query
            self.captured.current = None
        finally:
            event.remove(pool, "checkout", self.captured.checkout)
            self.captured.stop()


async def measure(
    bench: Bench, rounds: int, queries: int, warmup: int, label: str
) -> dict[str, Any]:
    """Every candidate over the same queries, in rounds of rotating order."""
    candidates = bench.all()
    indexes = list(range(queries))
    for operation in candidates.values():
        for index in indexes[:warmup]:
            await operation(index)
    latencies: dict[str, list[float]] = {key: [] for key in candidates}
    medians: dict[str, list[float]] = {key: [] for key in candidates}
    returned: dict[str, list[int]] = {key: [] for key in candidates}
    misses: dict[str, int] = dict.fromkeys(candidates, 0)
    cache = bench.retrieval.embeddings
    result_hits = bench.retrieval.stats.result_cache_hits
    keys = list(candidates)
    for number in range(rounds):
        order = keys[number % len(keys) :] + keys[: number % len(keys)]
        for key in order:
            operation = candidates[key]
            run: list[float] = []
            before = cache.misses
            for index in indexes:
                started = time.perf_counter()
                ids = await operation(index)
                run.append((time.perf_counter() - started) * 1000.0)
                returned[key].append(len(ids))
            misses[key] += cache.misses - before
            latencies[key].extend(run)
            medians[key].append(statistics.median(run))
        log(
            f"{label} round {number + 1}/{rounds} medians ms: "
            + json.dumps({key: round(medians[key][-1], 3) for key in keys})
        )
    base = summary(latencies["raw_knn"])
    result: dict[str, Any] = {
        "baseline": "raw_knn",
        "queries_per_round": queries,
        "rounds": rounds,
        "result_cache_hits": bench.retrieval.stats.result_cache_hits - result_hits,
    }
    for key in keys:
        figures: dict[str, Any] = dict(summary(latencies[key]))
        ratios = [
            mine / theirs for mine, theirs in zip(medians[key], medians["raw_knn"], strict=True)
        ]
        figures["p50_ratio_vs_raw_knn"] = round(figures["p50_ms"] / base["p50_ms"], 3)
        figures["p95_ratio_vs_raw_knn"] = round(figures["p95_ms"] / base["p95_ms"], 3)
        figures["round_median_ratio_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
        figures["results_per_query_min"] = min(returned[key])
        figures["results_per_query_mean"] = round(statistics.mean(returned[key]), 2)
        figures["query_embedding_cache_misses"] = misses[key]
        result[key] = figures
    return result


# --- checks -----------------------------------------------------------------------------------


async def recall(bench: Bench, count: int) -> dict[str, Any]:
    """Top-10 of the HNSW lines against the exact top 10 (a scan of all the user's rows).

    ``raw_knn_all_users`` is the control: the same HNSW search over every user's rows against
    the exact top 10 of every user's rows. Recall as low as the control's is the index's
    (here: clusters of near-duplicate copies), not starvation by the user filter.

    ``id_recall_at_10``: the exact rows found. ``turn_recall_at_10``: the exact rows' source
    turns found (any copy of a turn counts, as copies are near-duplicates whose order among
    themselves is set by the jitter). ``distance_ratio``: mean cosine distance of the 10
    returned over that of the exact 10 (1.0 = as close as the exact answer).
    """
    async with bench.raw.transaction():
        await bench.raw.execute("SET LOCAL enable_indexscan = off")
        exact_plan = await bench.raw.fetchval(
            "EXPLAIN (FORMAT JSON) " + EXACT_KNN, bench.memory.scope.user_id, bench.vectors[0]
        )
    lines: dict[str, Candidate] = {
        "memfuse_vector_only": bench.vector_only,
        "raw_knn": bench.raw_knn,
        "raw_knn_all_users": bench.raw_knn_all_users,
    }
    scores: dict[str, dict[str, list[float]]] = {
        line: {"id": [], "turn": [], "distance": [], "returned": []} for line in lines
    }
    for index in range(min(count, len(bench.queries))):
        exact_user = await bench.exact_knn(index)
        exact_all = await bench.exact_knn_all_users(index)
        assert len(exact_user) == len(exact_all) == TOP_K
        for line, operation in lines.items():
            exact = exact_all if line == "raw_knn_all_users" else exact_user
            exact_ids = {row["id"] for row in exact}
            exact_turns = {row["turn"] for row in exact}
            exact_distance = statistics.mean(row["distance"] for row in exact)
            found = await bench.located(index, await operation(index))
            score = scores[line]
            score["returned"].append(len(found))
            score["id"].append(len({row["id"] for row in found} & exact_ids) / TOP_K)
            turns = {row["turn"] for row in found}
            score["turn"].append(len(turns & exact_turns) / len(exact_turns))
            distance = statistics.mean(row["distance"] for row in found) if found else math.inf
            score["distance"].append(distance / exact_distance if exact_distance else 1.0)
    result: dict[str, Any] = {
        "queries": min(count, len(bench.queries)),
        "exact_plan": plan_shape(json.loads(exact_plan)[0]["Plan"]),
    }
    for line, score in scores.items():
        result[line] = {
            "id_recall_at_10_mean": round(statistics.mean(score["id"]), 4),
            "id_recall_at_10_min": round(min(score["id"]), 4),
            "turn_recall_at_10_mean": round(statistics.mean(score["turn"]), 4),
            "turn_recall_at_10_min": round(min(score["turn"]), 4),
            "distance_ratio_mean": round(statistics.mean(score["distance"]), 4),
            "distance_ratio_max": round(max(score["distance"]), 4),
            "results_min": int(min(score["returned"])),
        }
    return result


def plan_shape(node: dict[str, Any]) -> str:
    """A plan as ``Limit > Sort > Nested Loop (CTE Scan, Bitmap Heap Scan > ...)``; the CTEs
    under a node are left out (``plan_shapes`` gives each its own)."""
    name = str(node["Node Type"])
    if "Index Name" in node:
        name += f" using {node['Index Name']}"
    children = [
        child
        for child in node.get("Plans", [])
        if not str(child.get("Subplan Name", "")).startswith("CTE ")
    ]
    if not children:
        return name
    if len(children) == 1:
        return f"{name} > {plan_shape(children[0])}"
    return f"{name} ({', '.join(plan_shape(child) for child in children)})"


def plan_shapes(plan: dict[str, Any]) -> dict[str, str]:
    """The shape of the whole plan (``top``) and of each CTE in it."""
    shapes = {"top": plan_shape(plan)}
    for node in walk(plan):
        name = node.get("Subplan Name", "")
        if name.startswith("CTE "):
            shapes[name[4:]] = plan_shape({**node, "Subplan Name": ""})
    return shapes


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def cte_times(plan: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per CTE (each ranked list): its time and the most rows any node under it produced."""
    found = {}
    for node in walk(plan):
        name = node.get("Subplan Name", "")
        if name.startswith("CTE "):
            found[name[4:]] = {
                "ms": node["Actual Total Time"] * node["Actual Loops"],
                "rows_out": node["Actual Rows"],
                "max_rows_inside": max(n["Actual Rows"] * n["Actual Loops"] for n in walk(node)),
            }
    return found


async def explained(bench: Bench, statement: str, parameters: Sequence[Any]) -> dict[str, Any]:
    async with bench.raw.transaction():
        await bench.raw.fetchval(TUNE, str(bench.ef_search))
        text = await bench.raw.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, *parameters
        )
    document: dict[str, Any] = json.loads(text)[0]
    return document


async def explain(bench: Bench, count: int) -> dict[str, Any]:
    """Median server times from EXPLAIN ANALYZE: raw KNN, memfuse's fused and vector SQL."""
    lines: dict[str, dict[str, list[float]]] = {}
    shapes: dict[str, Counter[str]] = {}
    jit: dict[str, bool] = {}
    for index in range(min(count, len(bench.queries))):
        statements = {
            "raw_knn": (
                KNN.format(limit=TOP_K),
                (bench.memory.scope.user_id, bench.vectors[index]),
            ),
            "memfuse_fused": bench.captured.statements[("fused", index)],
            "memfuse_vector_only": bench.captured.statements[("vector", index)],
        }
        for line, (statement, parameters) in statements.items():
            document = await explained(bench, statement, parameters)
            figures = lines.setdefault(line, {})
            figures.setdefault("execution_ms", []).append(document["Execution Time"])
            figures.setdefault("planning_ms", []).append(document["Planning Time"])
            jit[line] = jit.get(line, False) or "JIT" in document
            for cte, values in cte_times(document["Plan"]).items():
                for key, value in values.items():
                    figures.setdefault(f"{cte}.{key}", []).append(value)
            for name, shape in plan_shapes(document["Plan"]).items():
                shapes.setdefault(f"{line}.{name}", Counter())[shape] += 1
    result: dict[str, Any] = {"queries": min(count, len(bench.queries))}
    for line, figures in lines.items():
        result[line] = {
            key: round(statistics.median(values), 3) for key, values in figures.items()
        } | {"jit_used": jit[line]}
    # The medians hide which questions carry a list's cost: its p95 and worst question too.
    result["p95"] = {
        line: {key: round(percentile(sorted(values), 95), 3) for key, values in figures.items()}
        for line, figures in lines.items()
    }
    result["max"] = {
        line: {key: round(max(values), 3) for key, values in figures.items()}
        for line, figures in lines.items()
    }
    result["plans"] = {key: dict(counter) for key, counter in shapes.items()}
    return result


# --- the run ----------------------------------------------------------------------------------


async def server_settings(url: str) -> dict[str, Any]:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        names = (
            "shared_buffers",
            "work_mem",
            "effective_cache_size",
            "max_parallel_workers_per_gather",
            "max_parallel_maintenance_workers",
            "jit",
            "random_page_cost",
        )
        return {name: await connection.fetchval(f"SHOW {name}") for name in names}
    finally:
        await connection.close()


async def embed_corpus(corpus: Corpus, embedder: Embedder) -> float:
    started = time.perf_counter()
    vectors = await embedder.embed_documents(
        [message_text(turn.speaker, turn.content) for turn in corpus.turns]
    )
    corpus.vectors = np.asarray(vectors, dtype=np.float32)
    return time.perf_counter() - started


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    corpus = load_data(args.locomo)
    rng = random.Random(20240611)
    questions = list(corpus.questions)
    rng.shuffle(questions)
    queries = questions[: max(args.queries, args.recall_queries, args.explain_queries)]
    results: dict[str, Any] = {"machine": await machine(url, source)}
    results["machine"]["server_settings"] = await server_settings(url)
    await drop_schema(url, SCHEMA)
    mf = MemFuse(
        url,
        schema=SCHEMA,
        embedder="local",
        pipeline_auto=False,
        worker_enabled=False,
        search_cache_ttl=0.0,
        monitor_history_size=1000,
    )
    loader_connection = await asyncpg.connect(**asyncpg_connect_args(url))
    raw = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        async with mf:
            for connection in (loader_connection, raw):
                assert await register_vector_codec(connection)
            results["machine"]["pgvector_version"] = await raw.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            )  # the migration creates the extension, so it is read after the start
            retrieval = await resolve(mf.container.retrieval_service)
            embedder = retrieval.embedder
            assert embedder is not None
            embed_s = await embed_corpus(corpus, embedder)
            log(f"embedded {len(corpus.turns)} turns in {embed_s:.1f} s")
            settings = mf.settings
            results["settings"] = {
                "search_candidates": settings.search_candidates,
                "search_rrf_k": settings.search_rrf_k,
                "search_ef_search": settings.search_ef_search,
                "search_cache_ttl": settings.search_cache_ttl,
                "query_embedding_cache_size": settings.query_embedding_cache_size,
                "pool_pre_ping": settings.pool.pool_pre_ping,
                "pool_size": settings.pool.pool_size,
                "top_k": TOP_K,
            }
            results["data"] = {
                "text": corpus.source,
                "turns": len(corpus.turns),
                "turn_embedding_s": round(embed_s, 1),
                "questions": f"{corpus.question_source}: {len(corpus.questions)}",
                "queries_used": len(queries),
                "jitter_sigma": args.sigma,
                "other_users": OTHER_USERS,
                "other_users_rows": OTHER_ROWS,
                "note": (
                    "jittered copies of real embeddings (copy k: text '<content> (copy k)', "
                    "vector = real vector + N(0, sigma) per dimension, renormalised); the "
                    "query vectors are real embeddings of the questions; messages only"
                ),
            }
            loader = Loader(mf, loader_connection, corpus, args.sigma, np.random.default_rng(11))
            memory = await mf.init(MEASURED_USER, session="queries")
            bench = Bench(
                mf=mf,
                retrieval=retrieval,
                memory=memory,
                raw=raw,
                embedder=embedder,
                queries=queries,
                vectors=[],
                captured=Captured(),
                ef_search=retrieval.ef_search,
                candidates=retrieval.candidates,
            )
            for query in queries:
                vector = await retrieval.embed_query(query)
                assert vector is not None
                bench.vectors.append(np.asarray(vector, dtype=np.float32))
            results["sizes"] = {}
            for number, size in enumerate(sorted(args.sizes)):
                label = f"N={size}"
                entry: dict[str, Any] = {"load": await loader.load(size, others=number == 0)}
                bench.captured = Captured()
                await bench.warm()
                entry["statements_per_query"] = {
                    line: bench.captured.sent[(line, 0)] for line in ("fused", "vector")
                }
                entry["latency"] = await measure(
                    bench, args.rounds, args.queries, args.warmup, label
                )
                log(f"{label} latency: {json.dumps(entry['latency'])}")
                entry["recall"] = await recall(bench, args.recall_queries)
                log(f"{label} recall: {json.dumps(entry['recall'])}")
                entry["explain"] = await explain(bench, args.explain_queries)
                log(f"{label} explain: {json.dumps(entry['explain'])}")
                results["sizes"][str(size)] = entry
    finally:
        await raw.close()
        await loader_connection.close()
        if not args.keep:
            await drop_schema(url, SCHEMA)
    return results


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("sizes must be positive integers, comma-separated")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=sizes, default=[10_000, 100_000], help="N, ascending")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200, help="questions per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per candidate")
    parser.add_argument("--recall-queries", type=int, default=50)
    parser.add_argument("--explain-queries", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=0.02, help="jitter per dimension")
    parser.add_argument("--quick", action="store_true", help="N=10k, 3 rounds of 100 queries")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schema")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.queries = [10_000], 3, 100
        args.recall_queries, args.explain_queries = 30, 10
    if not math.isfinite(args.sigma) or args.sigma < 0:
        parser.error("--sigma must be a non-negative number")
    run_benchmark("benchmarks.retrieval", run, args)


if __name__ == "__main__":
    main()
