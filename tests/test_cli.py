"""The command line: the demo end to end, and clear errors with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from memfuse.memory import MemFuse

MEMFUSE = [sys.executable, "-m", "memfuse.cli"]


def test_demo_ingests_a_conversation_and_shows_every_layer(database_url: str) -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "demo"],
        check=True,
        capture_output=True,
        text=True,
    )
    out = result.stdout
    assert "added 5 messages to session 'spring-catch-up'" in out
    assert "#1 Ana: Big news: I moved to Lisbon last month." in out
    assert "2023-05-08 13:56 - 14:00, 5 messages" in out
    assert "superseded 2023-06-20] Ana live in Porto" in out
    assert "yesterday (7 May 2023)" in out
    madeira = out.split("search: 'Who is travelling to Madeira?'")[1].splitlines()
    assert "Ana: I'm flying to Madeira next Friday with my sister Rita." in madeira[1]
    for operation in ("m0_operation", "m1_operation", "m2_operation", "buffer_flush"):
        assert operation in out


def test_ingest_imports_a_file_and_is_idempotent_for_locomo(
    database_url: str, tmp_path: Path
) -> None:
    sample = {
        "sample_id": "tiny",
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Caroline", "dia_id": "D1:1", "text": "I went hiking yesterday."},
                {"speaker": "Melanie", "dia_id": "D1:2", "text": "I painted a lake."},
            ],
            "session_2_date_time": "10:00 am on 9 May, 2023",
            "session_2": [{"speaker": "Caroline", "dia_id": "D2:1", "text": "I love tea."}],
        },
        "qa": [],
    }
    file = tmp_path / "locomo.json"
    file.write_text(json.dumps([sample]))
    command = [*MEMFUSE, "--database-url", database_url, "ingest", str(file), "--quiet"]
    first = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "added 3 messages in 2 sessions of 1 user(s)" in first.stdout
    assert "processed into episodes and facts" in first.stdout
    subprocess.run(command, check=True, capture_output=True, text=True)

    async def stored() -> list[str]:
        async with MemFuse(database_url, pipeline_auto=False) as mf:
            memory = await mf.init("locomo-tiny", session="session_1")
            messages = await memory.list_messages(all_sessions=True, order="asc")
            return [f"{m.name}: {m.content} @ {m.created_at:%Y-%m-%d}" for m in messages]

    assert asyncio.run(stored()) == [
        "Caroline: I went hiking yesterday. @ 2023-05-08",
        "Melanie: I painted a lake. @ 2023-05-08",
        "Caroline: I love tea. @ 2023-05-09",
    ]


def test_ingest_rejects_a_bad_file_naming_the_place(database_url: str, tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"user": "ana", "messages": [{"role": "robot", "content": "x"}]}))
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "ingest", str(file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "message 1: field 'role'" in result.stderr


def test_bad_setting_exits_non_zero_with_the_setting_named() -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", "mysql://root:pw@localhost/db", "db", "current"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "database_url" in result.stderr
    assert "pw@" not in result.stderr


def test_worker_once_embeds_what_is_queued(database_url: str) -> None:
    async def write() -> None:
        async with MemFuse(database_url, pipeline_auto=False, embedder="none") as mf:
            memory = await mf.init("ana")
            await memory.add([{"role": "user", "content": "I adopted a cat named Miso."}])
            await mf.flush()

    asyncio.run(write())
    env = {**os.environ, "MEMFUSE_EMBEDDER": "local", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "worker", "--once"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert "embedded 3 rows" in result.stdout, "the message, its episode and its fact"

    async def embedded() -> list[bool]:
        async with MemFuse(database_url, pipeline_auto=False, embedder="none") as mf:
            memory = await mf.init("ana")
            messages = await memory.list_messages(all_sessions=True)
            rows = [*messages, *await memory.list_episodes(all_sessions=True)]
            return [row.embedded for row in rows]

    assert asyncio.run(embedded()) == [True, True]
