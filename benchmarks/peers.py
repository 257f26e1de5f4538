"""Peers benchmark: memfuse, mem0 and LangGraph's PostgresStore, side by side in one run.

Run: ``.venv/bin/python -m benchmarks.peers [--quick] [--output FILE.json]`` (database:
``MEMFUSE_DATABASE_URL``, else a fresh embedded server in a temporary directory). Needs the
``local`` extra (the model) and the peers: ``mem0ai``, ``langgraph-checkpoint-postgres`` and
``psycopg[binary,pool]``. A peer that is missing or cannot run offline is reported with the
reason (``{"error": ...}``) and the others go on.

Three systems on the same PostgreSQL server, each in a schema of its own (dropped first and,
unless ``--keep``, at the end), all with the same embedding model (all-MiniLM-L6-v2, 384
dimensions, from memfuse's bundled files, loaded with sentence-transformers, never from a hub):

1. ``memfuse``: ``MemFuse(url, embedder="local")`` with its defaults (M1/M2 pipeline and the
   in-process embedding worker on), except the result cache (``search_cache_ttl=0``), so that
   every timed search searches. Search: ``memory.query(question, top_k=200)``, the default
   search (all layers, vector and full text, fused), which returns turns with their ids.
2. ``mem0``: ``mem0.AsyncMemory`` (mem0ai's asyncio API; it runs its synchronous internals in
   threads) with the ``pgvector`` store and the ``huggingface`` embedder pointed at the model's
   directory; ``add(..., infer=False)`` stores each turn as it is, with no LLM. Its config always
   builds an LLM client, so it gets an OpenAI client with a dummy key and a loopback address
   (never called: the calls are counted). Telemetry is off (``MEM0_TELEMETRY=False``, read
   when mem0 is imported) and mem0's files (``MEM0_DIR``, its SQLite history) go to a
   temporary directory. Search: ``memory.search(question, top_k=200, filters={"user_id": ...})``.
3. ``langgraph``: ``AsyncPostgresStore.from_conn_string`` (psycopg 3, one connection) with a
   pgvector index ``{"dims": 384, "embed": <async function over the model>, "fields":
   ["text"]}``; one namespace per conversation, one item per turn.
   Search: ``store.asearch(namespace, query=question, limit=200)``.

Each LoCoMo turn is one add call whose text is ``"{speaker}: {text}"`` (what memfuse embeds for
a message); the turn's id goes with it (memfuse: the message id; mem0: ``metadata.turn_id``;
LangGraph: the item key), so every result can be scored by the turn(s) it contains. One
conversation is one user (memfuse user, mem0 ``user_id``, LangGraph namespace).

Measured for each system, one after the other (not interleaved):

- ``add``: one sequential writer, one add call per turn over the whole dev split (2760 turns,
  file order). ``add_calls_per_s`` = turns / wall time of the add loop. memfuse embeds
  asynchronously (a worker embeds committed messages in batches) and builds M1/M2 in the
  background, while the peers embed inside each add; so memfuse also has
  ``searchable_msgs_per_s`` = turns / (add loop + ``mf.flush()``, which waits for M1/M2 and
  for the embedding queue to drain). For the peers the two figures are the same.
- ``search``: the scored questions (categories 1-4 with evidence), one after another, after
  ``--warmup`` untimed searches with LoCoMo's category-5 questions (never scored, so no timed
  question is cached by the warm-up). End to end as a caller sees it, query embedding included;
  p50/p95 over every question.
- ``recall``: LoCoMo evidence recall@500/1000/2000 from the same timed searches, with the rule
  of :mod:`memfuse.evaluation.locomo` (results in rank order until the next would overflow B
  tokens of the all-MiniLM tokenizer; a turn is retrieved when a result within the budget
  contains it).
- ``checks``: rows stored, model and LLM calls counted where the library lets us wrap them,
  and (for the whole run) every attempt to reach the network: an audit hook records and blocks
  any socket connection or name lookup that is not loopback or a Unix socket.

``--quick`` does fewer warm-up searches and takes the first two conversations of the split
(``--conversations N`` chooses); the full run loads the whole split and asks every question.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import ipaddress
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from tqdm import tqdm

from benchmarks.foundation import summary
from benchmarks.harness import run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, machine
from memfuse.db.urls import asyncpg_connect_args
from memfuse.embedding.embedders import bundled_model_path
from memfuse.evaluation.locomo import (
    BUDGETS,
    RESULTS_PER_QUESTION,
    Question,
    Retrieved,
    load_questions,
    minilm_token_counter,
    recall_at_budgets,
    summarize,
)
from memfuse.ingest import load_conversations
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.jobs import message_text

SCHEMAS = {
    "memfuse": "bench_peers_memfuse",
    "mem0": "bench_peers_mem0",
    "langgraph": "bench_peers_langgraph",
}
SYSTEMS = tuple(SCHEMAS)
MEM0_COLLECTION = "bench_peers_mem0_turns"
"""mem0's table. Distinct from anything in ``public``: mem0 looks its table up there only."""
DIMENSION = 384
PACKAGES = (
    "memfuse",
    "mem0ai",
    "langgraph-checkpoint-postgres",
    "langgraph-checkpoint",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "sentence-transformers",
    "transformers",
    "torch",
    "asyncpg",
    "sqlalchemy",
)
PEER_REQUIREMENTS = (
    "'mem0ai>=2.2'",
    "'langgraph-checkpoint-postgres>=3.2'",
    "'psycopg[binary,pool]>=3.2'",
)
OFFLINE_LLM_URL = "http://127.0.0.1:9/v1"
"""Where mem0's unused LLM client would send requests: the loopback discard port."""


