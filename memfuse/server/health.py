"""Health: ``/health`` (the SDK's: liveness and the API version), ``/health/live`` (the
process answers; no database call) and ``/health/ready`` (the checks of ``mf.health()``:
database, schema, queue depth, dead letters, pipeline, background tasks; cached for
``health_max_age`` seconds, so a probe every second costs one check per interval). All three
are open without a key: they tell nothing about any user. ``/metrics`` (Prometheus text) needs
the admin key.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from memfuse.server.auth import Principal, memfuse_of, principal
from memfuse.server.envelope import failure, success

API_VERSION = "0.3.3"
"""The MemFuse REST API this server implements: the SDK release it was built against. The SDK
warns when the minor version differs from its own."""

router = APIRouter(tags=["health"])


@router.get("/health")
@router.get("/health/", include_in_schema=False)
async def health() -> JSONResponse:
    data = {"status": "ok", "version": API_VERSION, "memfuse_version": version("memfuse")}
    return success(data, "server is up")


@router.get("/health/live")
async def live() -> JSONResponse:
    """The process is up and serving (no database call)."""
    return success({"status": "ok"}, "alive")


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready for traffic when every check passes (503 naming the failed ones otherwise)."""
    report = await memfuse_of(request).health(max_age=request.app.state.health_max_age)
    checks = [
        {"name": check.name, "ok": check.ok, "detail": check.detail} for check in report.checks
    ]
    if report.ok:
        return success({"status": "ready", "checks": checks}, "ready")
    failed = [
        {"field": check.name, "message": check.detail} for check in report.checks if not check.ok
    ]
    return failure(503, f"not ready: {', '.join(c['field'] for c in failed)}", failed)


metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(
    request: Request, caller: Annotated[Principal, Depends(principal)]
) -> PlainTextResponse:
    """The monitor and pool figures in Prometheus' text format (the admin key)."""
    caller.require_admin("reading metrics")
    text = await memfuse_of(request).metrics_text()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
