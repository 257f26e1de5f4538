"""``/api/v1/users/{user_id}/knowledge``: a user's knowledge items (stated memories).

The SDK sends plain texts; a dict item (content, namespace, key, value, metadata, ttl_seconds)
is accepted too. Unknown or foreign ids are skipped by ``read`` (as the original server did)
and answered 404 by ``update`` and ``delete``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from memfuse.memory import MemFuse
from memfuse.server.auth import Principal, memfuse_of, principal, reachable_user
from memfuse.server.envelope import ApiError, success
from memfuse.server.limits import MAX_ITEMS
from memfuse.server.shapes import knowledge_json
from memfuse.types import KnowledgeRow, Page

router = APIRouter(prefix="/users/{user_id}/knowledge", tags=["knowledge"])
Caller = Annotated[Principal, Depends(principal)]


class KnowledgeAdd(BaseModel):
    knowledge: list[str | dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


class KnowledgeIds(BaseModel):
    knowledge_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_ITEMS)


class KnowledgeUpdate(BaseModel):
    knowledge_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_ITEMS)
    new_knowledge: list[str] = Field(min_length=1, max_length=MAX_ITEMS)


async def _existing(
    memfuse: MemFuse, user_id: uuid.UUID, ids: list[uuid.UUID]
) -> list[KnowledgeRow]:
    """The user's live items with these ids, in order (one query); 404 naming the first
    missing one."""
    found = await memfuse.knowledge.get_many(user_id, ids)
    for index, item_id in enumerate(ids):
        if item_id not in found:
            raise ApiError(
                404, f"knowledge item {item_id} does not exist", field=f"knowledge_ids[{index}]"
            )
    return [found[item_id] for item_id in ids]


@router.get("")
async def list_knowledge(
    request: Request,
    caller: Caller,
    user_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    page = Page(limit=limit, offset=offset, newest_first=False)
    rows = await memfuse.knowledge.list_live(user_id, page)
    return success({"knowledge": [knowledge_json(row) for row in rows]}, "knowledge listed")


@router.post("", status_code=201)
async def add_knowledge(
    request: Request, caller: Caller, user_id: uuid.UUID, body: KnowledgeAdd
) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    rows = await memfuse.knowledge.add(user_id, body.knowledge)
    ids = [row.id for row in rows]
    return success({"knowledge_ids": ids}, f"{len(ids)} knowledge items added", 201)


@router.post("/read")
async def read_knowledge(
    request: Request, caller: Caller, user_id: uuid.UUID, body: KnowledgeIds
) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    rows = await memfuse.knowledge.get_many(user_id, body.knowledge_ids)
    found = [knowledge_json(rows[item_id]) for item_id in body.knowledge_ids if item_id in rows]
    return success({"knowledge": found}, f"{len(found)} knowledge items read")


@router.put("")
async def update_knowledge(
    request: Request, caller: Caller, user_id: uuid.UUID, body: KnowledgeUpdate
) -> JSONResponse:
    if len(body.knowledge_ids) != len(body.new_knowledge):
        raise ApiError(400, "give one new text per knowledge id", field="new_knowledge")
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    await _existing(memfuse, user_id, body.knowledge_ids)
    for item_id, content in zip(body.knowledge_ids, body.new_knowledge, strict=True):
        await memfuse.knowledge.update(user_id, item_id, content=content)
    return success({"knowledge_ids": body.knowledge_ids}, "knowledge updated")


@router.delete("")
async def delete_knowledge(
    request: Request, caller: Caller, user_id: uuid.UUID, body: KnowledgeIds
) -> JSONResponse:
    await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    await _existing(memfuse, user_id, body.knowledge_ids)
    deleted = await memfuse.knowledge.delete(user_id, body.knowledge_ids)
    return success({"knowledge_ids": deleted}, "knowledge deleted")
