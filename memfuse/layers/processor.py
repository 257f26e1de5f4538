"""The contract between the pipeline and a derived layer (M1 episodes, M2 facts).

A layer processes a session in three steps so that slow work (an LLM call) holds no
transaction: ``load`` reads what it needs next to the new messages, ``compute`` does the
work outside any transaction, and ``store`` writes the result in the transaction that
also advances the layer's progress. A layer whose ``compute`` is ``local`` (pure
computation in this process: no model, no network) runs all three in one transaction
instead, which saves a transaction and its locks per step; a lock is never held across a
model or network call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.repositories.progress import Progress
from memfuse.types import ChunkData

Context = TypeVar("Context")
Result = TypeVar("Result")


class LayerProcessor(Protocol[Context, Result]):
    """One derived layer; ``layer`` is ``"m1"`` or ``"m2"``, ``operation`` its monitor name."""

    layer: str
    operation: str
    local: bool

    async def load(self, db: AsyncSession, progress: Progress) -> Context: ...

    async def compute(self, messages: Sequence[ChunkData], context: Context) -> Result: ...

    async def store(self, db: AsyncSession, progress: Progress, result: Result) -> None: ...
