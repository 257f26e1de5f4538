"""The three systems :mod:`benchmarks.peers` measures, each behind :class:`System`.

Each runs on the benchmark's server in a schema of its own, with the same model files
(memfuse's bundled all-MiniLM-L6-v2, never a hub), and counts what the library lets us wrap
(model and LLM calls). The peers (mem0, LangGraph, psycopg) are imported only when opened, so
this module imports without the ``bench`` extra. Their configuration: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.peer_workload import Hit, System, Turn
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.embedding.embedders import bundled_model_path
from memfuse.evaluation.locomo import RESULTS_PER_QUESTION, Retrieved
from memfuse.memory import MemFuse, Memory

SCHEMAS = {
    "memfuse": "bench_peers_memfuse",
    "mem0": "bench_peers_mem0",
    "langgraph": "bench_peers_langgraph",
    "memfuse_store": "bench_peers_memfuse_store",
}
"""``memfuse_store`` is memfuse's LangGraph store (``MemFuseStore``) on LangGraph's workload:
the line to read beside ``langgraph`` (issue 17)."""
SYSTEMS = tuple(SCHEMAS)
SCHEMA_OF_MEMFUSE = SCHEMAS["memfuse"]
MEM0_COLLECTION = "bench_peers_mem0_turns"
"""mem0's table. Distinct from anything in ``public``: mem0 looks its table up there only."""
DIMENSION = 384
PEER_POOL_SIZE = 10
"""memfuse's pool holds 5 connections and 10 overflow; each peer's pool gets 10 (mem0's
default is 5, LangGraph's store one connection unless given a pool)."""
OFFLINE_LLM_URL = "http://127.0.0.1:9/v1"
"""Where mem0's unused LLM client would send requests: the loopback discard port."""


