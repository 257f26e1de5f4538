"""``ChunkData``: the one format passed between layers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ChunkData:
    """Text of one session with its scope, lineage to M0 and time span.

    A single M0 message is a chunk with one id in ``message_ids`` and its ``role`` and
    ``speaker`` set; an M1 episode is a chunk of several messages, whose ``speaker`` and
    ``role`` are ``None``. Chunks never span users or sessions.
    """

    content: str
    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    message_ids: tuple[uuid.UUID, ...]
    first_seq: int
    last_seq: int
    started_at: datetime
    ended_at: datetime
    token_count: int
    role: str | None = None
    speaker: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.message_ids:
            raise ValueError("a chunk holds at least one message")
        if self.first_seq > self.last_seq:
            raise ValueError(f"first_seq {self.first_seq} is after last_seq {self.last_seq}")
        if self.started_at > self.ended_at:
            raise ValueError("started_at is after ended_at")
