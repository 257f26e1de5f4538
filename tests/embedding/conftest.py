"""Fixtures of the worker tests: a MemFuse that owns the schema (no pipeline, no facts, so a
test decides what is queued) and a separate engine for the worker under test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse import MemFuse
from memfuse.db.engines import create_engine


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False, fact_extractor="none") as mf:
        yield mf


@pytest.fixture
async def engine_for_worker(database_url: str, mf: MemFuse) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()
