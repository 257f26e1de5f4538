"""The README's demo: a short multi-session conversation through the whole write path.

It starts the database (embedded when no URL is configured), migrates it, adds two sessions
of a conversation with ``Memory.add``, flushes the layers, then prints the messages (M0),
episodes (M1), facts (M2, with one superseded), searches them, and prints the performance
monitor's report.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from memfuse.config import Settings
from memfuse.embedding import BUNDLED_MODEL_NAME
from memfuse.memory import MemFuse

FIRST = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
SECOND = datetime(2023, 6, 20, 9, 30, tzinfo=UTC)
QUESTIONS = ("Where does Ana live now?", "Who is travelling to Madeira?")

SESSIONS: dict[str, list[tuple[str, str]]] = {
    "spring-catch-up": [
        ("Ana", "Hi! I live in Porto and I work as a nurse at the city hospital."),
        ("assistant", "Nice to meet you, Ana. How was your week?"),
        ("Ana", "I went to a pottery workshop yesterday and made my first bowl."),
        ("Ana", "My favorite food is grilled sardines."),
        ("assistant", "Noted! Sardines and pottery."),
    ],
    "summer-plans": [
        ("Ana", "Big news: I moved to Lisbon last month."),
        ("Ana", "I'm flying to Madeira next Friday with my sister Rita."),
        ("assistant", "Have a great trip!"),
    ],
}


DEMO_IDS = uuid.UUID("5b0d6c1e-4a53-4f0e-9d7e-2f1c8a9e6b10")


def conversation(
    session: str, start: datetime, turns: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Messages with ids derived from their place, so running the demo again adds nothing."""
    return [
        {
            "id": uuid.uuid5(DEMO_IDS, f"{session}/{index}"),
            "role": "assistant" if speaker == "assistant" else "user",
            "name": speaker,
            "content": content,
            "created_at": start + timedelta(minutes=index),
        }
        for index, (speaker, content) in enumerate(turns)
    ]


async def run_demo(settings: Settings, write: Callable[[str], None]) -> None:
    """Run the demo against ``settings``' database, writing what happens through ``write``."""
    async with MemFuse(settings=settings) as mf:
        where = settings.masked_database_url or "the embedded PostgreSQL server"
        write(f"database: {where} (schema {settings.schema!r})")

        memory = None
        for (name, turns), start in zip(SESSIONS.items(), (FIRST, SECOND), strict=True):
            memory = await mf.init(user="demo-ana", agent="assistant", session=name)
            ids = await memory.add(conversation(name, start, turns))
            write(f"added {len(ids)} messages to session {name!r}")
        assert memory is not None
        await mf.flush()

        write("\nM0 messages (newest first):")
        for message in await memory.list_messages(limit=20, all_sessions=True):
            speaker = message.name or message.role
            write(f"  {message.created_at:%Y-%m-%d} #{message.seq} {speaker}: {message.content}")

        write("\nM1 episodes:")
        for episode in await memory.list_episodes(all_sessions=True, order="asc"):
            write(
                f"  {episode.started_at:%Y-%m-%d %H:%M} - {episode.ended_at:%H:%M}, "
                f"{len(episode.message_ids)} messages, {episode.token_count} tokens"
            )

        write("\nM2 facts (live and superseded):")
        facts = await memory.list_facts(all_sessions=True, include_superseded=True, order="asc")
        for fact in facts:
            status = "live" if fact.valid_to is None else f"superseded {fact.valid_to:%Y-%m-%d}"
            when = f", occurred {fact.occurred_at:%Y-%m-%d}" if fact.occurred_at else ""
            write(f"  [{fact.fact_type}, {status}{when}] {fact.content}")

        if mf.worker_stats() is None:
            write("\nembeddings: off (no in-process worker)")
        else:
            messages = await memory.list_messages(limit=100, all_sessions=True)
            episodes = await memory.list_episodes(limit=100, all_sessions=True)
            flags = [row.embedded for row in messages]
            flags += [row.embedded for row in episodes] + [row.embedded for row in facts]
            embedded, total = sum(flags), len(flags)
            local = mf.settings.embedder == "local"
            model = BUNDLED_MODEL_NAME if local else mf.settings.embedding_model
            write(f"\nembeddings ({model}): {embedded} of {total} rows")

        for question in QUESTIONS:
            write(f"\nsearch: {question!r} (top 3, all layers fused)")
            for result in await memory.query(question, top_k=3):
                speaker = f"{result.speaker}: " if result.speaker else ""
                write(
                    f"  {result.score:.4f} [{result.layer}] "
                    f"{result.created_at:%Y-%m-%d} {speaker}{result.content}"
                )
            for best in await memory.query(question, top_k=1, layers=["m2"], unit="item"):
                write(f"  best fact: {best.content}")

        write("\nperformance monitor:")
        write(mf.monitor.report())
        write(
            "\nto browse this memory and see why each search result was returned: "
            "pip install 'memfuse[server]', run `memfuse serve`, and open "
            "http://127.0.0.1:8765/inspector/"
        )
