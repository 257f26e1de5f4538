"""``/api/v1/users``: users by name or id, and the search of one user's memory."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.errors import ConflictError
from memfuse.server.auth import Principal, memfuse_of, principal, reachable_user
from memfuse.server.envelope import ApiError, success
from memfuse.server.limits import MAX_TEXT_CHARS, MAX_TOP_K
from memfuse.server.shapes import metadata_with_description, result_json, user_json
from memfuse.types import Layer, Method, Page

router = APIRouter(prefix="/users", tags=["users"])
Caller = Annotated[Principal, Depends(principal)]


class UserBody(BaseModel):
    name: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] | None = None


@router.get("")
@router.get("/", include_in_schema=False)
async def list_users(
    request: Request,
    caller: Caller,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """With ``name``: that user, or 404. Without: a page of users (a user key sees itself)."""
    tenancy = memfuse_of(request).tenancy
    if name is not None:
        user = await tenancy.find_user(name)
        if user is None or not caller.can_reach(user.id):
            raise ApiError(404, f"user {name!r} does not exist", field="name")
        return success({"users": [user_json(user)]}, "user found")
    page = Page(limit=limit, offset=offset, newest_first=False)
    users = await tenancy.list_users(page, only=caller.user_id)
    return success({"users": [user_json(user) for user in users]}, "users listed")


@router.post("", status_code=201)
@router.post("/", status_code=201, include_in_schema=False)
async def create_user(request: Request, caller: Caller, body: UserBody) -> JSONResponse:
    """Get-or-create by name: 201 with a new user, 200 with the existing one. The SDK's
    ``init()`` looks a user up, then creates it; two clients doing so at once both create."""
    caller.require_admin("creating a user")
    if body.name is None:
        raise ApiError(400, "a user needs a name", field="name")
    tenancy = memfuse_of(request).tenancy
    try:
        user = await tenancy.create_user(
            body.name, metadata_with_description(body.metadata, body.description)
        )
    except ConflictError:
        existing = await tenancy.find_user(body.name)
        if existing is None:  # deleted meanwhile
            raise
        return success({"user": user_json(existing)}, "user exists")
    return success({"user": user_json(user)}, "user created", 201)


@router.get("/{user_id}")
async def get_user(request: Request, caller: Caller, user_id: uuid.UUID) -> JSONResponse:
    user = await reachable_user(request, caller, user_id)
    return success({"user": user_json(user)}, "user found")


@router.put("/{user_id}")
async def update_user(
    request: Request, caller: Caller, user_id: uuid.UUID, body: UserBody
) -> JSONResponse:
    current = await reachable_user(request, caller, user_id)
    user = await memfuse_of(request).tenancy.update_user(
        user_id,
        name=body.name,
        metadata=metadata_with_description(body.metadata, body.description, current.metadata),
    )
    return success({"user": user_json(user)}, "user updated")


@router.delete("/{user_id}")
async def delete_user(request: Request, caller: Caller, user_id: uuid.UUID) -> JSONResponse:
    """The user and everything stored for them: sessions, messages, layers, knowledge, keys."""
    caller.require_user(user_id)
    await memfuse_of(request).tenancy.delete_user_by_id(user_id)
    return success({"user_id": user_id}, "user deleted")


class QueryBody(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    session_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    store_type: Literal["vector", "keyword", "hybrid", "graph"] | None = None
    include_messages: bool = True
    include_knowledge: bool = True
    metadata: dict[str, Any] | None = None
    explain: bool = False
    """memfuse's: each result's rank in every fused list, in ``metadata.retrieval.ranks``."""


STORE_METHODS: dict[str | None, tuple[Method, ...]] = {
    "vector": ("vector",),
    "keyword": ("text",),
    "hybrid": ("vector", "text"),
    "graph": ("vector", "text"),
    None: ("vector", "text"),
}
"""The SDK's ``store_type`` as search methods (memfuse has no graph store: it searches both)."""


@router.post("/{user_id}/query")
async def query(
    request: Request, caller: Caller, user_id: uuid.UUID, body: QueryBody
) -> JSONResponse:
    """Search the user's memory. ``session_id`` tags results ``in_session`` or
    ``cross_session`` (it does not filter, as the SDK documents); ``agent_id`` filters."""
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    if body.session_id is not None:
        session = await memfuse.tenancy.get_session(body.session_id)
        if session is None or session.user_id != user_id:
            raise ApiError(404, f"session {body.session_id} does not exist", field="session_id")
    if body.agent_id is not None:
        agent = await memfuse.tenancy.get_agent(body.agent_id)
        if agent is None or agent.user_id not in (None, user_id):
            raise ApiError(404, f"agent {body.agent_id} does not exist", field="agent_id")
    layers: list[Layer] = []
    if body.include_messages:
        layers += ["m0", "m1", "m2"]
    if body.include_knowledge:
        layers.append("knowledge")
    if not layers:
        return success({"results": [], "total": 0}, "nothing to search")
    results = await memfuse.search(
        user_id,
        body.query,
        None if body.max_tokens is not None else body.top_k,
        max_tokens=body.max_tokens,
        layers=layers,
        methods=STORE_METHODS[body.store_type],
        agent_id=body.agent_id,
        explain=body.explain,
    )
    names = await memfuse.tenancy.session_names(
        [result.session_id for result in results if result.session_id is not None]
    )
    items = [
        result_json(result, user_id=user_id, session_names=names, in_session=body.session_id)
        for result in results
    ]
    return success({"results": items, "total": len(items)}, f"{len(items)} results")
