"""The container: resources start and stop, providers can be overridden, host engines adopted."""

from __future__ import annotations

import pytest
from dependency_injector import providers
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from memfuse.config import Settings
from memfuse.config.urls import normalize_url
from memfuse.container import Container
from memfuse.db import migrate
from memfuse.db.engines import EngineRegistry
from memfuse.errors import ValidationError
from memfuse.monitor import PerformanceMonitor
from memfuse.services import TenancyService
from memfuse.types import MemoryScope


def isolated_container(database_url: str) -> Container:
    """A container with its own settings, monitor and registry, as a test wants it.

    No embedder: these tests never embed, and so run without the ``local`` extra too.
    """
    container = Container()
    settings = Settings(database_url=database_url, embedder="none")
    container.settings.override(providers.Object(settings))
    monitor = PerformanceMonitor()
    container.monitor.override(providers.Object(monitor))
    container.engine_registry.override(providers.Object(EngineRegistry(monitor)))
    return container


async def test_resources_start_serve_and_shut_down(database_url: str) -> None:
    container = isolated_container(database_url)
    await container.init_resources()
    engine = await container.engine()
    await migrate.upgrade(engine)
    tenancy = await container.tenancy_service()
    scope = await tenancy.resolve("alice", "assistant", "trip")
    again = await tenancy.resolve("alice", "assistant", "trip")
    assert scope == again
    registry = container.engine_registry()
    assert len(registry) == 1
    await container.shutdown_resources()
    assert len(registry) == 0, "the engine is disposed on shutdown"


async def test_a_service_provider_can_be_overridden(database_url: str) -> None:
    calls: list[str] = []

    class RecordingTenancy(TenancyService):
        async def resolve(
            self, user: str, agent: str | None = None, session: str | None = None
        ) -> MemoryScope:
            calls.append(user)
            return await super().resolve(user, agent, session)

    container = isolated_container(database_url)
    container.tenancy_service.override(
        providers.Singleton(
            RecordingTenancy,
            session_factory=container.session_factory,
            monitor=container.monitor,
            after_commit=container.after_commit,
        )
    )
    await container.init_resources()
    await migrate.upgrade(await container.engine())
    tenancy = await container.tenancy_service()
    assert isinstance(tenancy, RecordingTenancy)
    await tenancy.resolve("bob")
    assert calls == ["bob"]
    await container.shutdown_resources()


async def test_host_engine_is_used_and_left_open(database_url: str) -> None:
    host_engine = create_async_engine(normalize_url(database_url))
    container = isolated_container(database_url)
    container.host_engine.override(providers.Object(host_engine))
    await container.init_resources()
    engine: AsyncEngine = await container.engine()
    assert engine.sync_engine.pool is host_engine.sync_engine.pool
    await container.shutdown_resources()
    assert len(container.engine_registry()) == 0, "hooks removed on shutdown"
    async with host_engine.connect() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    await host_engine.dispose()


async def test_configured_schema_is_used_by_services(database_url: str) -> None:
    container = Container()
    container.settings.override(
        providers.Object(
            Settings(database_url=database_url, schema="tenant_memory", embedder="none")
        )
    )
    container.engine_registry.override(providers.Object(EngineRegistry()))
    await container.init_resources()
    engine = await container.engine()
    await migrate.upgrade(engine, options=migrate.MigrationOptions(schema="tenant_memory"))
    scope = await (await container.tenancy_service()).resolve("carol")
    async with engine.connect() as connection:
        found = (
            await connection.execute(
                text("SELECT name FROM tenant_memory.users WHERE id = :id"), {"id": scope.user_id}
            )
        ).scalar_one()
    assert found == "carol"
    await container.shutdown_resources()


@pytest.mark.parametrize(
    ("user", "agent", "session"),
    [("", None, None), ("a\x00b", None, None), ("x" * 256, None, None), ("ok", " ", None)],
)
async def test_bad_names_are_rejected_before_any_write(
    database_url: str, user: str, agent: str | None, session: str | None
) -> None:
    container = isolated_container(database_url)
    await container.init_resources()
    engine = await container.engine()
    await migrate.upgrade(engine)
    with pytest.raises(ValidationError):
        await (await container.tenancy_service()).resolve(user, agent, session)
    async with engine.connect() as connection:
        users = (await connection.execute(text("SELECT count(*) FROM memfuse.users"))).scalar_one()
    assert users == 0
    await container.shutdown_resources()


async def test_users_never_share_agents_or_sessions(database_url: str) -> None:
    container = isolated_container(database_url)
    await container.init_resources()
    await migrate.upgrade(await container.engine())
    tenancy = await container.tenancy_service()
    alice = await tenancy.resolve("alice", "assistant", "shared-name")
    bob = await tenancy.resolve("bob", "assistant", "shared-name")
    assert alice.user_id != bob.user_id
    assert alice.agent_id != bob.agent_id
    assert alice.session_id != bob.session_id
    await container.shutdown_resources()


def test_monitor_follows_the_settings() -> None:
    container = Container()
    container.settings.override(
        providers.Object(Settings(monitor_enabled=False, monitor_history_size=5))
    )
    monitor = container.monitor()
    try:
        assert monitor.enabled is False
        assert monitor.history_size == 5
    finally:
        monitor.enable()
        monitor.set_history_size(1000)


async def test_the_fact_extractor_follows_the_settings(database_url: str) -> None:
    from memfuse.layers.extractors import OfflineFactExtractor
    from memfuse.layers.extractors.llm import LLMFactExtractor

    for name, expected in (("offline", OfflineFactExtractor), ("llm", LLMFactExtractor)):
        container = isolated_container(database_url)
        settings = Settings(
            database_url=database_url,
            fact_extractor=name,
            llm_base_url="http://127.0.0.1:9/v1",
            llm_model="local-model",
            embedder="none",
        )
        container.settings.override(providers.Object(settings))
        await container.init_resources()
        try:
            assert isinstance(await container.fact_extractor(), expected)
            pipeline = await container.pipeline()
            assert set(pipeline.processors) == {"m1", "m2"}
        finally:
            await container.shutdown_resources()


async def test_without_a_fact_extractor_the_pipeline_runs_m1_only(database_url: str) -> None:
    container = isolated_container(database_url)
    settings = Settings(
        database_url=database_url, fact_extractor="none", buffer_enabled=False, embedder="none"
    )
    container.settings.override(providers.Object(settings))
    await container.init_resources()
    try:
        assert await container.fact_extractor() is None
        assert await container.write_buffer() is None
        assert set((await container.pipeline()).processors) == {"m1"}
    finally:
        await container.shutdown_resources()


async def test_a_service_needs_neither_the_pipeline_nor_the_worker_built(
    database_url: str,
) -> None:
    """Resolving the tenancy or message service builds the engine and the after-commit hook,
    not the pipeline, the embedder or the worker (the model would load): those sign up with
    the hook when the container starts them."""
    container = Container()
    settings = Settings(database_url=database_url, embedder="local", pipeline_auto=False)
    container.settings.override(providers.Object(settings))
    monitor = PerformanceMonitor()
    container.monitor.override(providers.Object(monitor))
    container.engine_registry.override(providers.Object(EngineRegistry(monitor)))
    await migrate.upgrade(await container.engine())
    tenancy = await container.tenancy_service()
    messages = await container.message_service()
    scope = await tenancy.resolve("alice", session="chat")
    inputs = messages.validate([{"role": "user", "content": "hello"}])
    assert len(await messages.add(scope, inputs)) == 1
    for resource in (container.pipeline, container.embedder, container.embedding_worker):
        assert not resource.initialized, resource
    await container.shutdown_resources()
