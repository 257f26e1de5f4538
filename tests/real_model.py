"""A ``MemFuse`` whose in-process embedding worker runs the real model, loaded once per run."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from dependency_injector import providers

from memfuse.container import Container
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse


@asynccontextmanager
async def memfuse_with_model(
    url: str, model: LocalEmbedder, **settings: object
) -> AsyncIterator[MemFuse]:
    """``model`` is the session-scoped ``model`` fixture of tests/conftest.py."""
    container = Container()
    container.embedder.override(providers.Object(model))
    async with MemFuse(url, container=container, embedder="local", **settings) as mf:
        yield mf


def close_to(a: Sequence[float], b: Sequence[float]) -> bool:
    """The same text's vector, whatever pass or precision made it (a worker's batch may run in
    bfloat16, a query in float32): cosine >= 0.9999; different texts sit far below."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))) >= 0.9999
