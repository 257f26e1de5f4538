"""``/api/v1/sessions/{session_id}/messages``: a session's M0 messages.

Messages are passed to ``Memory.add`` as given (role, content, name, metadata, created_at,
id): its validation names a bad field and writes nothing; metadata and the ``tool`` role are
kept. Every added message is committed before the response, so nothing waits in a buffer:
``buffer_only=true`` lists none, and ``false`` (what the SDK's LLM wrappers ask next) lists
them all, so the two never overlap.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.errors import NotFoundError
from memfuse.memory import Memory
from memfuse.server.auth import Principal, memfuse_of, principal
from memfuse.server.envelope import ApiError, success
from memfuse.server.limits import MAX_ITEMS
from memfuse.server.shapes import message_json
from memfuse.types import MessageRow

router = APIRouter(prefix="/sessions/{session_id}/messages", tags=["messages"])
Caller = Annotated[Principal, Depends(principal)]


class MessagesAdd(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


class MessageIds(BaseModel):
    message_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_ITEMS)


class MessagesUpdate(BaseModel):
    message_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_ITEMS)
    new_messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


async def _memory(request: Request, caller: Principal, session_id: uuid.UUID) -> Memory:
    """The session's memory, if the caller may reach its user (one lookup); 404 otherwise."""
    try:
        memory = await memfuse_of(request).session_memory(session_id)
    except NotFoundError:
        memory = None
    if memory is None or not caller.can_reach(memory.scope.user_id):
        raise ApiError(404, f"session {session_id} does not exist")
    return memory


async def _existing(memory: Memory, ids: list[uuid.UUID]) -> list[MessageRow]:
    """The session's messages with these ids, in order; 404 naming the first missing one."""
    rows = []
    for index, message_id in enumerate(ids):
        row = await memory.get_message(message_id)
        if row is None or row.session_id != memory.scope.session_id:
            raise ApiError(
                404, f"message {message_id} does not exist", field=f"message_ids[{index}]"
            )
        rows.append(row)
    return rows


@router.post("", status_code=201)
async def add_messages(
    request: Request, caller: Caller, session_id: uuid.UUID, body: MessagesAdd
) -> JSONResponse:
    memory = await _memory(request, caller, session_id)
    ids = await memory.add(body.messages)
    return success({"message_ids": ids}, f"{len(ids)} messages added", 201)


@router.get("")
async def list_messages(
    request: Request,
    caller: Caller,
    session_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    sort_by: Literal["timestamp", "id"] = "timestamp",
    order: Literal["asc", "desc"] = "desc",
    buffer_only: Literal["true", "false"] | None = None,
) -> JSONResponse:
    """Messages in the session's order (``sort_by`` both mean it), newest first by default."""
    memory = await _memory(request, caller, session_id)
    if buffer_only == "true":
        return success({"messages": []}, "no message is waiting in a buffer")
    rows = await memory.list_messages(limit=limit, offset=offset, order=order)
    return success({"messages": [message_json(row) for row in rows]}, "messages listed")


@router.post("/read")
async def read_messages(
    request: Request, caller: Caller, session_id: uuid.UUID, body: MessageIds
) -> JSONResponse:
    memory = await _memory(request, caller, session_id)
    rows = await _existing(memory, body.message_ids)
    return success({"messages": [message_json(row) for row in rows]}, "messages read")


@router.put("")
async def update_messages(
    request: Request, caller: Caller, session_id: uuid.UUID, body: MessagesUpdate
) -> JSONResponse:
    """Message i gets ``new_messages[i]``'s content and metadata; its role stays."""
    if len(body.message_ids) != len(body.new_messages):
        raise ApiError(400, "give one new message per message id", field="new_messages")
    memory = await _memory(request, caller, session_id)
    rows = await _existing(memory, body.message_ids)
    for index, (row, new) in enumerate(zip(rows, body.new_messages, strict=True)):
        role = new.get("role")
        if role is not None and role != row.role:
            raise ApiError(
                400,
                f"a message's role cannot change ({row.role!r})",
                field=f"new_messages[{index}].role",
            )
        if new.get("content") is None and new.get("metadata") is None:
            raise ApiError(400, "nothing to change", field=f"new_messages[{index}]")
    for row, new in zip(rows, body.new_messages, strict=True):
        await memory.update_message(
            row.id, content=new.get("content"), metadata=new.get("metadata")
        )
    return success({"message_ids": body.message_ids}, "messages updated")


@router.delete("")
async def delete_messages(
    request: Request, caller: Caller, session_id: uuid.UUID, body: MessageIds
) -> JSONResponse:
    memory = await _memory(request, caller, session_id)
    rows = await _existing(memory, body.message_ids)
    for row in rows:
        await memory.delete_message(row.id)
    return success({"message_ids": body.message_ids}, "messages deleted")
