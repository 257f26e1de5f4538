"""Concurrent search queries share model calls.

The local model runs in one thread, so concurrent searches used to queue for it one query at a
time. Here the queries waiting when the model is free go to it together (up to ``max_batch``),
and those that arrive while that call runs go together in the next one: no timer, so a lone
query goes at once and pays nothing extra, and under load the model makes one call per round
instead of one per query. Measured in the peers benchmark's concurrent searches
(docs/benchmarks.md).

An embedder with ``embed_queries(texts)`` is called with the batch (a failure fails the batch's
callers); one without it gets ``embed_query`` per text (gathered, each caller its own outcome),
since its query vectors may differ from its document ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from memfuse.embedding.embedders import Embedder
from memfuse.errors import EmbeddingError

MAX_QUERY_BATCH = 32


@runtime_checkable
class BatchQueryEmbedder(Protocol):
    async def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """One query vector per text, in order."""
        ...


class QueryBatcher:
    """Embeds search queries, batching those that arrive while the model is busy."""

    def __init__(self, embedder: Embedder, *, max_batch: int = MAX_QUERY_BATCH) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.calls = 0
        """Model calls made (a batch is one); ``queries / calls`` is the mean batch."""
        self.queries = 0
        self._waiting: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> list[float]:
        """The vector of ``text`` as a query; raises what the embedder raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._waiting.append((text, future))
        runner = self._runner
        if runner is None or runner.done() or runner.get_loop() is not loop:
            self._runner = loop.create_task(self._run(), name="memfuse-query-batcher")
        return await future

    async def _run(self) -> None:
        """Embed what waits, a batch at a time, until nothing does."""
        while self._waiting:
            taken = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            batch = [(text, future) for text, future in taken if not future.done()]
            if not batch:
                continue
            self.calls += 1
            self.queries += len(batch)
            try:
                outcomes = await self._embed([text for text, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting.clear()
                raise
            except Exception as error:  # every caller in the batch gets the embedder's error
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _embed(self, texts: list[str]) -> list[list[float] | BaseException]:
        """One outcome per text: its vector, or what embedding it raised."""
        if len(texts) > 1 and isinstance(self.embedder, BatchQueryEmbedder):
            vectors = await self.embedder.embed_queries(texts)
            if len(vectors) != len(texts):
                raise EmbeddingError(
                    f"the embedder returned {len(vectors)} vectors for {len(texts)} queries"
                )
            return list(vectors)
        return list(
            await asyncio.gather(
                *(self.embedder.embed_query(text) for text in texts), return_exceptions=True
            )
        )
