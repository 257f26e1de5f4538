"""SQL for server API keys. Keys are stored as SHA-256 hashes only; repositories never commit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import ApiKey


class ApiKeyRepository:
    """Rows of ``api_keys``; every read but :meth:`user_of` takes the owning ``user_id``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self,
        user_id: uuid.UUID,
        *,
        key_hash: str,
        prefix: str,
        name: str | None,
        permissions: dict[str, Any],
        expires_at: datetime | None,
    ) -> ApiKey | None:
        """A new key; ``None`` if a key with this hash exists already."""
        result = await self.session.execute(
            insert(ApiKey)
            .values(
                user_id=user_id,
                key_hash=key_hash,
                prefix=prefix,
                name=name,
                permissions=permissions,
                expires_at=expires_at,
            )
            .on_conflict_do_nothing(index_elements=[ApiKey.key_hash])
            .returning(ApiKey)
        )
        return result.scalar_one_or_none()

    async def list_for(self, user_id: uuid.UUID) -> list[ApiKey]:
        result = await self.session.execute(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
        )
        return list(result.scalars())

    async def delete(self, user_id: uuid.UUID, key_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.id == key_id)
            .returning(ApiKey.id)
        )
        return result.scalar_one_or_none() is not None

    async def user_of(self, key_hash: str) -> uuid.UUID | None:
        """The owner of the unexpired key with this hash (an index lookup of the hash)."""
        result = await self.session.execute(
            select(ApiKey.user_id).where(
                ApiKey.key_hash == key_hash,
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()),
            )
        )
        return result.scalar_one_or_none()
