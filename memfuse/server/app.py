"""The ASGI app: ``create_app()`` builds it around one :class:`~memfuse.memory.MemFuse`.

The lifespan starts the ``MemFuse`` (the app's own, or a host's that is not started yet) and
closes it only if the app made it. A supervised sweep deletes expired knowledge items every
:data:`SWEEP_SECONDS` (reads already hide them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from memfuse.background import SupervisedTask
from memfuse.config import server_admin_key
from memfuse.memory import MemFuse
from memfuse.server import (
    agents,
    api_keys,
    health,
    inspector,
    knowledge,
    messages,
    sessions,
    users,
)
from memfuse.server.envelope import install_error_handlers
from memfuse.server.limits import MAX_BODY_BYTES, BodyLimit

API_PREFIX = "/api/v1"
SWEEP_SECONDS = 60.0
HEALTH_MAX_AGE = 5.0
"""Seconds a readiness report is served again before the checks run anew."""


def create_app(
    memfuse: MemFuse | None = None,
    *,
    admin_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    health_max_age: float = HEALTH_MAX_AGE,
) -> FastAPI:
    """The REST API over ``memfuse`` (a new ``MemFuse()`` from the environment when None).

    ``admin_key`` None serves without keys: only for a server bound to 127.0.0.1, which
    ``memfuse serve`` enforces; a host that mounts this app enforces it itself.
    """
    owned = memfuse is None
    target = memfuse if memfuse is not None else MemFuse()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await target.start()
        sweep = SupervisedTask("knowledge_sweep", _sweep(target), target.monitor)
        sweep.start()
        try:
            yield
        finally:
            await sweep.stop()
            if owned:
                await target.close()

    app = FastAPI(
        title="memfuse",
        summary="Long-term memory for LLM apps, over the MemFuse REST API",
        lifespan=lifespan,
        docs_url="/docs",
        redirect_slashes=False,
    )
    app.state.memfuse = target
    app.state.admin_key = admin_key
    app.state.health_max_age = health_max_age
    install_error_handlers(app)
    for module in (health, users, agents, sessions, messages, knowledge, api_keys):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health.metrics_router)
    app.include_router(inspector.router)
    app.mount(f"{inspector.PREFIX}/static", inspector.static, name="inspector-static")

    @app.exception_handler(inspector.SignIn)
    async def sign_in(request: Request, error: inspector.SignIn) -> RedirectResponse:
        return RedirectResponse(f"{inspector.PREFIX}/login", status_code=303)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _sweep(memfuse: MemFuse) -> Callable[[], Awaitable[None]]:
    async def loop() -> None:
        while True:
            await memfuse.knowledge.sweep_expired()
            await asyncio.sleep(SWEEP_SECONDS)

    return loop


def app_from_environment() -> FastAPI:
    """The factory ``memfuse serve`` hands uvicorn (each worker process builds its own)."""
    return create_app(admin_key=server_admin_key())
