"""SQL for knowledge items. Every statement takes the owning ``user_id``; repositories never
commit.

An item is live until its ``expires_at``: reads see live items only, and
:meth:`KnowledgeRepository.delete_expired` removes the others. Keyed items are upserted on
(user, namespace, key), so writing a key twice keeps one row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, and_, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import Knowledge
from memfuse.db.value_filter import value_filter_sql
from memfuse.repositories.paging import paginate
from memfuse.types import KnowledgeRow, Page
from memfuse.validation import KnowledgeInput

_COLUMNS = (
    Knowledge.id,
    Knowledge.user_id,
    Knowledge.content,
    Knowledge.namespace,
    Knowledge.key,
    Knowledge.value,
    Knowledge.metadata_,
    Knowledge.ttl_seconds,
    Knowledge.expires_at,
    Knowledge.created_at,
    Knowledge.updated_at,
    Knowledge.embedding.is_not(None).label("embedded"),
    Knowledge.indexed,
)


def live() -> ColumnElement[bool]:
    """Items not expired yet."""
    return or_(Knowledge.expires_at.is_(None), Knowledge.expires_at > func.now())


def _expiry(ttl_seconds: Any) -> Any:
    """``now() + ttl`` in SQL, ``NULL`` without a TTL."""
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, ttl_seconds)


def _row(row: Row[Any]) -> KnowledgeRow:
    return KnowledgeRow(
        id=row.id,
        user_id=row.user_id,
        content=row.content,
        namespace=tuple(row.namespace),
        key=row.key,
        value=row.value,
        metadata=row.metadata_,
        ttl_seconds=row.ttl_seconds,
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        embedded=row.embedded,
        indexed=row.indexed,
    )


class KnowledgeRepository:
    """Rows of ``knowledge``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def put(self, user_id: uuid.UUID, items: Sequence[KnowledgeInput]) -> list[KnowledgeRow]:
        """Insert the items in one statement; a keyed item replaces the user's live or expired
        item of the same namespace and key (its id stays). Rows come back in ``items``' order."""
        if not items:
            return []
        ids = [uuid.uuid4() for _ in items]
        values = [
            {
                "id": item_id,
                "user_id": user_id,
                "namespace": list(item.namespace),
                "key": item.key,
                "content": item.content,
                "value": func.cast(literal(item.value_json), Knowledge.value.type)
                if item.value_json is not None
                else None,
                "metadata": func.cast(literal(item.metadata_json), Knowledge.metadata_.type),
                "ttl_seconds": item.ttl_seconds,
                "expires_at": _expiry(item.ttl_seconds) if item.ttl_seconds is not None else None,
                "indexed": item.indexed,
            }
            for item_id, item in zip(ids, items, strict=True)
        ]
        statement = insert(Knowledge).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[Knowledge.user_id, Knowledge.namespace, Knowledge.key],
            index_where=Knowledge.key.is_not(None),
            set_={
                "content": statement.excluded.content,
                "value": statement.excluded.value,
                "metadata": statement.excluded.metadata,
                "ttl_seconds": statement.excluded.ttl_seconds,
                "expires_at": statement.excluded.expires_at,
                "indexed": statement.excluded.indexed,
            },
        )
        result = await self.session.execute(statement.returning(*_COLUMNS))
        # A replaced item keeps its stored id: match rows to items by id, else by address.
        rows = [_row(row) for row in result]
        by_id = {row.id: row for row in rows}
        by_address = {(row.namespace, row.key): row for row in rows if row.key is not None}
        return [
            by_id.get(item_id) or by_address[(item.namespace, cast(str, item.key))]
            for item_id, item in zip(ids, items, strict=True)
        ]

    async def get(self, user_id: uuid.UUID, item_id: uuid.UUID) -> KnowledgeRow | None:
        result = await self.session.execute(
            select(*_COLUMNS).where(Knowledge.user_id == user_id, Knowledge.id == item_id, live())
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def get_by_key(
        self, user_id: uuid.UUID, namespace: Sequence[str], key: str
    ) -> KnowledgeRow | None:
        result = await self.session.execute(
            select(*_COLUMNS).where(
                Knowledge.user_id == user_id,
                Knowledge.namespace == list(namespace),
                Knowledge.key == key,
                live(),
            )
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def list_live(
        self,
        user_id: uuid.UUID,
        page: Page,
        *,
        namespace_prefix: Sequence[str] = (),
        value_filter: str | None = None,
        by_update: bool = False,
    ) -> list[KnowledgeRow]:
        """A page of the user's live items by creation time (``by_update``: by the time of
        their last change), within a namespace prefix, whose value matches ``value_filter``
        (JSON of a :func:`~memfuse.db.value_filter.value_filter_sql` filter)."""
        query = select(*_COLUMNS).where(Knowledge.user_id == user_id, live())
        if namespace_prefix:
            depth = len(namespace_prefix)
            query = query.where(Knowledge.namespace[1:depth] == list(namespace_prefix))
        if value_filter is not None:
            clause, parameters = value_filter_sql(
                json.loads(value_filter), column="value", prefix="value_filter"
            )
            query = query.where(text(clause).bindparams(**parameters))
        moment = Knowledge.updated_at if by_update else Knowledge.created_at
        result = await self.session.execute(paginate(query, [moment, Knowledge.id], page))
        return [_row(row) for row in result]

    async def get_many(
        self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, KnowledgeRow]:
        """The user's live items among ``item_ids``."""
        if not item_ids:
            return {}
        result = await self.session.execute(
            select(*_COLUMNS).where(
                Knowledge.user_id == user_id, Knowledge.id.in_(sorted(set(item_ids))), live()
            )
        )
        return {row.id: _row(row) for row in result}

    async def namespaces(self, user_id: uuid.UUID) -> list[tuple[str, ...]]:
        """The distinct namespaces of the user's live items."""
        result = await self.session.execute(
            select(Knowledge.namespace).where(Knowledge.user_id == user_id, live()).distinct()
        )
        return [tuple(namespace) for namespace in result.scalars()]

    async def update(
        self,
        user_id: uuid.UUID,
        item_id: uuid.UUID,
        *,
        content: str | None = None,
        value_json: str | None = None,
        metadata_json: str | None = None,
        ttl_seconds: float | None = None,
    ) -> KnowledgeRow | None:
        """Change the given fields of a live item; ``None`` if the user has no such item. A new
        ``ttl_seconds`` restarts the item's lifetime from now."""
        changes: dict[str, Any] = {}
        if content is not None:
            changes["content"] = content
        if value_json is not None:
            changes["value"] = func.cast(literal(value_json), Knowledge.value.type)
        if metadata_json is not None:
            changes["metadata"] = func.cast(literal(metadata_json), Knowledge.metadata_.type)
        if ttl_seconds is not None:
            changes["ttl_seconds"] = ttl_seconds
            changes["expires_at"] = _expiry(ttl_seconds)
        where = and_(Knowledge.user_id == user_id, Knowledge.id == item_id, live())
        if not changes:
            return await self.get(user_id, item_id)
        result = await self.session.execute(
            update(Knowledge).where(where).values(changes).returning(*_COLUMNS)
        )
        row = result.one_or_none()
        return None if row is None else _row(row)

    async def refresh_ttl(self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> None:
        """Restart the lifetime of these live items that have a TTL (a read that refreshes)."""
        if not item_ids:
            return
        await self.session.execute(
            update(Knowledge)
            .where(
                Knowledge.user_id == user_id,
                Knowledge.id.in_(sorted(item_ids)),
                Knowledge.ttl_seconds.is_not(None),
                live(),
            )
            .values(expires_at=_expiry(Knowledge.ttl_seconds))
        )

    async def delete(self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Delete the user's items among ``item_ids``; the ids that were deleted."""
        if not item_ids:
            return []
        result = await self.session.execute(
            delete(Knowledge)
            .where(Knowledge.user_id == user_id, Knowledge.id.in_(sorted(set(item_ids))))
            .returning(Knowledge.id)
        )
        return list(result.scalars())

    async def delete_by_key(self, user_id: uuid.UUID, namespace: Sequence[str], key: str) -> bool:
        result = await self.session.execute(
            delete(Knowledge)
            .where(
                Knowledge.user_id == user_id,
                Knowledge.namespace == list(namespace),
                Knowledge.key == key,
            )
            .returning(Knowledge.id)
        )
        return result.scalar_one_or_none() is not None

    async def delete_expired(self, limit: int) -> list[uuid.UUID]:
        """Delete up to ``limit`` expired items of any user; the owners of those deleted."""
        expired = (
            select(Knowledge.id)
            .where(Knowledge.expires_at <= func.now())
            .order_by(Knowledge.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await self.session.execute(
            delete(Knowledge).where(Knowledge.id.in_(expired)).returning(Knowledge.user_id)
        )
        return list(result.scalars())
