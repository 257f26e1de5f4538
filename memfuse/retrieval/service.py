"""Retrieval: validate a query, embed it (cached), run the fused search, fit the budget.

Two shapes of result (``unit``):

- ``"message"`` (default): M0 messages, ranked by every searched list; a list that ranks an
  episode or a fact ranks the messages it was made from. The other layers sharpen the
  ranking, and the caller gets the turns themselves, in the speakers' words.
- ``"item"``: the rows of the searched layers as they are (messages, episodes, facts),
  fused; a row whose messages are all in results ranked above it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar, cast, get_args

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from memfuse.db.engines import on_live_connection, pool_size, pooled_driver
from memfuse.embedding.embedders import Embedder
from memfuse.errors import ValidationError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.search import (
    ScoredRow,
    SearchFilters,
    SearchFound,
    SearchRepository,
    TermStatistics,
)
from memfuse.retrieval.batching import QueryBatcher
from memfuse.retrieval.cache import LruCache, ResultCache
from memfuse.tokens import count_tokens
from memfuse.types import Layer, Method, RetrievalStats, SearchResult, Unit
from memfuse.validation import check_flag, check_text, preview, time_bound

logger = logging.getLogger(__name__)

ALL_LAYERS: tuple[Layer, ...] = ("m0", "m1", "m2", "knowledge")
ALL_METHODS: tuple[Method, ...] = ("vector", "text")
MAX_QUERY_CHARS = 4000
"""Longer queries are cut: the model reads 256 word pieces, and full text gains nothing."""
MAX_TOP_K = 1000
MIN_RESULT_TOKENS = 10
"""A budget fetches enough rows to fill it with results this short (a turn is about 25)."""
TERMS_TTL = 300.0
"""Seconds a search reuses the term statistics it read; ``MemFuse.analyze`` forgets them at once."""
LAYERS_HELD_USERS = 10_000
"""Users whose layers known to hold rows a search remembers (least recently searched go)."""
CANDIDATES_PER_RESULT = 5
MIN_CANDIDATES = 50
"""A search for a few messages ranks ``CANDIDATES_PER_RESULT`` rows per result in each list,
at least ``MIN_CANDIDATES`` (and at most ``search_candidates``): measured on LoCoMo, the evidence
found within the top 1-10 holds or improves against lists of 100 (docs/retrieval.md)."""
SHORT_VECTOR_LIST = 30
SHORT_VECTOR_LIST_MAX_FETCH = 10
"""A search for at most ``SHORT_VECTOR_LIST_MAX_FETCH`` messages ranks ``SHORT_VECTOR_LIST`` rows
in each vector list: a user-filtered HNSW scan costs in proportion to the rows it must find
(for a user holding one row in six, 50 rows took 6.9 ms, 30 rows 4.1 ms), and on LoCoMo the
shorter vector lists found as much evidence within 1, 3 and 5 results and 0.004 less within 10
(two loads). Longer searches keep the full depth: 60 rows for 20 results lost 0.006 within 20
(docs/retrieval.md#list-depth)."""


def list_depth(
    configured: int, *, unit: Unit, fetch: int, budgeted: bool, method: Method = "text"
) -> int:
    """How many rows each ranked list of ``method`` ranks before fusion, for a search
    fetching ``fetch``.

    ``configured`` is ``search_candidates``. A search for items ranks as many per list as it
    returns (each list can contribute at most its own rows); a search for messages within a
    token budget ranks ``configured``; one for ``top_k`` messages ranks
    ``CANDIDATES_PER_RESULT`` per result, at least ``MIN_CANDIDATES``, at most ``configured``
    (its vector lists ``SHORT_VECTOR_LIST`` rows when it fetches at most
    ``SHORT_VECTOR_LIST_MAX_FETCH``).
    """
    if unit == "item":
        return max(configured, min(fetch, MAX_TOP_K))
    if budgeted:
        return configured
    if method == "vector" and fetch <= SHORT_VECTOR_LIST_MAX_FETCH:
        return min(configured, SHORT_VECTOR_LIST)
    return min(configured, max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * fetch))


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A validated query; hashable, so it is also the result cache's key."""

    query: str
    top_k: int | None = 5
    max_tokens: int | None = None
    layers: tuple[Layer, ...] = ALL_LAYERS
    methods: tuple[Method, ...] = ALL_METHODS
    unit: Unit = "message"
    agent_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_unembedded: bool = True
    knowledge_namespace: tuple[str, ...] = ()
    knowledge_filter: str | None = None
    """Canonical JSON (sorted keys) of the knowledge items' value filter: hashable."""
    explain: bool = False

    @classmethod
    def build(
        cls,
        query: object,
        *,
        top_k: object = None,
        max_tokens: object = None,
        layers: object = None,
        methods: object = None,
        unit: object = "message",
        since: object = None,
        until: object = None,
        include_unembedded: object = True,
        explain: object = False,
    ) -> SearchRequest:
        """Check every option; raise ``ValidationError`` naming the bad one."""
        if not isinstance(query, str):
            raise ValidationError(f"must be a string, got {type(query).__name__}", field="query")
        cleaned = clean_query(check_text(query, field="query"))
        if top_k is None and max_tokens is None:
            top_k = 5
        for name, value, upper in (("top_k", top_k, MAX_TOP_K), ("max_tokens", max_tokens, None)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(
                    f"must be a positive integer, got {preview(value)}", field=name
                )
            if upper is not None and value > upper:
                raise ValidationError(f"must be at most {upper}, got {value}", field=name)
        if unit not in get_args(Unit):
            raise ValidationError(f"must be 'message' or 'item', got {preview(unit)}", field="unit")
        since = time_bound(since, field="since")
        until = time_bound(until, field="until")
        include_unembedded = check_flag(include_unembedded, field="include_unembedded")
        return cls(
            query=cleaned,
            top_k=top_k,  # type: ignore[arg-type]
            max_tokens=max_tokens,  # type: ignore[arg-type]
            layers=_choices("layers", layers, ALL_LAYERS),
            methods=_choices("methods", methods, ALL_METHODS),
            unit=unit,  # type: ignore[arg-type]
            since=since,
            until=until,
            include_unembedded=include_unembedded,
            explain=check_flag(explain, field="explain"),
        )


def clean_query(query: str) -> str:
    """The query as searched and cached: runs of white space become one space, cut.

    NULs become spaces too, for callers outside ``SearchRequest.build`` (which rejects them).
    """
    return " ".join(query.replace("\x00", " ").split())[:MAX_QUERY_CHARS]


T = TypeVar("T", bound=str)


def _choices(name: str, value: object, allowed: tuple[T, ...]) -> tuple[T, ...]:
    """A non-empty subset of ``allowed``, in ``allowed``'s order."""
    if value is None:
        return allowed
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)) or not value:
        raise ValidationError(f"must be a non-empty list drawn from {list(allowed)}", field=name)
    unknown = [item for item in value if item not in allowed]
    if unknown:
        raise ValidationError(
            f"unknown {preview(unknown)}; choose from {list(allowed)}", field=name
        )
    return tuple(item for item in allowed if item in value)


