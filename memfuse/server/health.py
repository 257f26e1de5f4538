"""``GET /api/v1/health``: liveness, open to everyone (no key), no database call.

The SDK calls it twice per ``init()`` and needs only a 200 and the API version; the database's
state is ``mf.health()`` / ``memfuse doctor``'s to report.
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from memfuse.server.envelope import success

API_VERSION = "0.3.3"
"""The MemFuse REST API this server implements: the SDK release it was built against. The SDK
warns when the minor version differs from its own."""

router = APIRouter(tags=["health"])


@router.get("/health")
@router.get("/health/", include_in_schema=False)
async def health() -> JSONResponse:
    data = {"status": "ok", "version": API_VERSION, "memfuse_version": version("memfuse")}
    return success(data, "server is up")
