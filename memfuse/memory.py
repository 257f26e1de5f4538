"""The facade: ``MemFuse`` starts everything, ``Memory`` is one user's session.

```python
async with MemFuse() as mf:
    memory = await mf.init(user="alice", agent="assistant", session="trip-planning")
    ids = await memory.add([{"role": "user", "content": "I'm flying to Lisbon on May 3rd."}])
    await mf.flush()
```
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

from dependency_injector import providers

from memfuse.buffer import WriteBuffer
from memfuse.config import Settings, load_settings
from memfuse.container import Container, resolve, start, stop
from memfuse.db import migrate
from memfuse.db.engines import warm_up
from memfuse.db.errors import database_error
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.errors import ClosedError, ConfigurationError, NotFoundError, ValidationError
from memfuse.layers.pipeline import LayerPipeline
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.operations.export import metrics_json, prometheus_text
from memfuse.operations.health import DEFAULT_MAX_QUEUE_DEPTH, check_health
from memfuse.operations.telemetry import span
from memfuse.retrieval.service import RetrievalService, SearchRequest
from memfuse.services.api_keys import ApiKeyService
from memfuse.services.knowledge import KnowledgeService
from memfuse.services.listing import ListingService
from memfuse.services.messages import MessageService
from memfuse.services.queue import EmbeddingQueueService
from memfuse.services.tenancy import TenancyService
from memfuse.types import (
    BufferStats,
    EpisodeRow,
    FactRow,
    HealthReport,
    KnowledgeRow,
    Layer,
    MemoryScope,
    MessageRow,
    Method,
    Order,
    RetrievalStats,
    SearchResult,
    TaskState,
    Unit,
    WorkerStats,
)
from memfuse.validation import (
    check_flag,
    check_namespace,
    check_page,
    check_value_filter,
    parse_message_id,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

P = ParamSpec("P")
R = TypeVar("R")


def _database_call(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """Report an unreachable database as :class:`DatabaseUnavailableError` (the masked URL
    included), whatever driver error it surfaced as; every other error passes unchanged."""

    @functools.wraps(method)
    async def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except Exception as error:
            translated = database_error(error, self._database_url)
            if translated is not None:
                raise translated from error
            raise

    return call


def _memory_call(
    method: Callable[Concatenate[Memory, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Memory, P], Coroutine[Any, Any, R]]:
    """A ``Memory`` method: refused once its ``MemFuse`` is closed (or before it started), and
    an unreachable database reported as :class:`DatabaseUnavailableError`."""

    @functools.wraps(method)
    async def call(self: Memory, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._memfuse._check_open()
        return await method(self, *args, **kwargs)

    return _database_call(call)


@dataclass(frozen=True, slots=True)
class _Started:
    """What ``start()`` resolves from the container; none of it exists before."""

    tenancy: TenancyService
    messages: MessageService
    listing: ListingService
    knowledge: KnowledgeService
    api_keys: ApiKeyService
    queue: EmbeddingQueueService
    retrieval: RetrievalService
    pipeline: LayerPipeline
    buffer: WriteBuffer[Any, Any] | None
    worker: EmbeddingWorker | None


class MemFuse:
    """Long-term memory on PostgreSQL: owns the container, the buffer and the pipeline.

    Without ``database_url`` (and none in the environment) an embedded PostgreSQL starts.
    Keyword ``overrides`` take any :class:`~memfuse.config.Settings` field; or pass a whole
    ``settings``. A host app may pass its own ``container`` (for example with its engine in
    ``host_engine``, or test doubles overriding providers).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        container: Container | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and (database_url is not None or overrides):
            raise ConfigurationError(
                "settings", "give settings or database_url/overrides, not both"
            )
        if settings is None:
            if database_url is not None:
                overrides["database_url"] = database_url
            settings = load_settings(**overrides)
        self.settings = settings
        self.container = container if container is not None else Container()
        self.container.settings.override(providers.Object(settings))
        self._started = False
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None
        self._running: _Started | None = None
        self._health_lock = asyncio.Lock()
        self._health_cache: dict[int, tuple[float, HealthReport]] = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @_database_call
    async def start(self) -> None:
        """Start the database (embedded if no URL), migrate or check the schema, start work."""
        if self._closed:
            raise ClosedError("this MemFuse was closed; create a new one")
        if self._started:
            return
        await start(self.container)
        self._started = True
        try:
            engine = await resolve(self.container.engine)
            if self.settings.auto_migrate:
                await migrate.upgrade(
                    engine, options=migrate.MigrationOptions.from_settings(self.settings)
                )
            else:
                await migrate.require_head(engine, self.settings.schema)
            if self.settings.pool_warmup:
                seconds = await warm_up(engine, self.settings.pool.pool_size)
                self.monitor.record("pool_warmup", seconds * 1000.0)
            running = _Started(
                tenancy=await resolve(self.container.tenancy_service),
                messages=await resolve(self.container.message_service),
                listing=await resolve(self.container.listing_service),
                knowledge=await resolve(self.container.knowledge_service),
                api_keys=await resolve(self.container.api_key_service),
                queue=await resolve(self.container.queue_service),
                retrieval=await resolve(self.container.retrieval_service),
                pipeline=await resolve(self.container.pipeline),
                buffer=await resolve(self.container.write_buffer),
                worker=await resolve(self.container.embedding_worker),
            )
            self._running = running
            if running.worker is not None:
                await running.worker.verify()
                running.worker.start()
            if self.settings.pipeline_auto:
                running.pipeline.start()
        except BaseException:
            await self.close()
            raise

    @property
    def _database_url(self) -> str | None:
        """For error messages (masked there); ``None`` for the embedded server."""
        return self.settings.database_url

    @property
    def monitor(self) -> PerformanceMonitor:
        monitor: PerformanceMonitor = self.container.monitor()
        return monitor

    @property
    def tenancy(self) -> TenancyService:
        """Users, agents and sessions by id: what a server or an admin tool manages."""
        return self._parts.tenancy

    @property
    def knowledge(self) -> KnowledgeService:
        """Knowledge items by user id (``Memory``'s knowledge methods call the same service)."""
        return self._parts.knowledge

    @property
    def api_keys(self) -> ApiKeyService:
        """Users' API keys for the REST server (hashes at rest, the clear key shown once)."""
        return self._parts.api_keys

    @_database_call
    async def session_memory(self, session_id: uuid.UUID) -> Memory:
        """The :class:`Memory` of an existing session given by id; :class:`NotFoundError` if
        there is none. Check the session's user before handing it to a caller."""
        self._check_open()
        return Memory(self, await self._parts.tenancy.scope_of_session(session_id))

    @_database_call
    async def search(
        self,
        user_id: uuid.UUID,
        query: str,
        top_k: int | None = None,
        *,
        max_tokens: int | None = None,
        layers: Sequence[Layer] | None = None,
        methods: Sequence[Method] | None = None,
        unit: Unit = "message",
        agent_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_unembedded: bool = True,
        knowledge_namespace: Sequence[str] | None = None,
        knowledge_filter: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> list[SearchResult]:
        """:meth:`Memory.query` for a user given by id, narrowed by agent and session ids
        rather than names (ids of another user match nothing). Knowledge items may be narrowed
        to a namespace prefix and to values matching ``knowledge_filter`` (field -> value or
        ``{"$gt": ...}``-style operators, as LangGraph's stores filter)."""
        self._check_open()
        request = SearchRequest.build(
            query,
            top_k=top_k,
            max_tokens=max_tokens,
            layers=layers,
            methods=methods,
            unit=unit,
            since=since,
            until=until,
            include_unembedded=include_unembedded,
            explain=explain,
        )
        request = replace(
            request,
            agent_id=agent_id,
            session_id=session_id,
            knowledge_namespace=check_namespace(knowledge_namespace, field="knowledge_namespace"),
            knowledge_filter=check_value_filter(knowledge_filter),
        )
        return await self._parts.retrieval.search(user_id, request)

    @_database_call
    async def init(self, user: str, agent: str | None = None, session: str | None = None) -> Memory:
        """The memory of ``user``'s ``session`` with ``agent``, created if missing.

        A missing agent is the user's default agent; a missing session is a new one.
        """
        scope = await self._parts.tenancy.resolve(user, agent, session)
        return Memory(self, scope)

    @_database_call
    async def flush(self) -> None:
        """Return once everything added so far is committed, processed into M1 and M2, and
        (with the in-process worker) embedded, open episodes and fact groups included: their
        held-back embeddings (``embed_delay``) are made due at once.

        Raises :class:`~memfuse.errors.PipelineError` if a session could not be processed;
        its messages stay in M0 and are retried. Rows whose embedding keeps failing wait in
        the queue (or the dead-letter table) and do not hold up ``flush``.
        """
        with span("memfuse.flush", {}):
            parts = self._parts
            if parts.buffer is not None:
                await parts.buffer.flush()
            await parts.pipeline.flush()
            await parts.queue.expedite_deferred()
            if parts.worker is not None:
                await parts.worker.drain()

    @_database_call
    async def analyze(self) -> None:
        """Refresh PostgreSQL's statistics of memfuse's tables (``ANALYZE``).

        Search reads which terms are common from them (docs/retrieval.md). Autovacuum refreshes
        them on its own after enough rows change; call this after a bulk load to search with
        fresh ones at once.
        """
        await self._parts.retrieval.analyze()

    @_database_call
    async def health(
        self, *, max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH, max_age: float | None = None
    ) -> HealthReport:
        """Database, pgvector, schema revision, vector dimension, queue, dead letters and
        pipeline failures, one check each (``report.ok``, ``report.to_dict()`` for an
        endpoint). Never raises for a failing check.

        A report at most ``max_age`` seconds old (default: the ``health_cache_seconds``
        setting, 0: always fresh) is returned again instead of checking anew; concurrent
        callers share one check. Each check run is timed as the monitor's ``health_check``."""
        self._parts  # noqa: B018  (refused unless started and open)
        if (
            not isinstance(max_queue_depth, int)
            or isinstance(max_queue_depth, bool)
            or max_queue_depth < 0
        ):
            raise ValidationError(
                f"must be a whole number, 0 or more, got {max_queue_depth!r}",
                field="max_queue_depth",
            )
        age = self.settings.health_cache_seconds if max_age is None else max_age
        if isinstance(age, bool) or not isinstance(age, int | float) or not age >= 0:
            raise ValidationError(f"must be seconds, 0 or more, got {age!r}", field="max_age")
        async with self._health_lock:
            cached = self._health_cache.get(max_queue_depth)
            if cached is not None and time.monotonic() - cached[0] <= age:
                return cached[1]
            with self.monitor.track_operation("health_check"):
                report = await check_health(
                    await resolve(self.container.engine),
                    schema=self.settings.schema,
                    embedder=await resolve(self.container.embedder),
                    max_queue_depth=max_queue_depth,
                    tasks=self.task_states(),
                )
            self._health_cache[max_queue_depth] = (time.monotonic(), report)
            return report

    def task_states(self) -> list[TaskState]:
        """Each background task of this instance: the write buffer's flusher, the pipeline's
        runner, the embedding worker's loops and its LISTEN connection."""
        parts = self._parts
        states: list[TaskState] = []
        if parts.buffer is not None:
            states.extend(parts.buffer.task_states())
        if self.settings.pipeline_auto:
            states.extend(parts.pipeline.task_states())
        if parts.worker is not None:
            states.extend(parts.worker.task_states())
        return states

    @_database_call
    async def requeue_dead_letters(self, table: str | None = None) -> int:
        """Give rows whose embedding kept failing (of ``table``: "messages", "episodes" or
        "facts"; or all) a fresh start in the queue; returns how many. Fix the cause first."""
        return await self._parts.queue.requeue_dead_letters(table)

    def buffer_stats(self) -> BufferStats | None:
        """The write buffer's counters since start (``None`` when the buffer is off)."""
        buffer = self._parts.buffer
        return None if buffer is None else replace(buffer.stats, batches=dict(buffer.stats.batches))

    def worker_stats(self) -> WorkerStats | None:
        """The in-process embedding worker's counters (``None`` without one)."""
        worker = self._parts.worker
        if worker is None:
            return None
        return replace(worker.stats, batch_sizes=list(worker.stats.batch_sizes))

    def search_stats(self) -> RetrievalStats:
        """Searches served since start, and how many the result cache answered."""
        retrieval = self._parts.retrieval
        batcher = retrieval.query_batcher
        return replace(
            retrieval.stats,
            query_embedding_cache_hits=retrieval.embeddings.hits,
            queries_embedded=0 if batcher is None else batcher.queries,
            query_model_calls=0 if batcher is None else batcher.calls,
        )

    @_database_call
    async def metrics(self) -> dict[str, Any]:
        """The monitor (timings, gauges, counters) and the pools, as JSON-able builtins."""
        await self._refresh_gauges()
        return metrics_json(self.monitor, self.container.engine_registry().stats())

    @_database_call
    async def metrics_text(self) -> str:
        """The same in Prometheus' text format (needs the ``metrics`` extra)."""
        await self._refresh_gauges()
        return prometheus_text(
            self.monitor, self.container.engine_registry().stats(), self.task_states()
        )

    async def _refresh_gauges(self) -> None:
        worker = self._parts.worker
        if worker is not None:
            await worker.refresh_gauges()

    @property
    def parallel(self) -> bool:
        """Whether M1 and M2 run in parallel (else one after the other)."""
        return self._parts.pipeline.parallel

    def set_parallel(self, parallel: bool) -> None:
        self._parts.pipeline.set_parallel(check_flag(parallel, field="parallel"))

    async def close(self) -> None:
        """Commit buffered writes, stop background work, release the database.

        Idempotent and safe to cancel: the shutdown runs once, in a task of its own, which a
        cancelled ``close()`` does not stop; a second ``close()`` waits for the same
        shutdown. Every ``add()`` still queued gets its ids or :class:`ClosedError`.
        """
        if self._shutdown is None:
            self._closed = True
            self._shutdown = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._shutdown)

    async def _stop(self) -> None:
        if self._started:
            await stop(self.container)

    @property
    def _parts(self) -> _Started:
        """The started parts; :class:`ClosedError` before ``start()`` or after ``close()``."""
        self._check_open()
        if self._running is None:
            raise ClosedError("this MemFuse is not started: use `async with MemFuse()` or start()")
        return self._running

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this MemFuse is closed")
        if not self._started:
            raise ClosedError("this MemFuse is not started: use `async with MemFuse()` or start()")


