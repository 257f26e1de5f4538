"""The workload of :mod:`benchmarks.peers` and how one system is measured on it.

The LoCoMo turns as every system gets them (``"{speaker}: {text}"``, the turn's id with it,
one user per conversation) and the questions, then one system at a time: the add loop, settling,
the warm-up, the timed searches and the recall of those same searches (the rule of
:mod:`memfuse.evaluation.locomo`). docs/benchmarks.md says what each figure means.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks.foundation import summary
from memfuse.db.models import message_text
from memfuse.evaluation.locomo import (
    RESULTS_PER_QUESTION,
    Question,
    Retrieved,
    recall_at_budgets,
    summarize,
)
from memfuse.ingest import load_conversations
from memfuse.progress import track


def progress(line: str) -> None:
    """Progress goes to stderr; stdout gets the summary only."""
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - benchmark progress


# --- the data --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One LoCoMo turn as every system gets it: the user, session, id, text and memfuse dict."""

    user: str
    session: str
    id: uuid.UUID
    text: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    """A peer's result in the form the budget rule reads (see ``locomo.Retrieved``)."""

    content: str
    message_ids: tuple[uuid.UUID, ...]


def load_turns(path: Path) -> list[Turn]:
    """Every turn of the file in order, parsed by memfuse's LoCoMo reader (ids included)."""
    turns = []
    for conversation in load_conversations(path):
        for session in conversation.sessions:
            for message in session.messages:
                text = message_text(message["name"], message["content"])
                turns.append(
                    Turn(conversation.user, session.name, uuid.UUID(message["id"]), text, message)
                )
    return turns


