"""How rows read as JSON in responses: the fields the SDK reads, and ours beside them."""

from __future__ import annotations

import uuid
from typing import Any

from memfuse.types import (
    AgentRow,
    ApiKeyRow,
    KnowledgeRow,
    MessageRow,
    SearchResult,
    SessionRow,
    UserRow,
)

DESCRIPTION = "description"
"""The metadata key that holds a user's or agent's description (the SDK's field)."""

RESULT_TYPES = {"m0": "message", "m1": "chunk", "m2": "fact", "knowledge": "knowledge"}
RESULT_LEVELS = {"m0": 0, "m1": 1, "m2": 2, "knowledge": None}


def metadata_with_description(
    metadata: dict[str, Any] | None,
    description: str | None,
    current: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The metadata to store for a body's ``metadata`` and ``description`` (the SDK's field,
    kept under :data:`DESCRIPTION`); ``None`` when the body changes neither."""
    if metadata is None and description is None:
        return None
    merged = dict(metadata) if metadata is not None else dict(current or {})
    if description is not None:
        merged[DESCRIPTION] = description
    return merged


def user_json(user: UserRow) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "description": user.metadata.get(DESCRIPTION),
        "metadata": user.metadata,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def agent_json(agent: AgentRow) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "user_id": agent.user_id,
        "shared": agent.user_id is None,
        "description": agent.metadata.get(DESCRIPTION),
        "metadata": agent.metadata,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


def session_json(session: SessionRow) -> dict[str, Any]:
    return {
        "id": session.id,
        "user_id": session.user_id,
        "agent_id": session.agent_id,
        "name": session.name,
        "message_count": session.message_count,
        "metadata": session.metadata,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
    }


def message_json(message: MessageRow) -> dict[str, Any]:
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role,
        "name": message.name,
        "content": message.content,
        "seq": message.seq,
        "metadata": message.metadata,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
    }


def knowledge_json(item: KnowledgeRow) -> dict[str, Any]:
    return {
        "id": item.id,
        "user_id": item.user_id,
        "content": item.content,
        "namespace": list(item.namespace),
        "key": item.key,
        "value": item.value,
        "metadata": item.metadata,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
        "expires_at": item.expires_at,
    }


def api_key_json(key: ApiKeyRow) -> dict[str, Any]:
    shown = key.key if key.key is not None else f"{key.prefix}..."
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "key": shown,
        "prefix": key.prefix,
        "permissions": key.permissions,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
    }


def result_json(
    result: SearchResult,
    *,
    user_id: uuid.UUID,
    session_names: dict[uuid.UUID, str],
    in_session: uuid.UUID | None,
) -> dict[str, Any]:
    """A search result as the SDK's prompt builder reads it: ``content``, ``type`` and
    ``metadata.scope`` (``in_session`` puts it in the short-term section of the prompt)."""
    scope = None
    if in_session is not None:
        scope = "in_session" if result.session_id == in_session else "cross_session"
    return {
        "id": result.id,
        "content": result.content,
        "score": result.score,
        "type": RESULT_TYPES[result.layer],
        "role": result.role,
        "created_at": result.created_at,
        "updated_at": result.created_at,
        "metadata": {
            "user_id": user_id,
            "agent_id": result.agent_id,
            "session_id": result.session_id,
            "session_name": session_names.get(result.session_id) if result.session_id else None,
            "scope": scope,
            "level": RESULT_LEVELS[result.layer],
            "retrieval": {
                "layer": result.layer,
                "method": "hybrid",
                "speaker": result.speaker,
                **({"ranks": result.ranks} if result.ranks is not None else {}),
            },
        },
    }
