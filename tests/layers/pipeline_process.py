"""One process of the multi-process pipeline test: writes, edits and deletes messages.

Run as ``python pipeline_process.py URL USER SESSIONS SECONDS SEED START PHASE``. It opens a
MemFuse with its background pipeline on, and for ``SECONDS`` adds, edits and deletes messages
at random, from two tasks at once, while another such process does the same to the same
sessions. Every ``PHASE`` seconds after the wall-clock time ``START`` both processes move on
to ``SESSIONS`` new sessions (``phase-<k>-<n>``), so the first steps of a session, when its
progress rows do not exist yet, happen often. Then it flushes and exits.
Every message text carries a token (``Tok`` and hex digits) that is new for each write and
each edit, so the test can tell which version of a message an episode or a fact was made of.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

from memfuse.errors import NotFoundError
from memfuse.memory import MemFuse, Memory

SETTINGS = {
    "pipeline_batch_messages": 4,
    "pipeline_poll_interval": 0.2,
    "episode_target_tokens": 30,
    "episode_max_tokens": 60,
}
"""Small batches and episodes, so sessions are processed in many steps and episodes reopen."""


def message_text(rng: random.Random, speaker: str) -> dict[str, str]:
    token = f"Tok{uuid.uuid4().hex[:12]}"
    content = f"I live in {token}." if rng.random() < 0.2 else f"I painted the {token} lake."
    return {"role": "user", "name": speaker, "content": content}


class Phases:
    """The sessions both processes work on now: new ones every ``length`` seconds."""

    def __init__(self, mf: MemFuse, user: str, sessions: int, start: float, length: float):
        self.mf = mf
        self.user = user
        self.sessions = sessions
        self.start = start
        self.length = length
        self.memories: dict[tuple[int, int], Memory] = {}

    async def pick(self, rng: random.Random) -> Memory:
        phase = max(0, int((time.time() - self.start) / self.length))
        key = (phase, rng.randrange(self.sessions))
        if key not in self.memories:
            name = f"phase-{key[0]}-{key[1]}"
            self.memories[key] = await self.mf.init(self.user, session=name)
        return self.memories[key]


async def act(phases: Phases, rng: random.Random, speaker: str, until: float) -> int:
    operations = 0
    while time.monotonic() < until:
        memory = await phases.pick(rng)
        roll = rng.random()
        if roll < 0.5:
            count = rng.randint(1, 3)
            await memory.add([message_text(rng, speaker) for _ in range(count)])
        else:
            messages = await memory.list_messages(limit=30)
            if not messages:
                continue
            target = rng.choice(messages).id
            try:
                if roll < 0.8:
                    await memory.update_message(
                        target, content=message_text(rng, speaker)["content"]
                    )
                else:
                    await memory.delete_message(target)
            except NotFoundError:
                pass  # the other process deleted it first
        operations += 1
        await asyncio.sleep(rng.random() * 0.01)
    return operations


async def main(
    url: str, user: str, sessions: int, seconds: float, seed: int, start: float, phase: float
) -> None:
    rng = random.Random(seed)
    speaker = f"Speaker{seed}"
    async with MemFuse(url, **SETTINGS) as mf:  # type: ignore[arg-type]
        phases = Phases(mf, user, sessions, start, phase)
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(act(phases, random.Random(rng.random()), speaker, until) for _ in range(2))
        )
        await mf.flush()


if __name__ == "__main__":
    url, user, sessions, seconds, seed, start, phase = sys.argv[1:8]
    asyncio.run(
        main(url, user, int(sessions), float(seconds), int(seed), float(start), float(phase))
    )
