"""Alembic environment for memfuse's own schema.

Run by ``alembic upgrade head`` from the repository root (the URL comes from
``MEMFUSE_DATABASE_URL`` or ``POSTGRES_*``, else the embedded server starts) and by
:func:`memfuse.db.migrate.upgrade`, which hands in a connection already holding the migration
lock. Only objects in memfuse's schema are compared, so a host app's tables stay invisible.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, text

from memfuse.db.migrate import lock_statement, migration_options, read_recorded_dimension
from memfuse.db.models import VERSION_TABLE, Base
from memfuse.errors import DimensionMismatchError

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
options = migration_options(config)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Reflect only memfuse's schema, never the host app's."""
    if type_ == "schema":
        return name == options.schema
    return True


def is_downgrade() -> bool:
    """Downgrades skip the dimension check: removing a schema needs no matching model."""
    action = config.attributes.get("memfuse_action")  # set by memfuse.db.migrate
    if action is None and config.cmd_opts is not None:  # the alembic command line
        command = getattr(config.cmd_opts, "cmd", None)
        action = command[0].__name__ if command else None
    return action == "downgrade"


def run_migrations(connection: Connection) -> None:
    recorded = read_recorded_dimension(connection, options.schema)
    if recorded is not None and recorded != options.embedding_dimension and not is_downgrade():
        raise DimensionMismatchError(
            options.embedding_dimension, recorded, source="the configured embedding_dimension"
        )
    # The schema holds the version table, so it must exist before Alembic looks for it.
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{options.schema}"'))
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        version_table_schema=options.schema,
        include_schemas=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
        if not context.get_context().get_current_heads():
            # Downgraded to base: the version table is the last memfuse object left.
            connection.execute(text(f'DROP TABLE IF EXISTS "{options.schema}".{VERSION_TABLE}'))
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{options.schema}"'))


async def run_with_own_engine() -> None:
    from memfuse.config import load_settings
    from memfuse.db.embedded import database_url_for
    from memfuse.db.engines import create_engine

    settings = load_settings()
    async with database_url_for(settings) as url:
        engine = create_engine(url, settings.pool)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(lock_statement(options.schema)))
                await connection.run_sync(run_migrations)
        finally:
            await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("memfuse migrations need a database connection; offline mode is unsupported")

given_connection = config.attributes.get("connection")
if given_connection is not None:
    run_migrations(given_connection)
else:
    asyncio.run(run_with_own_engine())
