"""Knowledge items: checked, written under the user's lock, and announced after commit.

Writers take the user's shared key lock first (the lock order of docs/layers.md#lock-order:
user, then the rows), so deleting the user waits for a write in flight instead of racing its
foreign-key check. The embedding of an item is queued by the table's trigger in the same
transaction; the after-commit hook drops the user's cached search results and wakes the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.errors import NotFoundError, ValidationError
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.repositories.knowledge import KnowledgeRepository
from memfuse.repositories.tenancy import UserRepository
from memfuse.services.changes import AfterCommit
from memfuse.types import KnowledgeRow, Page
from memfuse.validation import (
    check_content,
    check_namespace,
    check_ttl,
    check_value_filter,
    metadata_json,
    validate_knowledge,
)

EXPIRED_SWEEP_BATCH = 1000
"""Expired items one sweep transaction deletes."""


class KnowledgeService:
    """Adds, reads, edits and deletes one user's knowledge items."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        monitor: PerformanceMonitor,
        *,
        after_commit: AfterCommit,
        max_chars: int,
    ) -> None:
        self._session_factory = session_factory
        self._monitor = monitor
        self._after_commit = after_commit
        self.max_chars = max_chars

    async def add(self, user_id: uuid.UUID, items: Sequence[object]) -> list[KnowledgeRow]:
        """Store every item or none; a keyed item replaces the one stored under its key."""
        checked = validate_knowledge(items, max_chars=self.max_chars)
        if not checked:
            return []
        with self._monitor.track_operation("knowledge_write"):
            async with self._session_factory.begin() as db:
                await self._lock_user(db, user_id)
                rows = await KnowledgeRepository(db).put(user_id, checked)
        self._after_commit(user_id)
        return rows

    async def get(self, user_id: uuid.UUID, item_id: uuid.UUID) -> KnowledgeRow | None:
        async with self._session_factory() as db:
            return await KnowledgeRepository(db).get(user_id, item_id)

    async def get_by_key(
        self, user_id: uuid.UUID, namespace: object, key: object
    ) -> KnowledgeRow | None:
        checked_namespace, checked_key = _address(namespace, key)
        async with self._session_factory() as db:
            return await KnowledgeRepository(db).get_by_key(user_id, checked_namespace, checked_key)

    async def list_live(
        self,
        user_id: uuid.UUID,
        page: Page,
        *,
        namespace_prefix: object = None,
        value_filter: Mapping[str, Any] | None = None,
        by_update: bool = False,
    ) -> list[KnowledgeRow]:
        """A page of live items, within a namespace prefix, whose value matches the filter
        (field -> value or ``{"$gt": ...}``-style operators)."""
        prefix = check_namespace(namespace_prefix, field="namespace_prefix")
        checked_filter = check_value_filter(value_filter)
        async with self._session_factory() as db:
            return await KnowledgeRepository(db).list_live(
                user_id,
                page,
                namespace_prefix=prefix,
                value_filter=checked_filter,
                by_update=by_update,
            )

    async def get_many(
        self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, KnowledgeRow]:
        async with self._session_factory() as db:
            return await KnowledgeRepository(db).get_many(user_id, item_ids)

    async def namespaces(self, user_id: uuid.UUID) -> list[tuple[str, ...]]:
        async with self._session_factory() as db:
            return await KnowledgeRepository(db).namespaces(user_id)

    async def refresh_ttl(self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> None:
        """Restart the lifetime of these items (those with a TTL): a read that refreshes."""
        if not item_ids:
            return
        async with self._session_factory.begin() as db:
            await self._lock_user(db, user_id)
            await KnowledgeRepository(db).refresh_ttl(user_id, item_ids)

    async def update(
        self,
        user_id: uuid.UUID,
        item_id: uuid.UUID,
        *,
        content: object = None,
        value: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: object = None,
    ) -> KnowledgeRow:
        """Change the given fields; :class:`NotFoundError` if the user has no such item."""
        checked_content = (
            None
            if content is None
            else check_content(content, index=None, max_chars=self.max_chars)
        )
        value_json = None if value is None else metadata_json(value, field="value")
        changed_metadata = None if metadata is None else metadata_json(metadata)
        ttl = check_ttl(ttl_seconds, field="ttl_seconds")
        with self._monitor.track_operation("knowledge_write"):
            async with self._session_factory.begin() as db:
                await self._lock_user(db, user_id)
                row = await KnowledgeRepository(db).update(
                    user_id,
                    item_id,
                    content=checked_content,
                    value_json=value_json,
                    metadata_json=changed_metadata,
                    ttl_seconds=ttl,
                )
                if row is None:
                    raise NotFoundError(f"knowledge item {item_id} does not exist")
        self._after_commit(user_id)
        return row

    async def delete(self, user_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Delete the user's items among ``item_ids``; the ids that existed and are gone."""
        async with self._session_factory.begin() as db:
            await self._lock_user(db, user_id)
            deleted = await KnowledgeRepository(db).delete(user_id, item_ids)
        if deleted:
            self._after_commit(user_id)
        return deleted

    async def delete_by_key(self, user_id: uuid.UUID, namespace: object, key: object) -> bool:
        checked_namespace, checked_key = _address(namespace, key)
        async with self._session_factory.begin() as db:
            await self._lock_user(db, user_id)
            deleted = await KnowledgeRepository(db).delete_by_key(
                user_id, checked_namespace, checked_key
            )
        if deleted:
            self._after_commit(user_id)
        return deleted

    async def sweep_expired(self) -> int:
        """Delete expired items (they are already hidden from every read); how many."""
        total = 0
        while True:
            async with self._session_factory.begin() as db:
                owners = await KnowledgeRepository(db).delete_expired(EXPIRED_SWEEP_BATCH)
            for owner in set(owners):
                self._after_commit(owner)
            total += len(owners)
            if len(owners) < EXPIRED_SWEEP_BATCH:
                return total

    @staticmethod
    async def _lock_user(db: AsyncSession, user_id: uuid.UUID) -> None:
        if not await UserRepository(db).lock([user_id]):
            raise NotFoundError(f"user {user_id} does not exist")


def _address(namespace: object, key: object) -> tuple[tuple[str, ...], str]:
    """A namespace and key that address one item (as the key-value stores give them)."""
    if not isinstance(key, str):
        raise ValidationError(f"must be a string, got {type(key).__name__}", field="key")
    return check_namespace(namespace, field="namespace"), key
