"""A ``MemFuse`` whose in-process embedding worker runs the real model, loaded once per run."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
