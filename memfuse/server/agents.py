"""``/api/v1/agents``: agents shared by every user (admin) or a user's own (a user key).

The SDK creates an agent before it names a user, with a fresh ``Idempotency-Key`` per
``init()``: creation is get-or-create by name, so any retry, with any key, returns the same
agent (201 when created, 200 when it existed).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.server.auth import Principal, memfuse_of, principal
from memfuse.server.envelope import ApiError, success
from memfuse.server.limits import MAX_TEXT_CHARS
from memfuse.server.shapes import agent_json, metadata_with_description
from memfuse.types import AgentRow

router = APIRouter(prefix="/agents", tags=["agents"])
Caller = Annotated[Principal, Depends(principal)]


class AgentBody(BaseModel):
    name: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] | None = None


async def _visible(request: Request, caller: Caller, agent_id: uuid.UUID) -> AgentRow:
    agent = await memfuse_of(request).tenancy.get_agent(agent_id)
    if agent is None or not (agent.user_id is None or caller.can_reach(agent.user_id)):
        raise ApiError(404, f"agent {agent_id} does not exist")
    return agent


def _writable(caller: Caller, agent: AgentRow) -> None:
    if agent.user_id is None:
        caller.require_admin("changing a shared agent")


@router.get("")
@router.get("/", include_in_schema=False)
async def list_agents(request: Request, caller: Caller, name: str | None = None) -> JSONResponse:
    """Shared agents and the caller's own; with ``name``, those of that name or 404."""
    agents = await memfuse_of(request).tenancy.find_agents(name=name, visible_to=caller.user_id)
    if name is not None and not agents:
        raise ApiError(404, f"agent {name!r} does not exist", field="name")
    return success({"agents": [agent_json(agent) for agent in agents]}, "agents listed")


@router.post("", status_code=201)
@router.post("/", status_code=201, include_in_schema=False)
async def create_agent(request: Request, caller: Caller, body: AgentBody) -> JSONResponse:
    if body.name is None:
        raise ApiError(400, "an agent needs a name", field="name")
    agent, created = await memfuse_of(request).tenancy.get_or_create_agent(
        body.name,
        user_id=caller.user_id,
        metadata=metadata_with_description(body.metadata, body.description),
    )
    if created:
        return success({"agent": agent_json(agent)}, "agent created", 201)
    return success({"agent": agent_json(agent)}, "agent exists")


@router.get("/{agent_id}")
async def get_agent(request: Request, caller: Caller, agent_id: uuid.UUID) -> JSONResponse:
    agent = await _visible(request, caller, agent_id)
    return success({"agent": agent_json(agent)}, "agent found")


@router.put("/{agent_id}")
async def update_agent(
    request: Request, caller: Caller, agent_id: uuid.UUID, body: AgentBody
) -> JSONResponse:
    agent = await _visible(request, caller, agent_id)
    _writable(caller, agent)
    updated = await memfuse_of(request).tenancy.update_agent(
        agent_id,
        name=body.name,
        metadata=metadata_with_description(body.metadata, body.description, agent.metadata),
    )
    return success({"agent": agent_json(updated)}, "agent updated")


@router.delete("/{agent_id}")
async def delete_agent(request: Request, caller: Caller, agent_id: uuid.UUID) -> JSONResponse:
    """409 while a session talks to the agent: deleting it would delete their memory."""
    agent = await _visible(request, caller, agent_id)
    _writable(caller, agent)
    await memfuse_of(request).tenancy.delete_agent(agent_id)
    return success({"agent_id": agent_id}, "agent deleted")
