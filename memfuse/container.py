"""The dependency-injector container: settings, monitor, engines, sessions, repositories, services.

Resources (the engine, with the embedded server when no URL is set; the write buffer; the fact
extractor; the layer pipeline) start in ``await container.init_resources()`` and stop in
``await container.shutdown_resources()``, each before what it depends on. Tests and host apps
override any provider, e.g. ``container.settings.override(providers.Object(my_settings))``, or
hand in their own engine with ``container.host_engine.override(providers.Object(engine))``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, TypeVar, cast

from dependency_injector import containers, providers
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from memfuse.buffer import WriteBuffer
from memfuse.config import Settings, load_settings
from memfuse.db.embedded import database_url_for
from memfuse.db.engines import EngineRegistry, process_registry, schema_execution_options
from memfuse.db.errors import is_unavailable
from memfuse.embedding.embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.layers.extractors import FactExtractor
from memfuse.layers.m1 import EpisodePolicy, EpisodeProcessor
from memfuse.layers.m2 import FactProcessor
from memfuse.layers.pipeline import LayerPipeline
from memfuse.layers.processor import LayerProcessor
from memfuse.monitor.performance import PerformanceMonitor, process_monitor
from memfuse.retrieval.cache import ResultCache
from memfuse.retrieval.service import RetrievalService
from memfuse.services.api_keys import ApiKeyService
from memfuse.services.changes import AfterCommit
from memfuse.services.knowledge import KnowledgeService
from memfuse.services.listing import ListingService
from memfuse.services.messages import MessageBuffer, MessageService, MessageWriter
from memfuse.services.queue import EmbeddingQueueService
from memfuse.services.tenancy import TenancyService
from memfuse.types import SearchResult

T = TypeVar("T")


async def resolve(provider: providers.Provider[T]) -> T:
    """Await a provider that depends on an async resource; typed, unlike ``await provider()``."""
    value: object = provider()
    if inspect.isawaitable(value):
        value = await value
    return cast(T, value)


async def start(container: containers.Container) -> None:
    """Start the container's resources (engine, buffer, extractor, pipeline)."""
    pending = container.init_resources()
    if pending is not None:
        await pending


async def stop(container: containers.Container) -> None:
    """Stop the resources, dependents first: buffer and pipeline, then the engine and server."""
    pending = container.shutdown_resources()
    if pending is not None:
        await pending


async def engine_resource(
    settings: Settings,
    registry: EngineRegistry,
    host_engine: AsyncEngine | None,
    monitor: PerformanceMonitor,
) -> AsyncIterator[AsyncEngine]:
    """The shared engine for the configured database, bound to the configured schema.

    A host app's engine is adopted and left open; otherwise the registry's engine for the URL
    (or for the embedded server) is held and released on shutdown. ``monitor`` is taken so the
    monitor settings apply before the first statement runs.
    """
    del monitor
    options = schema_execution_options(settings.schema)
    if host_engine is not None:
        registry.adopt(host_engine)
        try:
            yield host_engine.execution_options(**options)
        finally:
            await registry.release(host_engine)
        return
    async with database_url_for(settings) as url:
        engine = registry.acquire(url, settings.pool)
        try:
            yield engine.execution_options(**options)
        finally:
            await registry.release(engine)


def configured_monitor(settings: Settings) -> PerformanceMonitor:
    """The process-wide monitor, switched on or off and sized as the settings say."""
    monitor = process_monitor()
    monitor.set_history_size(settings.monitor_history_size)
    if settings.monitor_enabled:
        monitor.enable()
    else:
        monitor.disable()
    return monitor


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit, as async code cannot lazy-load."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def fact_extractor_resource(settings: Settings) -> AsyncIterator[FactExtractor | None]:
    """The configured M2 extractor (``None`` when M2 is off); an LLM client closes at stop."""
    if settings.fact_extractor == "none":
        yield None
    elif settings.fact_extractor == "offline":
        from memfuse.layers.extractors.offline import OfflineFactExtractor

        yield OfflineFactExtractor()
    else:
        from memfuse.layers.extractors.llm import LLMFactExtractor

        assert settings.llm_base_url is not None and settings.llm_model is not None
        extractor = LLMFactExtractor(
            settings.llm_base_url,
            settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
            batch_size=settings.llm_batch_size,
        )
        try:
            yield extractor
        finally:
            await extractor.aclose()


