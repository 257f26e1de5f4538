"""Waiting for a signal with a time limit, the one way the background loops do it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


async def wait_at_most(waitable: Awaitable[object], seconds: float) -> None:
    """Await ``waitable`` until it finishes or ``seconds`` pass, whichever comes first.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 ``wait_for`` can swallow a
    cancellation that arrives just as the awaited event is set, and a ``close()`` that cancels
    the loop would then wait forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await waitable
