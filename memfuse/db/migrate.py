"""Run memfuse's Alembic migrations from Python or the CLI, serialized by an advisory lock.

The migration scripts ship inside the wheel (``memfuse/migrations``); in a source checkout they
are the top-level ``migrations/`` folder. Both ``alembic upgrade head`` from the repository root
and :func:`upgrade` go through the same ``env.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from memfuse.config import DEFAULT_EMBEDDING_DIMENSION, DEFAULT_SCHEMA, Settings, load_settings
from memfuse.db.models import VERSION_TABLE
from memfuse.errors import DimensionMismatchError, SchemaError

DIMENSION_KEY = "embedding_dimension"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    """What a migration script needs to know: where to create objects and the vector size."""

    schema: str = DEFAULT_SCHEMA
    embedding_dimension: int = DEFAULT_EMBEDDING_DIMENSION

    @classmethod
    def from_settings(cls, settings: Settings) -> MigrationOptions:
        return cls(settings.schema, settings.embedding_dimension)


def migrations_directory() -> Path:
    """The folder holding ``env.py``: inside the installed package, or the checkout's root."""
    for candidate in (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(f"memfuse migrations not found next to {_PACKAGE_DIR}")


def alembic_ini_path() -> Path:
    """The ``alembic.ini`` beside :func:`migrations_directory`, for ``alembic -c``.

    ``memfuse/alembic.ini`` in a wheel, the checkout's root ``alembic.ini`` in an editable
    install; ``memfuse db ini-path`` prints it.
    """
    ini = migrations_directory().parent / "alembic.ini"
    if not ini.is_file():
        raise SchemaError(f"alembic.ini not found next to {migrations_directory()}")
    return ini


def alembic_config(options: MigrationOptions | None = None) -> Config:
    """An Alembic ``Config`` for memfuse's migrations, independent of any ``alembic.ini``.

    Without ``options`` the migrations take schema and dimension from :func:`load_settings`.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if options is not None:
        config.attributes["memfuse_options"] = options
    return config


def head_revision() -> str:
    """The newest revision this version of memfuse ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("memfuse migrations have no head revision")
    return head


async def require_head(engine: AsyncEngine, schema: str = DEFAULT_SCHEMA) -> None:
    """Raise :class:`SchemaError` unless the schema is at :func:`head_revision`."""
    current = await current_revision(engine, schema)
    head = head_revision()
    if current != head:
        raise SchemaError(
            f"memfuse schema {schema!r} is at revision {current or '(none)'}, this version "
            f"needs {head}: run `memfuse db upgrade` (or `alembic upgrade head`)"
        )


def migration_options(config: Config) -> MigrationOptions:
    """The options the caller put on ``config``; the environment's settings otherwise."""
    options = config.attributes.get("memfuse_options")
    if isinstance(options, MigrationOptions):
        return options
    return MigrationOptions.from_settings(load_settings())


def lock_statement(schema: str) -> str:
    """SQL taking the transaction-scoped advisory lock that serializes migrations of a schema."""
    return f"SELECT pg_advisory_xact_lock(hashtext('memfuse.migrate.{schema}'))"


async def upgrade(
    engine: AsyncEngine, revision: str = "head", options: MigrationOptions | None = None
) -> None:
    """Upgrade the schema to ``revision`` in one transaction, one process at a time."""
    await _run(engine, "upgrade", revision, options)


async def downgrade(
    engine: AsyncEngine, revision: str, options: MigrationOptions | None = None
) -> None:
    """Downgrade to ``revision``; ``"base"`` removes memfuse's schema and everything in it.

    The ``vector`` extension stays installed: other applications in the database may use it.
    """
    await _run(engine, "downgrade", revision, options)


async def current_revision(engine: AsyncEngine, schema: str = DEFAULT_SCHEMA) -> str | None:
    """The revision the database is at, or ``None`` when memfuse was never installed."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision, schema)


async def recorded_dimension(
    connection: AsyncConnection, schema: str = DEFAULT_SCHEMA
) -> int | None:
    """The embedding dimension the schema was created with, or ``None`` before migrations."""
    return await connection.run_sync(read_recorded_dimension, schema)


async def check_embedding_dimension(
    engine: AsyncEngine, expected: int, *, schema: str = DEFAULT_SCHEMA, source: str
) -> None:
    """Refuse to run when ``source`` (an embedder, a setting) disagrees with the schema."""
    async with engine.connect() as connection:
        actual = await recorded_dimension(connection, schema)
    if actual is None:
        raise SchemaError(
            f"schema {schema!r} is not migrated; "
            "run `memfuse db upgrade` (or `alembic upgrade head`)"
        )
    if actual != expected:
        raise DimensionMismatchError(expected, actual, source=source)


def read_recorded_dimension(connection: Connection, schema: str) -> int | None:
    """Synchronous twin of :func:`recorded_dimension`, for use inside migrations."""
    exists = connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"{schema}.schema_info"}
    ).scalar_one()
    if not exists:
        return None
    value = connection.execute(
        text(f'SELECT value FROM "{schema}".schema_info WHERE key = :key'), {"key": DIMENSION_KEY}
    ).scalar_one_or_none()
    return None if value is None else int(value)


def _current_revision(connection: Connection, schema: str) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    return context.get_current_revision()


async def _run(
    engine: AsyncEngine, action: str, revision: str, options: MigrationOptions | None
) -> None:
    config = alembic_config(options)
    config.attributes["memfuse_action"] = action
    schema = migration_options(config).schema
    async with engine.begin() as connection:
        await connection.execute(text(lock_statement(schema)))
        await connection.run_sync(_run_command, config, action, revision)


def _run_command(connection: Connection, config: Config, action: str, revision: str) -> None:
    config.attributes["connection"] = connection
    runner: Any = getattr(command, action)
    runner(config, revision)


def make_include_object(schema: str = DEFAULT_SCHEMA) -> Any:
    """An Alembic ``include_object`` hook for a host app that hides memfuse's objects.

    Use it in the host's ``env.py`` (``context.configure(include_object=...)``) so the host's
    autogenerate never proposes to drop or alter memfuse's tables; with ``include_schemas=True``
    this matters, and it is harmless otherwise.
    """

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if type_ == "table":
            return getattr(obj, "schema", None) != schema and name != VERSION_TABLE
        table = getattr(obj, "table", None)
        return table is None or getattr(table, "schema", None) != schema

    return include_object


include_object = make_include_object()
"""The hook for memfuse's default schema name."""
