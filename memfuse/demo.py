"""The README's demo: migrate the database, create a user and session, show the monitor."""

from __future__ import annotations

import json
from collections.abc import Callable

from dependency_injector import providers

from memfuse.config import Settings
from memfuse.container import Container, resolve, start, stop
from memfuse.db import migrate


async def run_demo(settings: Settings, write: Callable[[str], None]) -> None:
    """Run the demo against ``settings``' database, writing what happens through ``write``."""
    container = Container()
    container.settings.override(providers.Object(settings))
    await start(container)
    try:
        engine = await resolve(container.engine)
        where = settings.masked_database_url or "the embedded PostgreSQL server"
        write(f"database: {where} (schema {settings.schema!r})")
        await migrate.upgrade(engine, options=migrate.MigrationOptions.from_settings(settings))
        revision = await migrate.current_revision(engine, settings.schema)
        write(f"migrated to revision {revision}")

        tenancy = await resolve(container.tenancy_service)
        scope = await tenancy.resolve("demo-user", "assistant", "demo-session")
        write(f"user {scope.user!r} = {scope.user_id}")
        write(f"agent {scope.agent!r} = {scope.agent_id}")
        write(f"session {scope.session!r} = {scope.session_id}")

        write("\nengines:")
        for stats in container.engine_registry().stats().values():
            write(json.dumps(stats.to_dict(), indent=2))
        write("\nperformance monitor:")
        write(container.monitor().report())
    finally:
        await stop(container)
