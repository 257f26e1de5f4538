"""Who is asking: the admin, a user's API key, or (with no key configured) the local operator.

Without an admin key the server serves 127.0.0.1 only (``memfuse serve`` refuses anything
else) and every request acts as the admin. With ``MEMFUSE_SERVER_API_KEY`` set, each request but
``GET /health`` needs ``Authorization: Bearer <key>``: the admin key (compared in constant time)
or a user's key (looked up by its SHA-256). A user's key reaches only that user's rows; ids of
other users answer 404, as if they did not exist.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from fastapi import Request

from memfuse.memory import MemFuse
from memfuse.server.envelope import ApiError
from memfuse.types import UserRow


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the admin (``user_id`` None) or one user."""

    user_id: uuid.UUID | None

    @property
    def admin(self) -> bool:
        return self.user_id is None

    def can_reach(self, user_id: uuid.UUID) -> bool:
        return self.user_id is None or self.user_id == user_id

    def require_user(self, user_id: uuid.UUID, *, what: str = "user") -> None:
        """404 (not 403: another tenant's ids do not exist for this caller) if out of reach."""
        if not self.can_reach(user_id):
            raise ApiError(404, f"{what} {user_id} does not exist")

    def require_admin(self, action: str) -> None:
        if not self.admin:
            raise ApiError(403, f"{action} needs the admin key")


ADMIN = Principal(None)


def memfuse_of(request: Request) -> MemFuse:
    memfuse: MemFuse = request.app.state.memfuse
    return memfuse


async def reachable_user(request: Request, caller: Principal, user_id: uuid.UUID) -> UserRow:
    """The user, if it exists and the caller may reach it; 404 otherwise (either way)."""
    caller.require_user(user_id)
    user = await memfuse_of(request).tenancy.get_user(user_id)
    if user is None:
        raise ApiError(404, f"user {user_id} does not exist")
    return user


KEY_COOKIE = "memfuse_key"
"""The inspector's sign-in cookie (HttpOnly, SameSite=Strict): a browser cannot send headers."""


async def principal(request: Request) -> Principal:
    """The FastAPI dependency every route but the health checks takes."""
    admin_key: str | None = request.app.state.admin_key
    if admin_key is None:
        return ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if not header:
        key, scheme = request.cookies.get(KEY_COOKIE, ""), "bearer"
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    found = await principal_of_key(request, key)
    if found is None:
        raise ApiError(401, "invalid or expired API key")
    return found


async def principal_of_key(request: Request, key: str) -> Principal | None:
    """Who ``key`` is: the admin (constant-time comparison), a user, or nobody."""
    admin_key: str | None = request.app.state.admin_key
    if admin_key is None or hmac.compare_digest(key.encode(), admin_key.encode()):
        return ADMIN
    user_id = await memfuse_of(request).api_keys.user_of(key)
    return None if user_id is None else Principal(user_id)
