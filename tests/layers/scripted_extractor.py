"""A fact extractor scripted by the tests, to pin down what the M2 layer does with facts.

It returns the facts scripted for each message text (or those of a real ``delegate``
extractor), and can pause or fail on demand to simulate crashes and outages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from memfuse.layers.extractors import FactCandidate, FactExtractor
from memfuse.types import ChunkData


class ScriptedExtractor:
    """Returns the facts a test scripted for each message text; can pause or fail on demand."""

    name = "scripted"

    def __init__(
        self,
        facts: Mapping[str, Sequence[tuple[str, str | None]]],
        delegate: FactExtractor | None = None,
    ) -> None:
        self.facts = facts
        self.delegate = delegate
        self.calls = 0
        self.fail_next = 0
        self.pause_on_call: int | None = None
        self.paused = asyncio.Event()
        self.release = asyncio.Event()

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        self.calls += 1
        if self.pause_on_call == self.calls:
            self.paused.set()
            await self.release.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("extractor unavailable")
        if self.delegate is not None:
            return await self.delegate.extract(messages)
        return [
            FactCandidate(
                content,
                (message.message_ids[0],),
                fact_type="attribute" if key else "statement",
                key=key,
            )
            for message in messages
            for content, key in self.facts.get(message.content, ())
        ]
