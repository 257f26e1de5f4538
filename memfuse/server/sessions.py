"""``/api/v1/sessions``: one user's conversations, each with an agent."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.errors import ConflictError
from memfuse.server.auth import Principal, memfuse_of, principal
from memfuse.server.envelope import ApiError, success
from memfuse.server.shapes import session_json
from memfuse.types import Page, SessionRow

router = APIRouter(prefix="/sessions", tags=["sessions"])
Caller = Annotated[Principal, Depends(principal)]


class SessionCreate(BaseModel):
    user_id: uuid.UUID
    agent_id: uuid.UUID
    name: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] | None = None


class SessionUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] | None = None


async def session_of(request: Request, caller: Principal, session_id: uuid.UUID) -> SessionRow:
    """The session, if the caller may reach its user; 404 otherwise."""
    session = await memfuse_of(request).tenancy.get_session(session_id)
    if session is None or not caller.can_reach(session.user_id):
        raise ApiError(404, f"session {session_id} does not exist")
    return session


@router.get("")
@router.get("/", include_in_schema=False)
async def list_sessions(
    request: Request,
    caller: Caller,
    user_id: uuid.UUID | None = None,
    agent_id: uuid.UUID | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """Sessions by user, agent and name; with ``name``, 404 when none matches."""
    if user_id is not None:
        caller.require_user(user_id)
    scope = user_id if user_id is not None else caller.user_id
    sessions = await memfuse_of(request).tenancy.find_sessions(
        user_id=scope,
        agent_id=agent_id,
        name=name,
        page=Page(limit=limit, offset=offset, newest_first=False),
    )
    if name is not None and not sessions:
        raise ApiError(404, f"session {name!r} does not exist", field="name")
    return success({"sessions": [session_json(s) for s in sessions]}, "sessions listed")


@router.post("", status_code=201)
@router.post("/", status_code=201, include_in_schema=False)
async def create_session(request: Request, caller: Caller, body: SessionCreate) -> JSONResponse:
    """A new session; without a name, one is made up and returned."""
    """201 with a new session; 200 with the user's session of that name if it talks to the
    same agent (the SDK's look-up-then-create may race), 409 if to another."""
    caller.require_user(body.user_id)
    tenancy = memfuse_of(request).tenancy
    try:
        session = await tenancy.create_session(
            body.user_id, body.agent_id, name=body.name, metadata=body.metadata
        )
    except ConflictError:
        page = Page(limit=1, offset=0, newest_first=False)
        found = await tenancy.find_sessions(user_id=body.user_id, name=body.name, page=page)
        if not found or found[0].agent_id != body.agent_id:
            raise
        return success({"session": session_json(found[0])}, "session exists")
    return success({"session": session_json(session)}, "session created", 201)


@router.get("/{session_id}")
async def get_session(request: Request, caller: Caller, session_id: uuid.UUID) -> JSONResponse:
    session = await session_of(request, caller, session_id)
    return success({"session": session_json(session)}, "session found")


@router.put("/{session_id}")
async def update_session(
    request: Request, caller: Caller, session_id: uuid.UUID, body: SessionUpdate
) -> JSONResponse:
    session = await session_of(request, caller, session_id)
    updated = await memfuse_of(request).tenancy.update_session(
        session.user_id, session_id, name=body.name, metadata=body.metadata
    )
    return success({"session": session_json(updated)}, "session updated")


@router.delete("/{session_id}")
async def delete_session(request: Request, caller: Caller, session_id: uuid.UUID) -> JSONResponse:
    """The session with its messages, episodes and facts."""
    session = await session_of(request, caller, session_id)
    await memfuse_of(request).tenancy.delete_session_by_id(session.user_id, session_id)
    return success({"session_id": session_id}, "session deleted")
