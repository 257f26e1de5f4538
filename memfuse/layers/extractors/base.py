"""The contract between the M2 layer and whatever turns messages into facts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from memfuse.types import ChunkData

FACT_TYPES = ("statement", "event", "preference", "plan", "attribute")
"""Kinds of fact: something said, something that happened, a like or dislike, an intention,
and a property of someone (where they live, their job) that a newer fact may replace."""


@dataclass(frozen=True, slots=True)
class FactCandidate:
    """One atomic fact proposed by an extractor, before the M2 layer stores it.

    ``message_ids`` is the lineage: a non-empty subset of the ids of the chunks given to the
    extractor. ``key`` names the slot the fact fills (for example ``"caroline|lives_in"``);
    a newer fact with the same key and different content supersedes the older one. Facts
    without a key never supersede anything.
    """

    content: str
    message_ids: tuple[uuid.UUID, ...]
    fact_type: str = "statement"
    entities: tuple[str, ...] = ()
    confidence: float = 1.0
    occurred_at: datetime | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if not self.content.strip():
            raise ValueError("a fact has content")
        if not self.message_ids:
            raise ValueError("a fact has lineage to at least one message")
        if self.fact_type not in FACT_TYPES:
            raise ValueError(f"fact_type must be one of {FACT_TYPES}, got {self.fact_type!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence}")


@runtime_checkable
class FactExtractor(Protocol):
    """Turns consecutive messages of one session into facts.

    ``messages`` are single-message chunks of one session in sequence order. An extractor
    may be called again with the same messages after a crash, so it must not keep state
    that changes its output. It raises on failure; the M2 layer then retries later.

    An extractor that calls no model and no network service may set a class attribute
    ``local = True``: the pipeline then extracts inside the step's transaction (one
    transaction a step instead of two). Without it, extraction holds no transaction.
    """

    name: str

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]: ...
