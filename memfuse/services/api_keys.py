"""Per-user API keys for the REST server: made here, shown once, stored as hashes.

A key is 32 random bytes (``secrets.token_urlsafe``) behind the ``mf_`` prefix, so its SHA-256
is as unguessable as the key; a slow password hash would add nothing but latency to every
request. Authentication looks the hash up by index; the admin key is compared in constant time
by the server (:mod:`memfuse.server.auth`).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memfuse.db.models import ApiKey
from memfuse.errors import ConflictError, NotFoundError, ValidationError
from memfuse.repositories.api_keys import ApiKeyRepository
from memfuse.repositories.tenancy import UserRepository
from memfuse.types import ApiKeyRow
from memfuse.validation import check_metadata, stored_timestamp, validate_filter_name

KEY_PREFIX = "mf_"
MIN_KEY_LENGTH = 32
"""Characters a caller-chosen key needs at least."""
MAX_KEY_LENGTH = 256
SHOWN_PREFIX = 8
"""Characters of a key kept in clear (``prefix``) to tell keys apart in a listing."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _row(key: ApiKey, clear: str | None = None) -> ApiKeyRow:
    return ApiKeyRow(
        key.id,
        key.user_id,
        key.name,
        key.prefix,
        key.permissions,
        key.created_at,
        key.expires_at,
        clear,
    )


class ApiKeyService:
    """Creates, lists, revokes and checks users' API keys."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory

    async def create(
        self,
        user_id: uuid.UUID,
        *,
        name: object = None,
        key: object = None,
        permissions: Mapping[str, Any] | None = None,
        expires_at: object = None,
    ) -> ApiKeyRow:
        """A new key of the user; the returned row holds the clear key, never stored."""
        checked_name = validate_filter_name("name", name)
        if key is None:
            clear = KEY_PREFIX + secrets.token_urlsafe(32)
        elif isinstance(key, str) and MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
            clear = key
        else:
            raise ValidationError(
                f"must be a string of {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters "
                "(or left out: one is made)",
                field="key",
            )
        expiry = None if expires_at is None else stored_timestamp(expires_at, field="expires_at")
        async with self._session_factory.begin() as db:
            if not await UserRepository(db).lock([user_id]):
                raise NotFoundError(f"user {user_id} does not exist")
            stored = await ApiKeyRepository(db).create(
                user_id,
                key_hash=hash_key(clear),
                prefix=clear[:SHOWN_PREFIX],
                name=checked_name,
                permissions=check_metadata(permissions or {}, field="permissions"),
                expires_at=expiry,
            )
        if stored is None:
            raise ConflictError("this key is in use; choose another")
        return _row(stored, clear)

    async def list_for(self, user_id: uuid.UUID) -> list[ApiKeyRow]:
        async with self._session_factory() as db:
            return [_row(key) for key in await ApiKeyRepository(db).list_for(user_id)]

    async def revoke(self, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
        async with self._session_factory.begin() as db:
            if not await ApiKeyRepository(db).delete(user_id, key_id):
                raise NotFoundError(f"api key {key_id} does not exist")

    async def user_of(self, key: str) -> uuid.UUID | None:
        """The user an unexpired key belongs to, or ``None``."""
        if len(key) > MAX_KEY_LENGTH:
            return None
        async with self._session_factory() as db:
            return await ApiKeyRepository(db).user_of(hash_key(key))