class RetrievalService:
    """Hybrid search over one user's memory, with a query-embedding and a result cache."""

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder | None,
        monitor: PerformanceMonitor,
        *,
        schema: str,
        candidates: int = 100,
        rrf_k: int = 60,
        ef_search: int = 100,
        common_term_frequency: float = 0.01,
        common_term_rows: int = 2000,
        term_budget_rows: int = 1000,
        result_cache: ResultCache[tuple[SearchResult, ...]] | None = None,
        embedding_cache_size: int = 1024,
    ) -> None:
        self._engine = engine
        self.embedder = embedder
        self._monitor = monitor
        self.schema = schema
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.ef_search = ef_search
        self.common_term_frequency = common_term_frequency
        self.common_term_rows = common_term_rows
        self.term_budget_rows = term_budget_rows
        self._terms: dict[Layer, TermStatistics] | None = None
        self._terms_read_at = 0.0
        self.results = result_cache if result_cache is not None else ResultCache(0, 0.0)
        self.embeddings: LruCache[tuple[float, ...]] = LruCache(embedding_cache_size)
        self.query_batcher = QueryBatcher(embedder) if embedder is not None else None
        self._layers_held: LruCache[frozenset[Layer]] = LruCache(LAYERS_HELD_USERS)
        capacity = pool_size(engine)  # the engine's own pool: a host app's may differ
        self._statements = asyncio.Semaphore(capacity) if capacity is not None else None
        self.stats = RetrievalStats()

    async def search(self, user_id: uuid.UUID, request: SearchRequest) -> list[SearchResult]:
        """Results for ``request`` within ``user_id``'s memory only."""
        with self._monitor.track_operation("retrieval_query"):
            return await self._search(user_id, request)

    async def analyze(self) -> None:
        """Refresh the statistics the search plan reads (after a bulk load; autovacuum does it
        on its own schedule otherwise)."""
        async with pooled_driver(self._engine) as connection:
            await SearchRepository(connection, self.schema, self._monitor).analyze()
        self._terms = None  # read again at the next search

    async def _read_terms(self, repository: SearchRepository) -> dict[Layer, TermStatistics] | None:
        """The layers' term statistics, read again every ``TERMS_TTL`` seconds: they move only
        when ``ANALYZE`` runs. ``None`` when the common-terms rule is off."""
        if self.common_term_frequency <= 0:
            return None
        now = time.monotonic()
        if self._terms is None or now - self._terms_read_at > TERMS_TTL:
            self._terms = await repository.term_statistics(
                self.common_term_frequency, self.common_term_rows
            )
            self._terms_read_at = now
        return self._terms

    async def _on_live_connection(
        self, run: Callable[[PoolProxiedConnection], Awaitable[list[ScoredRow]]]
    ) -> list[ScoredRow]:
        """``run`` on a pooled connection the pool does not ping first: its first statement
        shows whether the connection is alive. If it went away (a restarted server, a
        terminated backend), ``run`` goes once more on a checked connection; a search only
        reads, so running it twice is safe.

        At most the engine's pool size of searches hold a connection at once; the others
        wait here for one. Beyond the pool's size the pool opens overflow connections and
        closes each as it comes back, so under sustained load searches paid for new server
        processes and their session set-up (32 searchers on a pool of 5 + 10: 199 connections
        opened for 400 searches, 35-44 searches/s against 57-63 bounded; docs/benchmarks.md).
        The query's embedding is made before, outside the bound.
        """
        async with self._statements or contextlib.nullcontext():
            return await on_live_connection(self._engine, run, run, what="search", log=logger)

    async def _search_layers(
        self,
        repository: SearchRepository,
        user_id: uuid.UUID,
        requested: Sequence[Layer],
        run: Callable[[tuple[Layer, ...], tuple[Layer, ...]], Awaitable[SearchFound]],
    ) -> list[ScoredRow]:
        """``run(layers, watch)``: the search of the requested layers that may hold rows of
        the user, watching the others.

        Planning a layer's lists costs 0.3-0.5 ms even when the layer is empty (a user without
        knowledge items, a deployment without the pipeline), so the statement leaves out the
        layers not seen holding rows and reports, in its own snapshot, whether they hold any
        now (``watch``). If one does, the search runs again with it: a row written since, by
        any process, is found by this search, with no probe of its own before the statement.
        M0 is always searched. A layer seen holding rows is remembered (its rows rarely all
        go, and searching an empty layer is only slower). When no row comes back to carry the
        answer, one probe asks.
        """

        def searchable(held: frozenset[Layer]) -> tuple[Layer, ...]:
            return tuple(layer for layer in requested if layer == "m0" or layer in held)

        held = self._layers_held.get(user_id) or frozenset()
        searched = searchable(held)
        watched = tuple(layer for layer in requested if layer not in searched)
        found = await run(searched, watched)
        newly = found.held
        if watched and newly is None:
            newly = await repository.layers_with_rows(user_id, watched)
        if not newly:
            self.stats.layers_skipped += len(watched)
            return found.rows
        held = held | newly
        self._layers_held.put(user_id, held)
        searched = searchable(held)
        self.stats.layers_skipped += len(requested) - len(searched)
        return (await run(searched, ())).rows

    async def embed_query(self, query: str) -> tuple[float, ...] | None:
        """The query's vector, from the LRU when seen before; ``None`` without an embedder."""
        batcher = self.query_batcher
        if batcher is None:
            return None
        key = (batcher.embedder.model_name, query)
        cached = self.embeddings.get(key)
        if cached is not None:
            return cached
        vector = tuple(await batcher.embed(query))
        self.embeddings.put(key, vector)
        return vector

    async def _search(self, user_id: uuid.UUID, request: SearchRequest) -> list[SearchResult]:
        self.stats.searches += 1
        if not any(character.isalnum() for character in request.query):
            return []  # nothing to search for: no word, no number
        generation = self.results.generation(user_id)
        cached = self.results.get(user_id, request)
        if cached is not None:
            self.stats.result_cache_hits += 1
            return list(cached)
        vector = await self.embed_query(request.query) if "vector" in request.methods else None
        filters = SearchFilters(
            user_id=user_id,
            agent_id=request.agent_id,
            session_id=request.session_id,
            since=request.since,
            until=request.until,
            embedded_only=not request.include_unembedded,
            knowledge_namespace=request.knowledge_namespace,
            knowledge_filter=request.knowledge_filter,
        )
        # SearchRequest.build sets top_k whenever there is no budget.
        if request.max_tokens is not None:
            fetch = min(MAX_TOP_K, max(self.candidates, request.max_tokens // MIN_RESULT_TOKENS))
        else:
            fetch = cast(int, request.top_k)
        depth = {
            method: list_depth(
                self.candidates,
                unit=request.unit,
                fetch=fetch,
                budgeted=request.max_tokens is not None,
                method=method,
            )
            for method in ALL_METHODS
        }
        if request.unit == "item":
            fetch *= 2  # room for rows dropped as already covered

        async def search_on(connection: PoolProxiedConnection) -> list[ScoredRow]:
            repository = SearchRepository(connection, self.schema, self._monitor)
            await repository.tune(self.ef_search)
            terms = await self._read_terms(repository) if "text" in request.methods else None

            def run(layers: tuple[Layer, ...], watch: tuple[Layer, ...]) -> Awaitable[SearchFound]:
                return repository.search(
                    filters,
                    unit=request.unit,
                    query_text=request.query,
                    query_vector=vector,
                    layers=layers,
                    methods=request.methods,
                    candidates=depth["text"],
                    vector_candidates=depth["vector"],
                    rrf_k=self.rrf_k,
                    limit=fetch,
                    terms=terms,
                    term_budget=self.term_budget_rows or None,
                    explain=request.explain,
                    watch=watch,
                )

            return await self._search_layers(repository, user_id, request.layers, run)

        rows = await self._on_live_connection(search_on)
        results = tuple(fit(collapse(rows), request.top_k, request.max_tokens))
        self.results.put(user_id, request, results, generation)
        return list(results)


def collapse(rows: Sequence[ScoredRow]) -> list[SearchResult]:
    """Results in rank order, without rows whose messages are all in earlier results."""
    covered: set[uuid.UUID] = set()
    results: list[SearchResult] = []
    for row in rows:
        if row.message_ids and covered.issuperset(row.message_ids):
            continue
        covered.update(row.message_ids)
        results.append(
            SearchResult(
                layer=row.layer,
                id=row.id,
                content=row.content,
                score=row.score,
                created_at=row.occurred_at,
                session_id=row.session_id,
                agent_id=row.agent_id,
                message_ids=row.message_ids,
                token_count=(
                    row.token_count if row.token_count is not None else count_tokens(row.content)
                ),
                speaker=row.speaker,
                embedded=row.embedded,
                role=row.role,
                ranks=row.ranks,
            )
        )
    return results


def fit(
    results: Sequence[SearchResult], top_k: int | None, max_tokens: int | None
) -> list[SearchResult]:
    """The first ``top_k`` results; with ``max_tokens``, those that fit, best first (a result
    too big for what is left is passed over for smaller ones below it)."""
    chosen: list[SearchResult] = []
    spent = 0
    for result in results:
        if top_k is not None and len(chosen) >= top_k:
            break
        if max_tokens is not None:
            if spent + result.token_count > max_tokens:
                continue
            spent += result.token_count
        chosen.append(result)
    return chosen