def warmup_questions(path: Path, count: int, users: Collection[str]) -> list[tuple[str, str]]:
    """``count`` category-5 questions (never scored) of ``users``, spread over the file."""
    document = json.loads(path.read_text(encoding="utf-8"))
    pool = [
        (f"locomo-{sample['sample_id']}", str(qa["question"]))
        for sample in document
        for qa in sample.get("qa", [])
        if qa.get("category") == 5
        and str(qa.get("question", "")).strip()
        and f"locomo-{sample['sample_id']}" in users
    ]
    if not pool or count <= 0:
        return []
    return [pool[index * len(pool) // count] for index in range(min(count, len(pool)))]


# --- measuring --------------------------------------------------------------------------------


class System(Protocol):
    """One memory system as the benchmark drives it."""

    async def prepare(self, turns: Sequence[Turn]) -> None:
        """What an app has ready before its users speak (not timed)."""

    async def add(self, turn: Turn) -> None: ...

    async def settle(self) -> None:
        """Wait until every turn added is found by vector search, as the peers' turns are
        when add() returns (nothing to wait for if add() did it)."""

    async def finish(self) -> None:
        """Wait until the work derived from the turns is done too (memfuse's M1 episodes and
        M2 facts with their vectors); nothing for a system that derives nothing."""

    async def search(self, user: str, question: str) -> Sequence[Retrieved]: ...

    def counters(self) -> dict[str, int]:
        """Running counts of the calls the system makes (model, LLM, caches)."""

    async def forget_queries(self) -> None:
        """Drop what the system remembers of questions already asked (a query-embedding
        cache), so that asking them again costs what asking new ones would."""

    async def checks(self) -> dict[str, Any]:
        """What is stored at the end: shows the system kept every turn once."""


@dataclass(slots=True)
class Workload:
    """What every system gets: the turns, the scored questions, the warm-up, the tokenizer."""

    turns: list[Turn]
    questions: list[Question]
    warmup: list[tuple[str, str]]
    count_tokens: Callable[[str], int]


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


async def measure(name: str, system: System, work: Workload) -> dict[str, Any]:
    """Load every turn, settle, warm up, ask every question; the figures and the recall."""
    prepare_started = time.perf_counter()
    await system.prepare(work.turns)
    prepare_s = time.perf_counter() - prepare_started
    counts = [system.counters()]
    latencies: list[float] = []
    started = time.perf_counter()
    for turn in track(work.turns, desc=f"{name} add", unit="turn"):
        call = time.perf_counter()
        await system.add(turn)
        latencies.append((time.perf_counter() - call) * 1000.0)
    load_s = time.perf_counter() - started
    counts.append(system.counters())
    settle_started = time.perf_counter()
    await system.settle()
    settle_s = time.perf_counter() - settle_started
    counts.append(system.counters())
    finish_started = time.perf_counter()
    await system.finish()
    finish_s = time.perf_counter() - finish_started
    counts.append(system.counters())
    turns = len(work.turns)
    add = {
        "turns": turns,
        "writers": 1,
        "prepare_s": round(prepare_s, 2),
        "add_loop_s": round(load_s, 2),
        "add_calls_per_s": round(turns / load_s, 1),
        "add_call_ms": {**summary(latencies), "mean_ms": round(statistics.mean(latencies), 4)},
        "settle_s": round(settle_s, 2),
        "searchable_msgs_per_s": round(turns / (load_s + settle_s), 1),
        "finish_s": round(finish_s, 2),
        "processed_msgs_per_s": round(turns / (load_s + settle_s + finish_s), 1),
    }
    progress(f"{name} add: {json.dumps(add)}")

    for user, text in work.warmup:
        await system.search(user, text)
    counts.append(system.counters())
    found: list[Sequence[Retrieved]] = []
    times: list[float] = []
    for question in track(work.questions, desc=f"{name} search", unit="q"):
        call = time.perf_counter()
        results = await system.search(question.user, question.question)
        times.append((time.perf_counter() - call) * 1000.0)
        found.append(results)
    counts.append(system.counters())
    returned = [len(results) for results in found]
    search = {
        "questions": len(work.questions),
        "warmup_searches": len(work.warmup),
        "top_k": RESULTS_PER_QUESTION,
        **summary(times),
        "mean_ms": round(statistics.mean(times), 4),
        "results_per_question": {
            "min": min(returned),
            "mean": round(statistics.mean(returned), 1),
            "fewer_than_top_k": sum(count < RESULTS_PER_QUESTION for count in returned),
        },
    }
    progress(f"{name} search: {json.dumps(search)}")
    recalls = [
        recall_at_budgets(question, results, work.count_tokens)
        for question, results in zip(work.questions, found, strict=True)
    ]
    recall = summarize(work.questions, recalls)
    overall = {key: value for key, value in recall.items() if key != "per_category"}
    progress(f"{name} recall: {json.dumps(overall)}")
    calls = {
        "add": difference(counts[1], counts[0]),
        "settle": difference(counts[2], counts[1]),
        "finish": difference(counts[3], counts[2]),
        "warmup": difference(counts[4], counts[3]),
        "search": difference(counts[5], counts[4]),
    }
    concurrent = {
        str(searchers): await search_concurrently(system, work.questions, searchers)
        for searchers in CONCURRENT_SEARCHERS
    }
    progress(f"{name} concurrent search: {json.dumps(concurrent)}")
    return {
        "add": add,
        "search": search,
        "concurrent_search": concurrent,
        "recall": recall,
        "calls": calls,
    }


CONCURRENT_SEARCHERS = (1, 8, 32)
"""Searchers asking at once in the concurrency phase (issue 15)."""


async def search_concurrently(
    system: System, questions: Sequence[Question], searchers: int
) -> dict[str, Any]:
    """Every question once, asked by ``searchers`` tasks that each take the next one as they
    finish; searches per second over the whole phase and each call's latency."""
    await system.forget_queries()
    pending = iter(questions)
    times: list[float] = []

    async def searcher() -> None:
        for question in pending:  # shared: each question is taken by one searcher
            call = time.perf_counter()
            await system.search(question.user, question.question)
            times.append((time.perf_counter() - call) * 1000.0)

    started = time.perf_counter()
    await asyncio.gather(*(searcher() for _ in range(searchers)))
    elapsed = time.perf_counter() - started
    return {
        "searchers": searchers,
        "searches": len(times),
        "searches_per_s": round(len(times) / elapsed, 1),
        **summary(times),
    }
