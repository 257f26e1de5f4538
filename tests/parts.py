"""A started ``MemFuse``'s parts, reached as a host app reaches them: through its container.

The facade keeps its started parts private; tests that look inside (the worker's queue, the
pipeline's processors, a database session) resolve them from ``mf.container`` here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from memfuse import MemFuse
from memfuse.container import resolve
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.layers.pipeline import LayerPipeline
from memfuse.services.messages import MessageBuffer


async def worker(mf: MemFuse) -> EmbeddingWorker:
    """The in-process embedding worker; the test needs one (an embedder is configured)."""
    found = await resolve(mf.container.embedding_worker)
    assert found is not None, "no in-process worker: the test must configure an embedder"
    return found


async def pipeline(mf: MemFuse) -> LayerPipeline:
    return await resolve(mf.container.pipeline)


async def write_buffer(mf: MemFuse) -> MessageBuffer | None:
    return await resolve(mf.container.write_buffer)


@asynccontextmanager
async def db(mf: MemFuse) -> AsyncIterator[AsyncSession]:
    """A session on ``mf``'s engine and schema, for reading rows directly."""
    factory = await resolve(mf.container.session_factory)
    async with factory() as session:
        yield session


@asynccontextmanager
async def transaction(mf: MemFuse) -> AsyncIterator[AsyncSession]:
    """The same, in a transaction committed at the end of the block."""
    factory = await resolve(mf.container.session_factory)
    async with factory.begin() as session:
        yield session