def progress(line: str) -> None:
    """Progress goes to stderr; stdout gets the summary only."""
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - benchmark progress


# --- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One LoCoMo turn as every system gets it: the user, session, id, text and memfuse dict."""

    user: str
    session: str
    id: uuid.UUID
    text: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    """A peer's result in the form the budget rule reads (see ``locomo.Retrieved``)."""

    content: str
    message_ids: tuple[uuid.UUID, ...]


def load_turns(path: Path) -> list[Turn]:
    """Every turn of the file in order, parsed by memfuse's LoCoMo reader (ids included)."""
    turns = []
    for conversation in load_conversations(path):
        for session in conversation.sessions:
            for message in session.messages:
                text = message_text(message["name"], message["content"])
                turns.append(
                    Turn(conversation.user, session.name, uuid.UUID(message["id"]), text, message)
                )
    return turns


def warmup_questions(path: Path, count: int, users: Collection[str]) -> list[tuple[str, str]]:
    """``count`` category-5 questions (never scored) of ``users``, spread over the file."""
    document = json.loads(path.read_text(encoding="utf-8"))
    pool = [
        (f"locomo-{sample['sample_id']}", str(qa["question"]))
        for sample in document
        for qa in sample.get("qa", [])
        if qa.get("category") == 5
        and str(qa.get("question", "")).strip()
        and f"locomo-{sample['sample_id']}" in users
    ]
    if not pool or count <= 0:
        return []
    return [pool[index * len(pool) // count] for index in range(min(count, len(pool)))]


# --- the network guard ------------------------------------------------------------------------


@dataclass(slots=True)
class NetworkGuard:
    """An audit hook that records and blocks every connection or name lookup that leaves the
    machine, except to the benchmark's own database server.

    Only Python-level sockets are seen (asyncpg, urllib, httpx, requests); libpq (psycopg)
    connects in C, to the benchmark's own server. Audit hooks cannot be removed, which is
    fine for a benchmark process.
    """

    allowed: frozenset[str] = frozenset()
    blocked: list[str] = field(default_factory=list)

    @classmethod
    def for_database(cls, url: str) -> NetworkGuard:
        """Allow the database's host (and what it resolves to); resolved before the hook is on."""
        args = asyncpg_connect_args(url)
        host = args["host"]
        if host is None or str(host).startswith("/") or local_host(host):
            return cls()
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, args["port"])}
        return cls(frozenset({str(host), *resolved}))

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and not self.fine(address[0]):
                self.block(f"connect {address[0]}:{address[1]}")
        elif event == "socket.getaddrinfo" and not self.fine(args[0]):
            self.block(f"getaddrinfo {args[0]}")

    def fine(self, host: object) -> bool:
        return local_host(host) or str(host) in self.allowed

    def block(self, what: str) -> None:
        self.blocked.append(what)
        raise OSError(f"benchmarks.peers runs offline: blocked {what}")