async def pipeline_resource(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    monitor: PerformanceMonitor,
    extractor: FactExtractor | None,
    engine: AsyncEngine,
    cache: ResultCache[tuple[SearchResult, ...]],
    after_commit: AfterCommit,
) -> AsyncIterator[LayerPipeline]:
    """The M1/M2 pipeline, woken by every committed change; stopped before the engine it uses
    (hence ``engine``)."""
    del engine
    policy = EpisodePolicy(
        target_tokens=settings.episode_target_tokens,
        max_tokens=settings.episode_max_tokens,
        idle_gap=timedelta(seconds=settings.episode_idle_gap),
    )
    embed_delay = timedelta(seconds=settings.embed_delay)
    processors: list[LayerProcessor[Any, Any]] = [EpisodeProcessor(policy, embed_delay=embed_delay)]
    if extractor is not None:
        processors.append(FactProcessor(extractor, embed_delay=embed_delay))
    pipeline = LayerPipeline(
        session_factory,
        processors,
        monitor,
        parallel=settings.pipeline_parallel,
        concurrency=settings.pipeline_concurrency,
        batch_messages=settings.pipeline_batch_messages,
        poll_interval=settings.pipeline_poll_interval,
        pass_interval=settings.pipeline_pass_interval,
        on_stored=cache.invalidate,
    )
    after_commit.wake_also(pipeline.notify)
    try:
        yield pipeline
    finally:
        after_commit.stop_waking(pipeline.notify)
        await pipeline.close()


async def write_buffer_resource(
    settings: Settings,
    writer: MessageWriter,
    monitor: PerformanceMonitor,
    engine: AsyncEngine,
) -> AsyncIterator[MessageBuffer | None]:
    """The group-commit buffer (``None`` when disabled); flushed before the engine stops."""
    del engine
    if not settings.buffer_enabled:
        yield None
        return
    buffer: MessageBuffer = WriteBuffer(
        writer.write,
        size=lambda request: len(request.messages),
        tokens=lambda request: request.token_count,
        monitor=monitor,
        max_messages=settings.buffer_max_messages,
        max_tokens=settings.buffer_max_tokens,
        max_delay=settings.buffer_max_delay,
        max_pending=settings.buffer_max_pending,
        fail_together=is_unavailable,
    )
    try:
        yield buffer
    finally:
        await buffer.close()


def make_embedder(settings: Settings) -> Embedder | None:
    """The configured embedder, not loaded yet (``None`` when off)."""
    if settings.embedder == "none":
        return None
    if settings.embedder == "local":
        return LocalEmbedder(
            batch_size=settings.embedding_batch_size,
            batch_tokens=settings.embedding_batch_tokens,
            precision=settings.embedding_precision,
            pass_threads=settings.embedding_pass_threads,
        )
    assert settings.embedding_base_url is not None and settings.embedding_model is not None
    return OpenAIEmbedder(
        settings.embedding_base_url,
        settings.embedding_model,
        dimension=settings.embedding_dimension,
        api_key=settings.embedding_api_key,
        batch_size=settings.embedding_batch_size,
    )


async def embedder_resource(settings: Settings) -> AsyncIterator[Embedder | None]:
    """The configured embedder (``None`` when off), the local model loaded; closed at stop."""
    embedder = make_embedder(settings)
    if embedder is None:
        yield None
        return
    if isinstance(embedder, LocalEmbedder):
        await embedder.load()
    try:
        yield embedder
    finally:
        await embedder.aclose()


async def embedding_worker_resource(
    settings: Settings,
    engine: AsyncEngine,
    embedder: Embedder | None,
    monitor: PerformanceMonitor,
    cache: ResultCache[tuple[SearchResult, ...]],
    after_commit: AfterCommit,
) -> AsyncIterator[EmbeddingWorker | None]:
    """The in-process embedding worker (``None`` without an embedder or when disabled).

    It checks the embedder's dimension against the schema when started, not here: the
    schema may not be migrated yet when the container starts.
    """
    if embedder is None or not settings.worker_enabled:
        yield None
        return
    worker = EmbeddingWorker(
        engine,
        embedder,
        monitor,
        schema=settings.schema,
        batch_size=settings.worker_batch_size,
        concurrency=settings.worker_concurrency,
        poll_interval=settings.worker_poll_interval,
        max_attempts=settings.worker_max_attempts,
        lease_seconds=settings.worker_lease_seconds,
        chunk_size=settings.worker_chunk_size,
        on_written=cache.invalidate,
    )
    after_commit.wake_also(worker.notify)
    try:
        yield worker
    finally:
        after_commit.stop_waking(worker.notify)
        await worker.close()


