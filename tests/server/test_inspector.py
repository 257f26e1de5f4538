"""The memory inspector in a real browser: headless Chromium (Debian's, which .ci/run installs)
driven by Playwright against the app served by uvicorn, on a MemFuse with the real model, its
worker and pipeline. Screenshots go to docs/images/ when MEMFUSE_SCREENSHOTS is set."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from memfuse.memory import MemFuse
from memfuse.server.app import create_app
from tests.server.envelopes import ADMIN_KEY

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = bool(os.environ.get("MEMFUSE_REQUIRE_BROWSER"))
"""Set by .ci/run, which installs Debian's Chromium: there a missing browser fails the run."""


def need_chromium() -> str:
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("MEMFUSE_REQUIRE_BROWSER is set and no chromium is installed")
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    return CHROMIUM


IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def site(mf: MemFuse) -> AsyncIterator[str]:
    """The app on a free local port, with alice's and bob's memory in it."""
    alice = await mf.init("alice", session="garden")
    await alice.add(
        [
            {
                "role": "user",
                "content": "I planted tomatoes and basil on Saturday.",
                "name": "Alice",
            },
            {"role": "assistant", "content": "Lovely! Basil likes the sun."},
            {"role": "user", "content": "I moved to Porto last year.", "name": "Alice"},
            {"role": "user", "content": "Actually I moved to Lisbon in May.", "name": "Alice"},
        ]
    )
    await alice.add_knowledge(["Alice is allergic to peanuts"])
    bob = await mf.init("bob", session="private")
    await bob.add([{"role": "user", "content": "Bob's safe code is 4711"}])
    await mf.flush()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(mf, admin_key=ADMIN_KEY), port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}/inspector"
    server.should_exit = True
    await task


def shot(name: str) -> Path | None:
    return IMAGES / f"inspector_{name}.png" if os.environ.get("MEMFUSE_SCREENSHOTS") else None


async def test_browse_search_and_monitor_as_the_admin(site: str, tmp_path: Path) -> None:
    chromium = need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{site}/")
        assert page.url.endswith("/inspector/login")  # no key yet
        await page.fill("#key", "wrong")
        await page.click("button[type=submit]")
        assert "not valid" in await page.inner_text("main")
        await page.fill("#key", ADMIN_KEY)
        await page.keyboard.press("Enter")  # the form works from the keyboard
        await page.wait_for_url(f"{site}/")
        assert {"alice", "bob"} <= set((await page.inner_text("main")).split())

        await page.click("text=alice")
        text = await page.inner_text("main")
        assert "garden" in text and "Alice is allergic to peanuts" in text
        await page.screenshot(path=shot("user") or tmp_path / "user.png", full_page=True)

        await page.click("text=garden")
        text = await page.inner_text("main")
        assert "I planted tomatoes and basil on Saturday." in text
        assert "M1 episodes" in text and "M2 facts" in text
        await page.screenshot(path=shot("session") or tmp_path / "session.png", full_page=True)

        await page.go_back()
        await page.focus("#q")
        await page.keyboard.type("Where does Alice live now?")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#results")
        headers = await page.locator("#results th").all_inner_texts()
        assert any(header.endswith(("_vector", "_text")) for header in headers)
        top3 = await page.locator("#results tbody tr").all_inner_texts()
        assert any("Lisbon" in row for row in top3[:3]), top3
        assert await page.locator("#results tr.kept").count() >= 1
        ranks = await page.locator("#results td[data-list]").all_inner_texts()
        assert any(rank.strip().isdigit() for rank in ranks)
        await page.screenshot(path=shot("search") or tmp_path / "search.png", full_page=True)

        await page.click("text=Monitor")
        await page.wait_for_selector("#operations")
        operations = await page.inner_text("#operations")
        assert "retrieval_query" in operations
        assert await page.locator("#operations svg.chart").count() >= 1
        await page.screenshot(path=shot("monitor") or tmp_path / "monitor.png", full_page=True)
        await browser.close()


async def test_a_user_key_sees_only_its_user(site: str, mf: MemFuse) -> None:
    chromium = need_chromium()
    from playwright.async_api import async_playwright

    alice = await mf.tenancy.find_user("alice")
    bob = await mf.tenancy.find_user("bob")
    assert alice is not None and bob is not None
    key = (await mf.api_keys.create(alice.id)).key
    assert key is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = await browser.new_page()
        await page.goto(f"{site}/login")
        await page.fill("#key", key)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{site}/")
        users = await page.inner_text("main")
        assert "alice" in users and "bob" not in users
        response = await page.goto(f"{site}/users/{bob.id}")
        assert response is not None and response.status == 404
        assert "4711" not in await page.content()
        response = await page.goto(f"{site}/users/{bob.id}/search?q=safe+code")
        assert response is not None and response.status == 404
        response = await page.goto(f"{site}/monitor")
        assert response is not None and response.status == 403
        await browser.close()