def local_host(host: object) -> bool:
    """A loopback address or name, or no host (a Unix socket's address is not a tuple)."""
    if host is None:
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


# --- the systems ------------------------------------------------------------------------------


class System(Protocol):
    """One memory system as the benchmark drives it."""

    async def prepare(self, turns: Sequence[Turn]) -> None:
        """What an app has ready before its users speak (not timed)."""

    async def add(self, turn: Turn) -> None: ...

    async def settle(self) -> None:
        """Wait until everything added is searchable (nothing to wait for if add() did it)."""

    async def search(self, user: str, question: str) -> Sequence[Retrieved]: ...

    def counters(self) -> dict[str, int]:
        """Running counts of the calls the system makes (model, LLM, caches)."""

    async def checks(self) -> dict[str, Any]:
        """What is stored at the end: shows the system kept every turn once."""


@dataclass(slots=True)
class MemfuseSystem:
    mf: MemFuse
    url: str
    sessions: dict[tuple[str, str], Memory] = field(default_factory=dict)
    users: dict[str, Memory] = field(default_factory=dict)

    async def prepare(self, turns: Sequence[Turn]) -> None:
        """One handle per session for the adds and one per user for the questions."""
        for turn in turns:
            key = (turn.user, turn.session)
            if key not in self.sessions:
                self.sessions[key] = await self.mf.init(turn.user, session=turn.session)
        for user in dict.fromkeys(turn.user for turn in turns):
            self.users[user] = await self.mf.init(user)

    async def add(self, turn: Turn) -> None:
        await self.sessions[(turn.user, turn.session)].add([turn.message])

    async def settle(self) -> None:
        await self.mf.flush()

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        return await self.users[user].query(question, top_k=RESULTS_PER_QUESTION)

    def counters(self) -> dict[str, int]:
        stats = self.mf.retrieval.stats
        worker = self.mf.worker
        return {
            "query_embedding_cache_hits": self.mf.retrieval.embeddings.hits,
            "result_cache_hits": stats.result_cache_hits,
            "worker_vectors_written": 0 if worker is None else worker.stats.vectors_written,
        }

    async def checks(self) -> dict[str, Any]:
        schema = SCHEMAS["memfuse"]
        queries = {
            "messages": f"SELECT count(*) FROM {schema}.messages",
            "messages_embedded": f"SELECT count(*) FROM {schema}.messages"
            " WHERE embedding IS NOT NULL",
            "episodes": f"SELECT count(*) FROM {schema}.episodes",
            "facts": f"SELECT count(*) FROM {schema}.facts",
            "sessions": f"SELECT count(*) FROM {schema}.sessions",
        }
        connection = await asyncpg.connect(**asyncpg_connect_args(self.url))
        try:
            rows = {key: int(await connection.fetchval(query)) for key, query in queries.items()}
        finally:
            await connection.close()
        worker = self.mf.worker
        if worker is None:
            return rows
        stats = worker.stats
        return rows | {
            "worker_vectors_written": stats.vectors_written,
            "worker_batches": stats.batches,
            "worker_largest_batch": stats.largest_batch,
            "worker_failures": stats.failures,
        }


@dataclass(slots=True)
class Mem0System:
    memory: Any
    url: str
    calls: Counter[str]

    async def prepare(self, turns: Sequence[Turn]) -> None:
        return None

    async def add(self, turn: Turn) -> None:
        await self.memory.add(
            [{"role": "user", "content": turn.text}],
            user_id=turn.user,
            metadata={"turn_id": str(turn.id), "session": turn.session},
            infer=False,
        )

    async def settle(self) -> None:
        return None

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        found = await self.memory.search(
            question, top_k=RESULTS_PER_QUESTION, filters={"user_id": user}
        )
        return [
            Hit(str(row["memory"]), (uuid.UUID(str(row["metadata"]["turn_id"])),))
            for row in found["results"]
        ]

    def counters(self) -> dict[str, int]:
        return dict(self.calls)

    async def checks(self) -> dict[str, Any]:
        table = f"{SCHEMAS['mem0']}.{MEM0_COLLECTION}"
        return {
            "rows": await count_rows(self.url, f"SELECT count(*) FROM {table}"),
            "distinct_turn_ids": await count_rows(
                self.url, f"SELECT count(DISTINCT payload->>'turn_id') FROM {table}"
            ),
        }


