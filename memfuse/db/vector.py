"""The ``vector`` column type and pgvector's binary asyncpg codec, registered per connection.

``pgvector.sqlalchemy.VECTOR`` turns every vector into text in its bind processor, which both
conflicts with the asyncpg binary codec and costs a text round trip per float. This subclass keeps
pgvector's operators (``cosine_distance`` …) but hands values to the driver untouched, so the
codec registered by :func:`register_vector_codec` sends them in binary.
"""

from __future__ import annotations

from typing import Any

from pgvector import Vector as PgVector
from pgvector.asyncpg import register_vector
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.engine import Dialect

_FIND_VECTOR_SCHEMA = """
SELECT n.nspname
FROM pg_catalog.pg_type AS t
JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
WHERE t.typname = 'vector'
ORDER BY n.nspname = 'public' DESC
LIMIT 1
"""


class Vector(VECTOR):
    """A pgvector ``vector`` column whose values travel in binary through asyncpg."""

    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        return None

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        def process(value: PgVector | str | None) -> list[float] | None:
            return PgVector._from_db(value)

        return process


async def register_vector_codec(connection: Any) -> bool:
    """Register pgvector's binary codec on one raw asyncpg connection.

    Returns ``False`` when the ``vector`` extension is not installed yet (before the first
    migration); the caller retries on a later checkout.
    """
    schema = await connection.fetchval(_FIND_VECTOR_SCHEMA)
    if schema is None:
        return False
    await register_vector(connection, schema=schema)
    return True
