"""The memory inspector: server-rendered pages under ``/inspector`` (Jinja2, one stylesheet,
no script, no CDN), behind the same keys as the API.

Users -> sessions (M0 messages, M1 episodes, M2 facts live and superseded with lineage) and
knowledge items; a search that shows, for each result, its fused score, its rank in every list
(``query(..., explain=True)``) and whether the token budget kept it; the monitor's operations
with p50/p95 over their recent samples as inline SVG, queue depth, dead letters and alerts.
A browser signs in with a key (an HttpOnly cookie); a user's key sees only its user. Every page
is plain links and forms, so it works from the keyboard.
"""

from __future__ import annotations

import statistics
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from memfuse.server.auth import (
    KEY_COOKIE,
    Principal,
    memfuse_of,
    principal,
    principal_of_key,
    reachable_user,
)
from memfuse.server.envelope import ApiError
from memfuse.types import Page, SearchResult

PREFIX = "/inspector"
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix=PREFIX, include_in_schema=False)
static = StaticFiles(directory=HERE / "static")
PAGE = Page(limit=500, offset=0, newest_first=False)
SEARCH_RESULTS = 20
CHART_WINDOW = 20
"""Samples per point of an operation's p50/p95 line, at most (fewer for short histories)."""


async def viewer(request: Request) -> Principal:
    """The caller of a page; without a key, the sign-in page (a redirect, not an envelope)."""
    try:
        return await principal(request)
    except ApiError as error:
        if error.status == 401:
            raise SignIn() from None
        raise


class SignIn(Exception):
    """Answered by the app with a redirect to the sign-in page."""


Viewer = Annotated[Principal, Depends(viewer)]


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"base": PREFIX, **context})


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", message=None)


@router.post("/login", response_model=None)
async def login(request: Request, key: Annotated[str, Form()]) -> Response:
    if await principal_of_key(request, key.strip()) is None:
        return page(request, "login.html", message="That key is not valid.")
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    response.set_cookie(KEY_COOKIE, key.strip(), httponly=True, samesite="strict")
    return response


@router.get("/", response_class=HTMLResponse)
async def users(request: Request, caller: Viewer) -> HTMLResponse:
    rows = await memfuse_of(request).tenancy.list_users(PAGE, only=caller.user_id)
    return page(request, "users.html", users=rows)


@router.get("/users/{user_id}", response_class=HTMLResponse)
async def user(request: Request, caller: Viewer, user_id: uuid.UUID) -> HTMLResponse:
    row = await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    sessions = await memfuse.tenancy.find_sessions(user_id=user_id, page=PAGE)
    agents = {
        agent.id: agent.name for agent in await memfuse.tenancy.find_agents(visible_to=user_id)
    }
    knowledge = await memfuse.knowledge.list_live(user_id, PAGE)
    return page(
        request, "user.html", user=row, sessions=sessions, agents=agents, knowledge=knowledge
    )


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def session(request: Request, caller: Viewer, session_id: uuid.UUID) -> HTMLResponse:
    memfuse = memfuse_of(request)
    found = await memfuse.tenancy.get_session(session_id)
    if found is None or not caller.can_reach(found.user_id):
        raise ApiError(404, f"session {session_id} does not exist")
    memory = await memfuse.session_memory(session_id)
    messages = await memory.list_messages(limit=1000, order="asc")
    episodes = await memory.list_episodes(limit=1000, order="asc")
    facts = await memory.list_facts(limit=1000, order="asc", include_superseded=True)
    return page(
        request,
        "session.html",
        scope=memory.scope,
        messages=messages,
        episodes=episodes,
        facts=facts,
        seq_of={message.id: message.seq for message in messages},
    )


@router.get("/users/{user_id}/search", response_class=HTMLResponse)
async def search(
    request: Request,
    caller: Viewer,
    user_id: uuid.UUID,
    q: str = "",
    max_tokens: Annotated[int, Query(ge=1, le=100_000)] = 500,
) -> HTMLResponse:
    """The search as ``query()`` runs it, with every result's ranks and the budget's verdict."""
    row = await reachable_user(request, caller, user_id)
    memfuse = memfuse_of(request)
    results: list[SearchResult] = []
    kept: set[uuid.UUID] = set()
    if q.strip():
        results = await memfuse.search(user_id, q, SEARCH_RESULTS, explain=True)
        budget = await memfuse.search(user_id, q, max_tokens=max_tokens)
        kept = {result.id for result in budget}
    lists = sorted({name for result in results for name in (result.ranks or {})})
    rows = [{"result": result, "kept": result.id in kept} for result in results]
    spent = sum(result.token_count for result in results if result.id in kept)
    settings = memfuse.settings
    return page(
        request,
        "search.html",
        user=row,
        query=q,
        max_tokens=max_tokens,
        rows=rows,
        lists=lists,
        spent=spent,
        candidates=settings.search_candidates,
        rrf_k=settings.search_rrf_k,
    )


@router.get("/monitor", response_class=HTMLResponse)
async def monitor(request: Request, caller: Viewer) -> HTMLResponse:
    caller.require_admin("the monitor")
    memfuse = memfuse_of(request)
    await memfuse.metrics()  # refreshes the queue gauges
    watcher = memfuse.monitor
    thresholds = watcher.thresholds
    operations = [
        {
            "name": name,
            "stats": stats,
            "threshold": thresholds.get(name),
            "chart": _chart(watcher.history(name)),
        }
        for name, stats in sorted(watcher.all_stats().items())
    ]
    return page(
        request,
        "monitor.html",
        operations=operations,
        gauges=watcher.gauges(),
        alerts=watcher.alerts(),
    )


def _chart(samples: list[float], width: int = 260, height: int = 48) -> str:
    """An inline SVG of the rolling p50 and p95 over the samples (oldest left)."""
    if not samples:
        return ""
    window = max(1, min(CHART_WINDOW, len(samples) // 12))
    points = [
        samples[start : start + window]
        for start in range(0, len(samples) - window + 1, max(window // 2, 1))
    ]
    p50 = [statistics.median(chunk) for chunk in points]
    p95 = [sorted(chunk)[min(len(chunk) - 1, int(len(chunk) * 0.95))] for chunk in points]
    top = max(p95) or 1.0
    step = width / max(len(points) - 1, 1)

    def line(values: list[float], colour: str) -> str:
        coordinates = " ".join(
            f"{index * step:.1f},{height - 2 - (value / top) * (height - 4):.1f}"
            for index, value in enumerate(values)
        )
        return (
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coordinates}"/>'
        )

    return (
        f'<svg class="chart" role="img" aria-label="p50 and p95 over recent samples, '
        f'peak {top:.1f} ms" width="{width}" height="{height}">'
        f"{line(p50, '#1a56c4')}{line(p95, '#e8890c')}</svg>"
    )
