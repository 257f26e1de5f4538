"""Run the host's Alembic migrations on an engine it may share with memfuse.

The pattern mirrors :mod:`memfuse.db.migrate`: an Alembic ``Config`` built in code (no
``alembic.ini``), and a connection handed to ``env.py`` through ``config.attributes`` so the
migration runs inside the caller's transaction on an async engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.db import migrate as memfuse_migrate

MIGRATIONS_DIRECTORY = Path(__file__).resolve().parent / "migrations"


def context_options() -> dict[str, Any]:
    """What the host's ``env.py`` passes to ``context.configure`` besides connection and metadata.

    The host compares every schema (``include_schemas=True``), so it must hide memfuse's
    objects with memfuse's ``include_object`` hook; otherwise autogenerate would propose to drop
    memfuse's tables.
    """
    return {"include_schemas": True, "include_object": memfuse_migrate.include_object}


def alembic_config() -> Config:
    """An Alembic ``Config`` for the host's migrations, independent of any ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the host's tables to ``revision`` in one transaction."""
    config = alembic_config()
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, config, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The host's revision, read from the ordinary ``public.alembic_version`` table."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
