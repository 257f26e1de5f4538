"""``/api/v1/users/{user_id}/api-keys``: a user's keys; the clear key is shown once."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.server.auth import Principal, memfuse_of, principal, reachable_user
from memfuse.server.envelope import success
from memfuse.server.shapes import api_key_json

router = APIRouter(prefix="/users/{user_id}/api-keys", tags=["api keys"])
Caller = Annotated[Principal, Depends(principal)]


class ApiKeyCreate(BaseModel):
    name: str | None = Field(default=None, max_length=255)
    key: str | None = Field(default=None, max_length=256)
    permissions: dict[str, Any] | None = None
    expires_at: str | None = Field(default=None, max_length=64)


@router.get("")
@router.get("/", include_in_schema=False)
async def list_keys(request: Request, caller: Caller, user_id: uuid.UUID) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    keys = await memfuse_of(request).api_keys.list_for(user_id)
    return success({"api_keys": [api_key_json(key) for key in keys]}, "api keys listed")


@router.post("", status_code=201)
@router.post("/", status_code=201, include_in_schema=False)
async def create_key(
    request: Request,
    caller: Caller,
    user_id: uuid.UUID,
    body: Annotated[ApiKeyCreate | None, Body()] = None,
) -> JSONResponse:
    """A new key for the user; the response holds the clear key, which is not kept."""
    await reachable_user(request, caller, user_id)
    options = body or ApiKeyCreate()
    key = await memfuse_of(request).api_keys.create(
        user_id,
        name=options.name,
        key=options.key,
        permissions=options.permissions,
        expires_at=options.expires_at,
    )
    return success({"api_key": api_key_json(key)}, "api key created: store it now", 201)


@router.delete("/{key_id}")
async def delete_key(
    request: Request, caller: Caller, user_id: uuid.UUID, key_id: uuid.UUID
) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    await memfuse_of(request).api_keys.revoke(user_id, key_id)
    return success({"key_id": key_id}, "api key deleted")