@dataclass(slots=True)
class LangGraphSystem:
    store: Any
    url: str
    calls: Counter[str]

    async def prepare(self, turns: Sequence[Turn]) -> None:
        return None

    async def add(self, turn: Turn) -> None:
        await self.store.aput(
            ("locomo", turn.user), str(turn.id), {"text": turn.text, "session": turn.session}
        )

    async def settle(self) -> None:
        return None

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        items = await self.store.asearch(
            ("locomo", user), query=question, limit=RESULTS_PER_QUESTION
        )
        return [Hit(str(item.value["text"]), (uuid.UUID(str(item.key)),)) for item in items]

    def counters(self) -> dict[str, int]:
        return dict(self.calls)

    async def checks(self) -> dict[str, Any]:
        schema = SCHEMAS["langgraph"]
        return {
            "items": await count_rows(self.url, f"SELECT count(*) FROM {schema}.store"),
            "vectors": await count_rows(self.url, f"SELECT count(*) FROM {schema}.store_vectors"),
        }


async def count_rows(url: str, query: str) -> int:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


def counted(calls: Counter[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with every call counted under ``name``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return function(*args, **kwargs)

    return wrapper


def keyword_counted(calls: Counter[str], function: Callable[..., Any]) -> Callable[..., Any]:
    """mem0's keyword search, counting the calls and the rows it matched."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rows = function(*args, **kwargs)
        calls["keyword_search"] += 1
        calls["keyword_matches"] += len(rows or ())
        return rows

    return wrapper


def libpq_conninfo(url: str, schema: str, extension_schema: str) -> str:
    """A psycopg conninfo for the benchmark's server (host: the Unix socket directory for the
    embedded one) whose new tables land in ``schema`` and which still sees ``vector``."""
    from psycopg.conninfo import make_conninfo

    args = asyncpg_connect_args(url)
    parts = {
        "host": args["host"],
        "port": args["port"],
        "dbname": args["database"],
        "user": args["user"],
        "password": args["password"],
    }
    present = {key: value for key, value in parts.items() if value is not None}
    return str(make_conninfo("", **present, options=f"-c search_path={schema},{extension_schema}"))


@asynccontextmanager
async def open_memfuse(url: str, config: dict[str, Any]) -> AsyncIterator[System]:
    options: dict[str, Any] = {"schema": SCHEMAS["memfuse"], "search_cache_ttl": 0.0}
    async with MemFuse(url, embedder="local", **options) as mf:
        settings = mf.settings
        config.update(
            api="MemFuse, Memory.add([message]) per turn, Memory.query(q, top_k=200)",
            options={"embedder": "local", **options},
            pipeline_auto=settings.pipeline_auto,
            worker_enabled=settings.worker_enabled,
            worker_batch_size=settings.worker_batch_size,
            fact_extractor=settings.fact_extractor,
            buffer_enabled=settings.buffer_enabled,
            search_candidates=settings.search_candidates,
            query_embedding_cache=(
                f"LRU of {settings.query_embedding_cache_size} query embeddings (default); "
                "hits during the timed search are in calls.search"
            ),
            result_cache="off (search_cache_ttl=0): every timed call searches",
        )
        yield MemfuseSystem(mf, url)


@asynccontextmanager
async def open_mem0(
    url: str, config: dict[str, Any], extension_schema: str
) -> AsyncIterator[System]:
    with tempfile.TemporaryDirectory(prefix="bench-peers-mem0-") as home:
        # Both are read when mem0 is imported: no telemetry, no files in the home directory.
        os.environ["MEM0_TELEMETRY"] = "False"
        os.environ.setdefault("MEM0_DIR", home)
        mem0 = importlib.import_module("mem0")
        telemetry = importlib.import_module("mem0.memory.telemetry")
        if telemetry.MEM0_TELEMETRY:
            raise RuntimeError("mem0 telemetry is on: mem0 was imported before MEM0_TELEMETRY")
        conninfo = libpq_conninfo(url, SCHEMAS["mem0"], extension_schema)
        settings = {
            "vector_store": {
                "provider": "pgvector",
                "config": {
                    "connection_string": conninfo,
                    "collection_name": MEM0_COLLECTION,
                    "embedding_model_dims": DIMENSION,
                    "hnsw": True,
                },
            },
            "embedder": {
                "provider": "huggingface",
                "config": {
                    "model": str(bundled_model_path()),
                    "embedding_dims": DIMENSION,
                    "model_kwargs": {"device": "cpu", "local_files_only": True},
                },
            },
            "llm": {
                "provider": "openai",
                "config": {
                    "model": "unused-offline",
                    "api_key": "unused-offline",
                    "openai_base_url": OFFLINE_LLM_URL,
                },
            },
            "history_db_path": str(Path(home) / "history.db"),
        }
        memory = mem0.AsyncMemory.from_config(settings)
        calls: Counter[str] = Counter(llm=0, embed=0, embed_batch=0, keyword_matches=0)
        memory.llm.generate_response = counted(calls, "llm", memory.llm.generate_response)
        model = memory.embedding_model
        model.embed = counted(calls, "embed", model.embed)
        model.embed_batch = counted(calls, "embed_batch", model.embed_batch)
        store = memory.vector_store
        store.keyword_search = keyword_counted(calls, store.keyword_search)
        config.update(
            api="mem0.AsyncMemory: add([turn], user_id, metadata, infer=False); "
            "search(q, top_k=200, filters={'user_id': ...})",
            vector_store={
                "provider": "pgvector",
                "collection_name": MEM0_COLLECTION,
                "hnsw": True,
                "schema": f"{SCHEMAS['mem0']} (search_path in the conninfo)",
            },
            embedder="huggingface: SentenceTransformer(<bundled all-MiniLM-L6-v2 path>)",
            llm=f"openai client, dummy key, base URL {OFFLINE_LLM_URL}; calls counted",
            telemetry=bool(telemetry.MEM0_TELEMETRY),
            search_threshold="0.1 (default)",
            query_embedding_cache="none: the model encodes every query",
        )
        try:
            yield Mem0System(memory, url, calls)
        finally:
            memory.close()
            memory.vector_store.connection_pool.close()
            if memory._entity_store is not None:
                memory._entity_store.connection_pool.close()


@asynccontextmanager
async def open_langgraph(
    url: str, config: dict[str, Any], extension_schema: str
) -> AsyncIterator[System]:
    from langgraph.store.postgres import AsyncPostgresStore
    from langgraph.store.postgres.base import PostgresIndexConfig

    sentence_transformers = importlib.import_module("sentence_transformers")
    model = sentence_transformers.SentenceTransformer(
        str(bundled_model_path()), device="cpu", local_files_only=True
    )
    calls: Counter[str] = Counter()

    async def embed(texts: Sequence[str]) -> list[list[float]]:
        calls["embed"] += 1
        calls["texts"] += len(texts)
        vectors = await asyncio.to_thread(model.encode, list(texts), normalize_embeddings=True)
        return [[float(value) for value in vector] for vector in vectors]

    conninfo = libpq_conninfo(url, SCHEMAS["langgraph"], extension_schema)
    index: PostgresIndexConfig = {"dims": DIMENSION, "embed": embed, "fields": ["text"]}
    async with AsyncPostgresStore.from_conn_string(conninfo, index=index) as store:
        await store.setup()
        config.update(
            api="langgraph AsyncPostgresStore.from_conn_string (one psycopg connection): "
            "aput(('locomo', user), turn_id, {'text', 'session'}); "
            "asearch(('locomo', user), query=q, limit=200)",
            index={
                "dims": DIMENSION,
                "embed": "async function: SentenceTransformer.encode in a thread",
                "fields": ["text"],
                "ann_index": "hnsw, cosine (defaults)",
            },
            schema=f"{SCHEMAS['langgraph']} (search_path in the conninfo)",
            query_embedding_cache="none: the model encodes every query",
        )
        yield LangGraphSystem(store, url, calls)


# --- measuring --------------------------------------------------------------------------------


@dataclass(slots=True)
class Workload:
    turns: list[Turn]
    questions: list[Question]
    warmup: list[tuple[str, str]]
    count_tokens: Callable[[str], int]


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


async def measure(name: str, system: System, work: Workload) -> dict[str, Any]:
    """Load every turn, settle, warm up, ask every question; the figures and the recall."""
    prepare_started = time.perf_counter()
    await system.prepare(work.turns)
    prepare_s = time.perf_counter() - prepare_started
    counts = [system.counters()]
    latencies: list[float] = []
    started = time.perf_counter()
    for turn in tqdm(work.turns, desc=f"{name} add", unit="turn", file=sys.stderr):
        call = time.perf_counter()
        await system.add(turn)
        latencies.append((time.perf_counter() - call) * 1000.0)
    load_s = time.perf_counter() - started
    counts.append(system.counters())
    settle_started = time.perf_counter()
    await system.settle()
    settle_s = time.perf_counter() - settle_started
    counts.append(system.counters())
    turns = len(work.turns)
    add = {
        "turns": turns,
        "writers": 1,
        "prepare_s": round(prepare_s, 2),
        "add_loop_s": round(load_s, 2),
        "add_calls_per_s": round(turns / load_s, 1),
        "add_call_ms": {**summary(latencies), "mean_ms": round(statistics.mean(latencies), 4)},
        "settle_s": round(settle_s, 2),
        "searchable_msgs_per_s": round(turns / (load_s + settle_s), 1),
    }
    progress(f"{name} add: {json.dumps(add)}")

    for user, text in work.warmup:
        await system.search(user, text)
    counts.append(system.counters())
    found: list[Sequence[Retrieved]] = []
    times: list[float] = []
    for question in tqdm(work.questions, desc=f"{name} search", unit="q", file=sys.stderr):
        call = time.perf_counter()
        results = await system.search(question.user, question.question)
        times.append((time.perf_counter() - call) * 1000.0)
        found.append(results)
    counts.append(system.counters())
    returned = [len(results) for results in found]
    search = {
        "questions": len(work.questions),
        "warmup_searches": len(work.warmup),
        "top_k": RESULTS_PER_QUESTION,
        **summary(times),
        "mean_ms": round(statistics.mean(times), 4),
        "results_per_question": {
            "min": min(returned),
            "mean": round(statistics.mean(returned), 1),
            "fewer_than_top_k": sum(count < RESULTS_PER_QUESTION for count in returned),
        },
    }
    progress(f"{name} search: {json.dumps(search)}")
    recalls = [
        recall_at_budgets(question, results, work.count_tokens)
        for question, results in zip(work.questions, found, strict=True)
    ]
    recall = summarize(work.questions, recalls)
    overall = {key: value for key, value in recall.items() if key != "per_category"}
    progress(f"{name} recall: {json.dumps(overall)}")
    calls = {
        "add": difference(counts[1], counts[0]),
        "settle": difference(counts[2], counts[1]),
        "warmup": difference(counts[3], counts[2]),
        "search": difference(counts[4], counts[3]),
    }
    return {"add": add, "search": search, "recall": recall, "calls": calls}


async def run_system(
    name: str, opener: AbstractAsyncContextManager[System], work: Workload, config: dict[str, Any]
) -> dict[str, Any]:
    """One system from start to close; a failure is recorded with its reason, not raised."""
    started = time.perf_counter()
    try:
        async with opener as system:
            result: dict[str, Any] = {
                "config": config,
                "setup_s": round(time.perf_counter() - started, 2),
            }
            result.update(await measure(name, system, work))
            result["checks"] = await system.checks()
    except Exception as exc:
        progress(f"{name} failed: {exc!r}")
        failure: dict[str, Any] = {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "traceback_tail": traceback.format_exc().strip().splitlines()[-8:],
            "config": config,
        }
        if isinstance(exc, ModuleNotFoundError):
            failure["hint"] = f"install the peers: pip install {' '.join(PEER_REQUIREMENTS)}"
        return failure
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


# --- the run ----------------------------------------------------------------------------------


async def reset_schemas(url: str, *, create: bool) -> str:
    """Drop the benchmark's schemas (and make them anew); the schema holding ``vector``."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        for schema in SCHEMAS.values():
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if not create:
            return ""
        # memfuse's migration does the same; the peers' connections must see the type.
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for name in ("mem0", "langgraph"):
            await connection.execute(f"CREATE SCHEMA {SCHEMAS[name]}")
        return str(
            await connection.fetchval(
                "SELECT n.nspname FROM pg_extension e"
                " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
        )
    finally:
        await connection.close()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def opener(
    name: str, url: str, config: dict[str, Any], extension_schema: str
) -> AbstractAsyncContextManager[System]:
    if name == "memfuse":
        return open_memfuse(url, config)
    if name == "mem0":
        return open_mem0(url, config, extension_schema)
    return open_langgraph(url, config, extension_schema)


def table(systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system that ran: the figures to compare at a glance."""
    rows = []
    for name, result in systems.items():
        if "error" in result:
            rows.append({"system": name, "error": result["error"]})
            continue
        rows.append(
            {
                "system": name,
                "add_calls_per_s": result["add"]["add_calls_per_s"],
                "searchable_msgs_per_s": result["add"]["searchable_msgs_per_s"],
                "search_p50_ms": result["search"]["p50_ms"],
                "search_p95_ms": result["search"]["p95_ms"],
                **{f"recall@{b}": result["recall"][f"recall@{b}"] for b in BUDGETS},
            }
        )
    return rows


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    guard = NetworkGuard.for_database(url)
    sys.addaudithook(guard)
    turns = load_turns(args.locomo)
    questions, left_out = load_questions(args.locomo)
    users = list(dict.fromkeys(turn.user for turn in turns))[: args.conversations]
    turns = [turn for turn in turns if turn.user in users]
    questions = [question for question in questions if question.user in users]
    warmup = warmup_questions(args.locomo, args.warmup, users)
    work = Workload(turns, questions, warmup, minilm_token_counter())
    results: dict[str, Any] = {"machine": await machine(url, source), "versions": versions()}
    results["data"] = {
        "file": str(args.locomo),
        "conversations": len(users),
        "turns": len(turns),
        "questions": len(questions),
        "left_out": left_out,
        "warmup": f"{len(work.warmup)} category-5 questions (not scored), before the timed ones",
        "text_per_turn": "'{speaker}: {text}' (the caption of a shared photo appended as memfuse"
        " does)",
    }
    extension_schema = await reset_schemas(url, create=True)
    systems: dict[str, dict[str, Any]] = {}
    try:
        for name in args.systems:
            progress(f"--- {name}")
            config: dict[str, Any] = {}
            systems[name] = await run_system(
                name, opener(name, url, config, extension_schema), work, config
            )
    finally:
        if not args.keep:
            await reset_schemas(url, create=False)
    results["machine"]["pgvector_version_after"] = await pgvector_version(url)
    results["systems"] = systems
    results["table"] = table(systems)
    results["network"] = {
        "blocked_attempts": guard.blocked,
        "watched": "socket.connect and socket.getaddrinfo audit events, for the whole run:"
        " anything but loopback, Unix sockets and the database's host is recorded and blocked",
    }
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["notes"] = notes(systems)
    for row in results["table"]:
        print(json.dumps(row), flush=True)  # noqa: T201 - benchmark output
    return results


async def pgvector_version(url: str) -> str | None:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        version = await connection.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
    finally:
        await connection.close()
    return None if version is None else str(version)


def notes(systems: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader needs to read the figures right, filled in from the measurements."""
    found = [
        "One sequential writer and one sequential reader for every system. The systems ran one"
        " after another on the same server and model, not interleaved: noise from other work"
        " on the machine (see machine.load_average_*) does not hit them evenly.",
        "add_calls_per_s is turns / wall time of the add loop. The peers embed the turn inside"
        " each add call (one text per model call), so a turn is searchable when add returns"
        " and searchable_msgs_per_s is the same figure. memfuse's add() returns once the"
        " message is committed; its in-process worker embeds in the background and its"
        " pipeline builds M1 episodes and M2 facts, on the same event loop and the same 2"
        " cores as the add loop. Its searchable_msgs_per_s counts until mf.flush() returns"
        " (M1/M2 done, embedding queue drained); a turn is found by full text as soon as it is"
        " committed.",
        "Search latency is end to end, query embedding included, p50/p95 over every scored"
        " question after the warm-up. Neither peer caches query embeddings (the model runs on"
        " every search); memfuse keeps an LRU of query embeddings, which only the same text"
        " asked twice would hit (calls.search.query_embedding_cache_hits), and its result"
        " cache is off.",
    ]
    memfuse = systems.get("memfuse", {})
    if "checks" in memfuse:
        checks = memfuse["checks"]
        written = {
            phase: calls.get("worker_vectors_written", 0)
            for phase, calls in memfuse["calls"].items()
        }
        found.append(
            f"memfuse embedded {checks.get('worker_vectors_written', 0)} texts for"
            f" {checks['messages']} turns (the peers: one per turn): the messages, its"
            f" {checks['episodes']} episodes (re-embedded as they grow) and {checks['facts']}"
            f" facts from the offline extractor; {written['add']} of them during the add loop"
            f" and {written['settle']} during mf.flush(). The default search uses all three"
            " layers; this is what its add and flush time pay for."
        )
    mem0 = systems.get("mem0", {})
    if "checks" in mem0:
        calls = mem0["calls"]
        matched = calls["search"].get("keyword_matches", 0)
        found.append(
            f"mem0 (infer=False): {calls['add'].get('embed', 0)} model calls for"
            f" {mem0['add']['turns']} adds, {mem0['checks']['rows']} rows stored"
            f" ({mem0['checks']['distinct_turn_ids']} distinct turns). LLM calls in the whole"
            f" run: {sum(phase.get('llm', 0) for phase in calls.values())}. Search:"
            f" {calls['search'].get('embed', 0)} query embeddings for"
            f" {mem0['search']['questions']} questions."
        )
        found.append(
            "mem0's search: a pgvector KNN of max(4 * top_k, 60) rows filtered on"
            " payload->>'user_id', gated at a cosine score of 0.1 (the default threshold), then"
            " re-scored with a keyword match (PostgreSQL full text over spaCy-lemmatized text,"
            " plainto_tsquery: every term must match) and entity boosts. spaCy and its"
            " en_core_web_sm model (mem0ai's optional 'nlp' extra; spaCy fetches the model"
            " from GitHub at first use) are not installed, so mem0 does what it does without"
            " them: the keyword match runs on the raw text, stop words included, and there are"
            " no entity boosts (with infer=False mem0 links no entities anyway). In the timed"
            f" search the keyword match found {matched} rows over"
            f" {calls['search'].get('keyword_search', 0)} searches.",
        )
        found.append(
            "mem0 also writes every add to its SQLite history (history_db_path, in a temporary"
            " directory here), which is part of its add time."
        )
    for name in ("mem0", "langgraph"):
        search = systems.get(name, {}).get("search")
        if search and search["results_per_question"]["fewer_than_top_k"]:
            short = search["results_per_question"]
            found.append(
                f"{name} returned fewer than {RESULTS_PER_QUESTION} results for"
                f" {short['fewer_than_top_k']} questions (min {short['min']}, mean"
                f" {short['mean']})."
            )
    langgraph = systems.get("langgraph", {})
    if "checks" in langgraph:
        found.append(
            "LangGraph's store searches by vector only (no full text); the embed function was"
            " called once per aput and once per asearch, one text each (calls)."
        )
        overall = [f"recall@{budget}" for budget in BUDGETS]
        if "recall" in mem0 and all(
            mem0["recall"][key] == langgraph["recall"][key] for key in overall
        ):
            found.append(
                "mem0's recall equals LangGraph's at every budget: with the keyword match"
                " (almost) never firing and no entity boosts, mem0 ranks by the same model's"
                " cosine similarity as LangGraph's vector search."
            )
    return found


def systems_argument(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SYSTEMS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=int, default=20, help="untimed searches per system")
    parser.add_argument(
        "--systems",
        type=systems_argument,
        default=list(SYSTEMS),
        help=f"comma-separated, in order (default: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--conversations", type=int, help="only the file's first N conversations (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 warm-up searches and the first 2 conversations"
    )
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schemas")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.warmup = min(args.warmup, 5)
        args.conversations = args.conversations or 2
    if args.conversations is not None and args.conversations < 1:
        parser.error("--conversations must be at least 1")
    run_benchmark("benchmarks.peers", run, args)


if __name__ == "__main__":
    main()
