"""A host application and memfuse in one PostgreSQL database, each with its own migrations.

How a host app integrates memfuse (see ``host_app/``):

* The host keeps its own declarative ``Base``, its tables in ``public`` and its own Alembic
  environment with the ordinary ``alembic_version`` table. memfuse keeps its tables and its
  version table (``memfuse.memfuse_alembic_version``) in the ``memfuse`` schema.
* Both migrate on the same async engine: ``host_app.migrate.upgrade(engine)`` for the host,
  ``memfuse.db.migrate.upgrade(engine)`` for memfuse, in either order.
* The host's ``env.py`` passes memfuse's ``include_object`` hook to ``context.configure``.
  With ``include_schemas=True`` that hook is what stops the host's autogenerate from proposing
  to drop memfuse's tables; memfuse's own ``env.py`` reflects only its schema, so it never sees
  the host's tables either.
* ``memfuse.db.migrate.downgrade(engine, "base")`` removes memfuse and nothing of the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from host_app import migrate as host_migrate
from host_app.models import Base as HostBase
from host_app.models import Customer, Order
from sqlalchemy import Connection, MetaData, Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from memfuse.db import migrate
from memfuse.db.models import SCHEMA, VERSION_TABLE
from memfuse.db.models import Base as MemfuseBase

HOST_HEAD = "host0001"
MEMFUSE_HEAD = migrate.head_revision()
HOST_TABLES = {"customers", "orders", "alembic_version"}
MEMFUSE_TABLES = {table.name for table in MemfuseBase.metadata.tables.values()} | {VERSION_TABLE}

TableKey = tuple[str | None, str]
"""A table as autogenerate reports it: ``(schema, name)``, schema ``None`` for ``public``."""


async def tables_in(engine: AsyncEngine, schema: str) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"), {"schema": schema}
        )
        return {row[0] for row in rows}


async def version_rows(engine: AsyncEngine, table: str) -> list[str]:
    """Every revision recorded in one Alembic version table (``schema.table``)."""
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT version_num FROM {table}"))
        return [row[0] for row in rows]


async def schema_exists(engine: AsyncEngine, schema: str) -> bool:
    async with engine.connect() as connection:
        found = await connection.execute(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
        )
        return bool(found.scalar_one() == 1)


def autogenerate(connection: Connection, metadata: MetaData, opts: dict[str, Any]) -> list[Any]:
    """What ``alembic revision --autogenerate`` would propose for ``metadata`` with ``opts``."""
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), metadata))


def host_diff(connection: Connection) -> list[Any]:
    """The host's autogenerate, configured exactly as the host's ``env.py`` configures it."""
    return autogenerate(connection, HostBase.metadata, host_migrate.context_options())


def host_diff_without_hook(connection: Connection) -> list[Any]:
    """The host's autogenerate over every schema, but without memfuse's ``include_object``."""
    return autogenerate(connection, HostBase.metadata, {"include_schemas": True})


MEMFUSE_OPTS: dict[str, Any] = {
    "version_table": VERSION_TABLE,
    "version_table_schema": SCHEMA,
    "include_schemas": True,
}
"""memfuse's ``env.py`` options, less its ``include_name`` filter."""


def only_memfuse_schema(name: str | None, type_: str, _parents: Any) -> bool:
    """memfuse's ``env.py`` filter: of all schemas, reflect only memfuse's."""
    return type_ != "schema" or name == SCHEMA


def memfuse_diff(connection: Connection) -> list[Any]:
    """memfuse's autogenerate, configured as ``migrations/env.py`` configures it."""
    opts = {**MEMFUSE_OPTS, "include_name": only_memfuse_schema}
    return autogenerate(connection, MemfuseBase.metadata, opts)


def memfuse_diff_over_all_schemas(connection: Connection) -> list[Any]:
    """memfuse's autogenerate without its ``include_name`` filter."""
    return autogenerate(connection, MemfuseBase.metadata, MEMFUSE_OPTS)


def removed_tables(diff: Iterable[Any]) -> set[TableKey]:
    """The ``(schema, table)`` of every table the diff would drop."""
    drops = [
        entry[1] for entry in diff if not isinstance(entry, list) and entry[0] == "remove_table"
    ]
    return {(table.schema, table.name) for table in drops}


