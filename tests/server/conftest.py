"""An in-process server: the ASGI app over a started ``MemFuse`` with the real model, its
worker and its pipeline running, reached through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse
from memfuse.server.app import create_app
from tests.real_model import memfuse_with_model
from tests.server.envelopes import ADMIN_KEY


@pytest.fixture
async def mf(database_url: str, model: LocalEmbedder) -> AsyncIterator[MemFuse]:
    async with memfuse_with_model(database_url, model) as mf:
        yield mf


@pytest.fixture
async def client(mf: MemFuse) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server that requires keys; requests carry the admin key by default."""
    app = create_app(mf, admin_key=ADMIN_KEY)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://memfuse.test/api/v1", headers=headers
    ) as client:
        yield client
