"""Exactly-once M1/M2 across processes: two OS processes write, edit and delete messages in
the same sessions with their pipelines running, and every surviving message ends up in
exactly one episode and one fact, made of its current text.

Each process is ``pipeline_process.py`` (see there for what it does). To soak it, raise
``MEMFUSE_PROCESS_ROUNDS`` (3 rounds of about 6 s) or change ``MEMFUSE_PROCESS_PHASE`` (how
many seconds the processes stay on one set of sessions, 0.5).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import parts
import pytest
from sqlalchemy import text

from memfuse.memory import MemFuse

SCRIPT = Path(__file__).with_name("pipeline_process.py")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"Tok[0-9a-f]{12}")
PROCESSES = 2
SESSIONS = 3
SECONDS = 4.0
PHASE = float(os.environ.get("MEMFUSE_PROCESS_PHASE", "0.5"))
ROUNDS = int(os.environ.get("MEMFUSE_PROCESS_ROUNDS", "3"))


async def run_process(url: str, user: str, seed: int, start: float) -> None:
    env = {**os.environ, "MEMFUSE_EMBEDDER": "none", "HF_HUB_OFFLINE": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        url,
        user,
        str(SESSIONS),
        str(SECONDS),
        str(seed),
        str(start),
        str(PHASE),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        _, err = await process.communicate()
    errors = err.decode()
    assert process.returncode == 0, f"process {seed} failed:\n{errors[-4000:]}"
    # A failed step would be retried, but none should fail: no deadlock, no torn read.
    assert "processing of session" not in errors, errors[-4000:]


async def rows(mf: MemFuse, sql: str, **params: Any) -> list[Any]:
    async with parts.db(mf) as db:
        return list(await db.execute(text(sql), params))


async def problems(mf: MemFuse, user: str) -> list[str]:
    """Everything that breaks exactly-once in the user's sessions (empty when all is well)."""
    found: list[str] = []
    [user_row] = await rows(mf, "SELECT id FROM memfuse.users WHERE name = :name", name=user)
    user_id = user_row.id
    sessions = await rows(
        mf,
        "SELECT id, name, message_count FROM memfuse.sessions WHERE user_id = :u",
        u=user_id,
    )
    for session in sessions:
        where = f"{session.name}:"
        messages = {
            row.id: row
            for row in await rows(
                mf,
                "SELECT id, seq, name, content FROM memfuse.messages WHERE session_id = :s",
                s=session.id,
            )
        }
        progress = {
            row.layer: row.processed_seq
            for row in await rows(
                mf,
                "SELECT layer, processed_seq FROM memfuse.layer_progress WHERE session_id = :s",
                s=session.id,
            )
        }
        for layer in ("m1", "m2"):
            if progress.get(layer, 0) != session.message_count:
                found.append(
                    f"{where} {layer} progress {progress.get(layer)} != {session.message_count}"
                )

        episodes = await rows(
            mf,
            "SELECT id, content, message_ids, first_seq, last_seq FROM memfuse.episodes"
            " WHERE session_id = :s ORDER BY first_seq",
            s=session.id,
        )
        in_episodes = Counter(i for e in episodes for i in e.message_ids)
        missing = [m for m in messages if in_episodes[m] == 0]
        if missing:
            found.append(f"{where} {len(missing)} of {len(messages)} messages in no episode")
        repeated = [m for m, n in in_episodes.items() if n > 1 and m in messages]
        if repeated:
            found.append(f"{where} {len(repeated)} messages in more than one episode")
        deleted = [m for m in in_episodes if m not in messages]
        if deleted:
            found.append(f"{where} episodes name {len(deleted)} deleted messages")
        for episode in episodes:
            members = [messages[i] for i in episode.message_ids if i in messages]
            expected = "\n".join(f"{m.name}: {m.content}" for m in members)
            if len(members) == len(episode.message_ids) and episode.content != expected:
                found.append(f"{where} episode {episode.first_seq} is not its messages' text")
            seqs = [m.seq for m in members]
            if seqs != sorted(seqs) or (
                seqs and (seqs[0], seqs[-1]) != (episode.first_seq, episode.last_seq)
            ):
                found.append(f"{where} episode {episode.first_seq} has a wrong range")

        facts = await rows(
            mf,
            "SELECT content, message_ids, episode_id FROM memfuse.facts WHERE session_id = :s",
            s=session.id,
        )
        in_facts = Counter(i for f in facts for i in f.message_ids)
        if any(in_facts[m] != 1 for m in messages):
            bad = sum(1 for m in messages if in_facts[m] != 1)
            found.append(f"{where} {bad} of {len(messages)} messages not in exactly one fact")
        holder = {i: e.id for e in episodes for i in e.message_ids}
        unlinked = sum(1 for f in facts if f.episode_id != holder.get(f.message_ids[0]))
        if unlinked:
            found.append(f"{where} {unlinked} facts not linked to their first message's episode")
        for fact in facts:
            sources = [messages.get(i) for i in fact.message_ids]
            if None in sources:
                found.append(f"{where} a fact derives from a deleted message")
                continue
            current = {t for m in sources if m is not None for t in TOKEN.findall(m.content)}
            if not set(TOKEN.findall(fact.content)) <= current:
                found.append(f"{where} a fact derives from an old text: {fact.content!r}")

    live_slots = await rows(
        mf,
        "SELECT fact_key, count(*) AS n FROM memfuse.facts WHERE user_id = :u"
        " AND valid_to IS NULL AND fact_key IS NOT NULL GROUP BY fact_key HAVING count(*) > 1",
        u=user_id,
    )
    found.extend(f"slot {row.fact_key} has {row.n} live facts" for row in live_slots)
    return found


@pytest.mark.slow
async def test_two_processes_editing_the_same_sessions_keep_m1_and_m2_exactly_once(
    database_url: str,
) -> None:
    """Two processes, each with its pipeline on, write, edit and delete in the same sessions."""
    report: list[str] = []
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        for round_ in range(ROUNDS):
            user = f"user-{round_}-{uuid.uuid4().hex[:6]}"
            await mf.init(user)
            start = time.time() + 2  # both processes are up by then
            await asyncio.gather(
                *(run_process(database_url, user, 10 * round_ + p, start) for p in range(PROCESSES))
            )
            await mf.flush()
            report.extend(f"round {round_}: {p}" for p in await problems(mf, user))
    assert not report, "\n".join(report)