def tables_touched(diff: Iterable[Any]) -> set[TableKey]:
    """The ``(schema, table)`` of every change in an autogenerate diff, whatever its kind."""
    touched: set[TableKey] = set()
    for entry in diff:
        if isinstance(entry, list):  # column modifications come grouped per column
            touched |= tables_touched(entry)
            continue
        target = entry[1]
        table = target if isinstance(target, Table) else getattr(target, "table", None)
        if isinstance(table, Table):  # tables, and their indexes and constraints
            touched.add((table.schema, table.name))
        else:  # ("add_column", schema, table, column), ("modify_type", schema, table, ...)
            touched.add((entry[1], entry[2]))
    return touched


@pytest.fixture
async def shared_engine(engine: AsyncEngine) -> AsyncEngine:
    """One database migrated by the host app and by memfuse."""
    await host_migrate.upgrade(engine)
    await migrate.upgrade(engine)
    return engine


@pytest.mark.parametrize("memfuse_first", [False, True], ids=["host-first", "memfuse-first"])
async def test_host_and_memfuse_migrate_one_database(
    engine: AsyncEngine, memfuse_first: bool
) -> None:
    if memfuse_first:
        await migrate.upgrade(engine)
        await host_migrate.upgrade(engine)
    else:
        await host_migrate.upgrade(engine)
        await migrate.upgrade(engine)

    assert await host_migrate.current_revision(engine) == HOST_HEAD
    assert await migrate.current_revision(engine) == MEMFUSE_HEAD
    assert await version_rows(engine, "public.alembic_version") == [HOST_HEAD]
    assert await version_rows(engine, f"{SCHEMA}.{VERSION_TABLE}") == [MEMFUSE_HEAD]
    assert await tables_in(engine, "public") == HOST_TABLES
    assert await tables_in(engine, SCHEMA) == MEMFUSE_TABLES


async def test_host_autogenerate_ignores_memfuse(shared_engine: AsyncEngine) -> None:
    async with shared_engine.connect() as connection:
        with_hook = await connection.run_sync(host_diff)
        without_hook = await connection.run_sync(host_diff_without_hook)

    assert with_hook == [], f"host autogenerate is not empty:\n{with_hook!r}"
    # The hook is what makes the difference: without it the host would drop all of memfuse.
    assert removed_tables(without_hook) == {(SCHEMA, name) for name in MEMFUSE_TABLES}


async def test_memfuse_autogenerate_ignores_host(shared_engine: AsyncEngine) -> None:
    async with shared_engine.connect() as connection:
        diff = await connection.run_sync(memfuse_diff)
        unfiltered = await connection.run_sync(memfuse_diff_over_all_schemas)

    host_tables = {(None, name) for name in HOST_TABLES} | {("public", n) for n in HOST_TABLES}
    assert not tables_touched(diff) & host_tables, f"memfuse sees host tables:\n{diff!r}"
    assert diff == [], f"memfuse autogenerate is not empty:\n{diff!r}"
    # memfuse's include_name is what makes the difference: without it, the host's tables
    # (its alembic_version too, as memfuse's version table lives elsewhere) would be dropped.
    assert removed_tables(unfiltered) == {(None, name) for name in HOST_TABLES}


async def test_memfuse_downgrade_keeps_host_tables_and_rows(shared_engine: AsyncEngine) -> None:
    async with AsyncSession(shared_engine) as session:
        ada = Customer(email="ada@example.com", name="Ada")
        session.add(ada)
        await session.flush()
        session.add(Order(customer_id=ada.id, item="notebook", quantity=3))
        await session.commit()

    await migrate.downgrade(shared_engine, "base")

    assert await migrate.current_revision(shared_engine) is None
    assert not await schema_exists(shared_engine, SCHEMA)
    assert await host_migrate.current_revision(shared_engine) == HOST_HEAD
    assert await tables_in(shared_engine, "public") == HOST_TABLES
    async with AsyncSession(shared_engine) as session:
        rows = await session.execute(
            select(Customer.email, Order.item, Order.quantity).join(
                Order, Order.customer_id == Customer.id
            )
        )
        assert rows.all() == [("ada@example.com", "notebook", 3)]
    async with shared_engine.connect() as connection:
        assert await connection.run_sync(host_diff) == []