class Memory:
    """One user's memory seen from one session; every call is bound to that user.

    Every method is refused with :class:`~memfuse.errors.ClosedError` once the ``MemFuse``
    it came from is closed.
    """

    def __init__(self, memfuse: MemFuse, scope: MemoryScope) -> None:
        self._memfuse = memfuse
        self.scope = scope

    @property
    def _database_url(self) -> str | None:
        return self._memfuse._database_url

    @property
    def _parts(self) -> _Started:
        return self._memfuse._parts

    @property
    def user(self) -> str:
        return self.scope.user

    @property
    def agent(self) -> str:
        return self.scope.agent

    @property
    def session(self) -> str:
        return self.scope.session

    def __repr__(self) -> str:
        return f"Memory(user={self.user!r}, agent={self.agent!r}, session={self.session!r})"

    @_memory_call
    async def add(self, messages: Sequence[Mapping[str, Any]]) -> list[uuid.UUID]:
        """Store messages in this session, atomically; returns their ids once committed.

        Each message is a dict with ``role`` and ``content``, and optionally ``id`` (a retry
        with the same ids adds nothing twice), ``created_at``, ``name`` (or ``speaker``) and
        ``metadata``. One bad message rejects the call with a
        :class:`~memfuse.errors.ValidationError` and nothing is written.
        """
        service = self._parts.messages
        monitor = self._memfuse.monitor
        with self._span("memfuse.add") as current, monitor.track_operation("m0_operation"):
            inputs = service.validate(messages)
            if current is not None:
                current.set_attribute("memfuse.messages", len(inputs))
            return await service.add(self.scope, inputs)

    @_memory_call
    async def query(
        self,
        query: str,
        top_k: int | None = None,
        *,
        max_tokens: int | None = None,
        layers: Sequence[Layer] | None = None,
        methods: Sequence[Method] | None = None,
        unit: Unit = "message",
        session: str | None = None,
        agent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_unembedded: bool = True,
        explain: bool = False,
    ) -> list[SearchResult]:
        """Search this user's memory (all sessions unless ``session`` names one).

        ``top_k`` results (5 by default), or with ``max_tokens`` as many as fit that budget.
        ``layers`` ("m0", "m1", "m2", "knowledge") and ``methods`` ("vector", "text") choose the
        lists that are fused; ``unit`` "message" returns messages ranked by all of them (and
        knowledge items, which have no messages), "item" the rows of each layer.
        ``since``/``until`` bound when things were said. Rows not embedded yet are found by full
        text unless ``include_unembedded`` is false. Knowledge belongs to the user: ``agent``
        and ``session`` do not narrow it. ``explain`` fills each result's ``ranks``: its rank in
        every list that ranked it, the answer to "why did it return this?".
        """
        with self._span("memfuse.query") as current:
            request = SearchRequest.build(
                query,
                top_k=top_k,
                max_tokens=max_tokens,
                layers=layers,
                methods=methods,
                unit=unit,
                since=since,
                until=until,
                include_unembedded=include_unembedded,
                explain=explain,
            )
            if current is not None:
                current.set_attributes(_query_attributes(request, agent, session))
            narrowed = await self._parts.tenancy.find_ids(
                self.scope.user_id, agent=agent, session=session
            )
            results: list[SearchResult] = []
            if narrowed is not None:  # else a named agent or session does not exist
                request = replace(
                    request, agent_id=narrowed.agent_id, session_id=narrowed.session_id
                )
                results = await self._parts.retrieval.search(self.scope.user_id, request)
            if current is not None:
                current.set_attribute("memfuse.results", len(results))
            return results

    def _span(self, name: str) -> AbstractContextManager[Span | None]:
        """A span naming this memory's session by its id (names may be personal data)."""
        return span(name, {"memfuse.session_id": str(self.scope.session_id)})

    @_memory_call
    async def get_message(self, message_id: uuid.UUID | str) -> MessageRow | None:
        """The message with this id, if it is this user's."""
        return await self._parts.messages.get(self.scope, parse_message_id(message_id))

    @_memory_call
    async def list_messages(
        self,
        *,
        limit: int = 20,
        offset: int = 0,
        order: Order = "desc",
        all_sessions: bool = False,
    ) -> list[MessageRow]:
        """Messages of this session (or all of the user's), newest first by default."""
        page = check_page(limit, offset, order)
        return await self._parts.messages.list(
            self.scope, page, all_sessions=check_flag(all_sessions, field="all_sessions")
        )

    @_memory_call
    async def update_message(
        self,
        message_id: uuid.UUID | str,
        *,
        content: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MessageRow:
        """Change a message's content or metadata; M1/M2 of its session are rebuilt."""
        return await self._parts.messages.update(
            self.scope, parse_message_id(message_id), content=content, metadata=metadata
        )

    @_memory_call
    async def delete_message(self, message_id: uuid.UUID | str) -> None:
        """Delete a message; M1/M2 of its session are rebuilt without it."""
        await self._parts.messages.delete(self.scope, parse_message_id(message_id))

    @_memory_call
    async def list_episodes(
        self,
        *,
        limit: int = 20,
        offset: int = 0,
        order: Order = "desc",
        all_sessions: bool = False,
    ) -> list[EpisodeRow]:
        """M1 episodes of this session (or all of the user's), newest first by default."""
        page = check_page(limit, offset, order)
        return await self._parts.listing.episodes(
            self.scope, page, all_sessions=check_flag(all_sessions, field="all_sessions")
        )

    @_memory_call
    async def list_facts(
        self,
        *,
        limit: int = 20,
        offset: int = 0,
        order: Order = "desc",
        all_sessions: bool = False,
        include_superseded: bool = False,
    ) -> list[FactRow]:
        """M2 facts from this session (or all of the user's); live ones unless asked."""
        page = check_page(limit, offset, order)
        return await self._parts.listing.facts(
            self.scope,
            page,
            all_sessions=check_flag(all_sessions, field="all_sessions"),
            include_superseded=check_flag(include_superseded, field="include_superseded"),
        )

    @_memory_call
    async def add_knowledge(self, items: Sequence[str | Mapping[str, Any]]) -> list[KnowledgeRow]:
        """Store knowledge items of this user (not of a session), atomically.

        Each item is a text, or a dict with ``content`` and optionally ``namespace`` (a list of
        labels), ``key`` (an item stored under the same namespace and key is replaced),
        ``value`` (a JSON object kept as given), ``metadata`` and ``ttl_seconds`` (hidden once
        expired). Items are embedded like messages and found by :meth:`query` as the
        ``"knowledge"`` layer. One bad item rejects the call and nothing is written.
        """
        return await self._parts.knowledge.add(self.scope.user_id, items)

    @_memory_call
    async def get_knowledge(self, item_id: uuid.UUID | str) -> KnowledgeRow | None:
        """The knowledge item with this id, if it is this user's and not expired."""
        return await self._parts.knowledge.get(
            self.scope.user_id, parse_message_id(item_id, field="item_id")
        )

    @_memory_call
    async def list_knowledge(
        self,
        *,
        limit: int = 20,
        offset: int = 0,
        order: Order = "desc",
        namespace_prefix: Sequence[str] | None = None,
    ) -> list[KnowledgeRow]:
        """This user's live knowledge items, newest first by default."""
        page = check_page(limit, offset, order)
        return await self._parts.knowledge.list_live(
            self.scope.user_id, page, namespace_prefix=namespace_prefix
        )

    @_memory_call
    async def update_knowledge(
        self,
        item_id: uuid.UUID | str,
        *,
        content: str | None = None,
        value: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: float | None = None,
    ) -> KnowledgeRow:
        """Change a knowledge item; a new content is embedded again."""
        return await self._parts.knowledge.update(
            self.scope.user_id,
            parse_message_id(item_id, field="item_id"),
            content=content,
            value=value,
            metadata=metadata,
            ttl_seconds=ttl_seconds,
        )

    @_memory_call
    async def delete_knowledge(self, item_id: uuid.UUID | str) -> None:
        """Delete a knowledge item of this user; :class:`NotFoundError` if there is none."""
        parsed = parse_message_id(item_id, field="item_id")
        if not await self._parts.knowledge.delete(self.scope.user_id, [parsed]):
            raise NotFoundError(f"knowledge item {parsed} does not exist")

    @_memory_call
    async def delete_session(self) -> None:
        """Delete this session with its messages, episodes and facts."""
        await self._parts.tenancy.delete_session(self.scope)

    @_memory_call
    async def delete_user(self) -> None:
        """Delete this user and everything stored for them."""
        await self._parts.tenancy.delete_user(self.scope)


def _query_attributes(
    request: SearchRequest, agent: str | None, session: str | None
) -> dict[str, AttributeValue]:
    """The query's options, without its text or the names it filters on."""
    attributes: dict[str, AttributeValue] = {
        "memfuse.unit": request.unit,
        "memfuse.layers": request.layers,
        "memfuse.methods": request.methods,
        "memfuse.filter.agent": agent is not None,
        "memfuse.filter.session": session is not None,
        "memfuse.filter.time": request.since is not None or request.until is not None,
    }
    if request.top_k is not None:
        attributes["memfuse.top_k"] = request.top_k
    if request.max_tokens is not None:
        attributes["memfuse.max_tokens"] = request.max_tokens
    return attributes
