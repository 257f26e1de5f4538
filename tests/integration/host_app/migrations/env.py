"""Alembic environment of the host app: async-friendly, and blind to memfuse's schema.

:func:`host_app.migrate.upgrade` hands in a connection (from ``AsyncConnection.run_sync``)
through ``config.attributes["connection"]``; ``env.py`` then runs on it, inside the caller's
transaction. Without one (the ``alembic`` CLI), it opens its own async engine on
``HOST_APP_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from host_app.migrate import context_options
from host_app.models import Base
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, **context_options())
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    engine = create_async_engine(os.environ["HOST_APP_DATABASE_URL"])
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the host app's migrations need a database connection")

given_connection = config.attributes.get("connection")
if given_connection is not None:
    run_migrations(given_connection)
else:
    asyncio.run(run_with_own_engine())