async def wait_until_none(url: str, query: str) -> None:
    """Until ``query`` (a count of rows still waiting for their vector) returns 0."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        while await connection.fetchval(query):  # noqa: ASYNC110 - the worker's progress
            await asyncio.sleep(0.02)
    finally:
        await connection.close()


async def store_put(store: Any, turn: Turn) -> None:
    """A turn into a LangGraph store, as both store systems write it."""
    await store.aput(
        ("locomo", turn.user), str(turn.id), {"text": turn.text, "session": turn.session}
    )


async def store_search(store: Any, user: str, question: str) -> Sequence[Retrieved]:
    items = await store.asearch(("locomo", user), query=question, limit=RESULTS_PER_QUESTION)
    return [Hit(str(item.value["text"]), (uuid.UUID(str(item.key)),)) for item in items]


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
        """Until every message has its vector (the worker embeds in the background)."""
        await wait_until_none(
            self.url, f"SELECT count(*) FROM {SCHEMA_OF_MEMFUSE}.messages WHERE embedding IS NULL"
        )

    async def finish(self) -> None:
        """Until M1 and M2 are done and every row is embedded (``flush()``), then fresh
        statistics for search, as after any bulk load (``analyze()``)."""
        await self.mf.flush()
        await self.mf.analyze()

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        return await self.users[user].query(question, top_k=RESULTS_PER_QUESTION)

    async def forget_queries(self) -> None:
        (await resolve(self.mf.container.retrieval_service)).embeddings.clear()

    def counters(self) -> dict[str, int]:
        stats = self.mf.search_stats()
        worker = self.mf.worker_stats()
        return {
            "query_embedding_cache_hits": stats.query_embedding_cache_hits,
            "result_cache_hits": stats.result_cache_hits,
            "worker_vectors_written": 0 if worker is None else worker.vectors_written,
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
        stats = self.mf.worker_stats()
        if stats is None:
            return rows
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

    async def finish(self) -> None:
        return None

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        found = await self.memory.search(
            question, top_k=RESULTS_PER_QUESTION, filters={"user_id": user}
        )
        return [
            Hit(str(row["memory"]), (uuid.UUID(str(row["metadata"]["turn_id"])),))
            for row in found["results"]
        ]

    async def forget_queries(self) -> None:
        return None  # no query cache

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
        await store_put(self.store, turn)

    async def settle(self) -> None:
        return None

    async def finish(self) -> None:
        return None

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        return await store_search(self.store, user, question)

    async def forget_queries(self) -> None:
        return None  # no query cache

    def counters(self) -> dict[str, int]:
        return dict(self.calls)

    async def checks(self) -> dict[str, Any]:
        schema = SCHEMAS["langgraph"]
        return {
            "items": await count_rows(self.url, f"SELECT count(*) FROM {schema}.store"),
            "vectors": await count_rows(self.url, f"SELECT count(*) FROM {schema}.store_vectors"),
        }


@dataclass(slots=True)
class MemfuseStoreSystem:
    """``MemFuseStore`` doing exactly what :class:`LangGraphSystem` does with LangGraph's."""

    mf: MemFuse
    store: Any
    url: str

    async def prepare(self, turns: Sequence[Turn]) -> None:
        return None

    async def add(self, turn: Turn) -> None:
        await store_put(self.store, turn)

    async def settle(self) -> None:
        """Until every item has its vector (the worker embeds in the background)."""
        schema = SCHEMAS["memfuse_store"]
        await wait_until_none(
            self.url, f"SELECT count(*) FROM {schema}.knowledge WHERE embedding IS NULL"
        )

    async def finish(self) -> None:
        await self.mf.flush()
        await self.mf.analyze()

    async def search(self, user: str, question: str) -> Sequence[Retrieved]:
        return await store_search(self.store, user, question)

    async def forget_queries(self) -> None:
        (await resolve(self.mf.container.retrieval_service)).embeddings.clear()

    def counters(self) -> dict[str, int]:
        stats = self.mf.search_stats()
        return {"query_embedding_cache_hits": stats.query_embedding_cache_hits}

    async def checks(self) -> dict[str, Any]:
        schema = SCHEMAS["memfuse_store"]
        return {
            "items": await count_rows(self.url, f"SELECT count(*) FROM {schema}.knowledge"),
            "vectors": await count_rows(
                self.url, f"SELECT count(*) FROM {schema}.knowledge WHERE embedding IS NOT NULL"
            ),
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
                    "maxconn": PEER_POOL_SIZE,
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
    pool: Any = {"min_size": 1, "max_size": PEER_POOL_SIZE}  # langgraph's PoolConfig TypedDict
    opened = AsyncPostgresStore.from_conn_string(conninfo, index=index, pool_config=pool)
    async with opened as store:
        await store.setup()
        config.update(
            api=f"langgraph AsyncPostgresStore.from_conn_string (a psycopg pool of at most "
            f"{PEER_POOL_SIZE} connections: its own option for concurrent use): "
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


@asynccontextmanager
async def open_memfuse_store(url: str, config: dict[str, Any]) -> AsyncIterator[System]:
    from memfuse.integrations.langgraph import MemFuseStore

    options: dict[str, Any] = {"schema": SCHEMAS["memfuse_store"], "search_cache_ttl": 0.0}
    async with MemFuse(url, embedder="local", **options) as mf:
        store = MemFuseStore(mf, user_label=1, index_fields=["text"])
        config.update(
            api="memfuse.integrations.langgraph.MemFuseStore(mf, user_label=1, "
            "index_fields=['text']): aput(('locomo', user), turn_id, {'text', 'session'}); "
            "asearch(('locomo', user), query=q, limit=200)",
            options={"embedder": "local", **options},
            search="memfuse's fused search (vector + full text) over the knowledge layer",
        )
        yield MemfuseStoreSystem(mf, store, url)


def opener(
    name: str, url: str, config: dict[str, Any], extension_schema: str
) -> AbstractAsyncContextManager[System]:
    if name == "memfuse":
        return open_memfuse(url, config)
    if name == "memfuse_store":
        return open_memfuse_store(url, config)
    if name == "mem0":
        return open_mem0(url, config, extension_schema)
    return open_langgraph(url, config, extension_schema)


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


async def pgvector_version(url: str) -> str | None:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        version = await connection.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
    finally:
        await connection.close()
    return None if version is None else str(version)