def make_message_writer(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    monitor: PerformanceMonitor,
) -> MessageWriter:
    """The M0 writer; without an embedder (so no worker to index them) it indexes the words of
    the messages it writes itself."""
    return MessageWriter(session_factory, monitor, index_text=settings.embedder == "none")


def make_after_commit(cache: ResultCache[tuple[SearchResult, ...]]) -> AfterCommit:
    """After a user's memory changed: drop their cached results; the pipeline and the worker
    sign up to be woken when they start."""
    return AfterCommit(invalidate=cache.invalidate)


def make_result_cache(settings: Settings) -> ResultCache[tuple[SearchResult, ...]]:
    return ResultCache(settings.search_cache_size, settings.search_cache_ttl)


def make_retrieval_service(
    settings: Settings,
    engine: AsyncEngine,
    embedder: Embedder | None,
    monitor: PerformanceMonitor,
    cache: ResultCache[tuple[SearchResult, ...]],
) -> RetrievalService:
    return RetrievalService(
        engine,
        embedder,
        monitor,
        schema=settings.schema,
        candidates=settings.search_candidates,
        rrf_k=settings.search_rrf_k,
        ef_search=settings.search_ef_search,
        common_term_frequency=settings.search_common_term_frequency,
        common_term_rows=settings.search_common_term_rows,
        term_budget_rows=settings.search_term_budget_rows,
        result_cache=cache,
        embedding_cache_size=settings.query_embedding_cache_size,
    )


class Container(containers.DeclarativeContainer):
    """Wiring of memfuse's parts; every provider can be overridden."""

    settings = providers.Singleton(load_settings)
    monitor = providers.Singleton(configured_monitor, settings=settings)
    engine_registry = providers.Singleton(process_registry)
    host_engine: providers.Provider[AsyncEngine | None] = providers.Object(None)

    engine = providers.Resource(
        engine_resource,
        settings=settings,
        registry=engine_registry,
        host_engine=host_engine,
        monitor=monitor,
    )
    session_factory = providers.Singleton(session_factory, engine=engine)

    message_writer = providers.Singleton(
        make_message_writer, settings=settings, session_factory=session_factory, monitor=monitor
    )
    write_buffer = providers.Resource(
        write_buffer_resource,
        settings=settings,
        writer=message_writer,
        monitor=monitor,
        engine=engine,
    )
    fact_extractor = providers.Resource(fact_extractor_resource, settings=settings)
    result_cache = providers.Singleton(make_result_cache, settings=settings)
    after_commit = providers.Singleton(make_after_commit, cache=result_cache)
    pipeline = providers.Resource(
        pipeline_resource,
        cache=result_cache,
        settings=settings,
        session_factory=session_factory,
        monitor=monitor,
        extractor=fact_extractor,
        engine=engine,
        after_commit=after_commit,
    )
    embedder = providers.Resource(embedder_resource, settings=settings)
    embedding_worker = providers.Resource(
        embedding_worker_resource,
        settings=settings,
        engine=engine,
        embedder=embedder,
        monitor=monitor,
        cache=result_cache,
        after_commit=after_commit,
    )
    tenancy_service = providers.Singleton(
        TenancyService, session_factory=session_factory, monitor=monitor, after_commit=after_commit
    )
    message_service = providers.Singleton(
        MessageService,
        session_factory=session_factory,
        writer=message_writer,
        buffer=write_buffer,
        after_commit=after_commit,
        max_chars=settings.provided.max_message_chars,
    )
    listing_service = providers.Singleton(ListingService, session_factory=session_factory)
    api_key_service = providers.Singleton(ApiKeyService, session_factory=session_factory)
    knowledge_service = providers.Singleton(
        KnowledgeService,
        session_factory=session_factory,
        monitor=monitor,
        after_commit=after_commit,
        max_chars=settings.provided.max_message_chars,
    )
    queue_service = providers.Singleton(EmbeddingQueueService, session_factory=session_factory)
    retrieval_service = providers.Singleton(
        make_retrieval_service,
        settings=settings,
        engine=engine,
        embedder=embedder,
        monitor=monitor,
        cache=result_cache,
    )
