"""Peers benchmark: memfuse, mem0 and LangGraph's PostgresStore, side by side in one run.

Run: ``.venv/bin/python -m benchmarks.peers [--quick] [--output FILE.json]`` (database:
``MEMFUSE_DATABASE_URL``, else a fresh embedded server in a temporary directory). Needs the
``local`` and ``bench`` extras; a peer that is missing or cannot run offline is reported with
the reason (``{"error": ...}``) and the others go on. The run is offline: :class:`NetworkGuard`
blocks any connection but the database's and loopback. What is measured, and how each system
is configured: docs/benchmarks.md ("Peers, side by side").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import json
import os
import socket
import sys
import time
import traceback
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, machine
from benchmarks.peer_systems import SYSTEMS, opener, pgvector_version, reset_schemas
from benchmarks.peer_workload import (
    System,
    Workload,
    load_turns,
    measure,
    progress,
    warmup_questions,
)
from memfuse.config.urls import asyncpg_connect_args
from memfuse.embedding.embedders import GOMP_SPINCOUNT
from memfuse.evaluation.locomo import (
    BUDGETS,
    RESULTS_PER_QUESTION,
    load_questions,
    minilm_token_counter,
)

PACKAGES = (
    "memfuse",
    "mem0ai",
    "langgraph-checkpoint-postgres",
    "langgraph-checkpoint",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "sentence-transformers",
    "transformers",
    "torch",
    "asyncpg",
    "sqlalchemy",
)
PEER_REQUIREMENTS = (
    "'mem0ai>=2.2'",
    "'langgraph-checkpoint-postgres>=3.2'",
    "'psycopg[binary,pool]>=3.2'",
)


# --- the network guard ------------------------------------------------------------------------


@dataclass(slots=True)
class NetworkGuard:
    """An audit hook that records and blocks every connection or name lookup that leaves the
    machine, except to the benchmark's own database server.

    Only Python-level sockets are seen (asyncpg, urllib, httpx, requests); libpq (psycopg)
    connects in C, to the benchmark's own server. Audit hooks cannot be removed, which is
    fine for a benchmark process.
    """

    allowed: frozenset[str] = frozenset()
    blocked: list[str] = field(default_factory=list)

    @classmethod
    def for_database(cls, url: str) -> NetworkGuard:
        """Allow the database's host (and what it resolves to); resolved before the hook is on."""
        args = asyncpg_connect_args(url)
        host = args["host"]
        if host is None or str(host).startswith("/") or local_host(host):
            return cls()
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, args["port"])}
        return cls(frozenset({str(host), *resolved}))

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and not self.fine(address[0]):
                self.block(f"connect {address[0]}:{address[1]}")
        elif event == "socket.getaddrinfo" and not self.fine(args[0]):
            self.block(f"getaddrinfo {args[0]}")

    def fine(self, host: object) -> bool:
        return local_host(host) or str(host) in self.allowed

    def block(self, what: str) -> None:
        self.blocked.append(what)
        raise OSError(f"benchmarks.peers runs offline: blocked {what}")


def local_host(host: object) -> bool:
    """A loopback address or name, or no host (a Unix socket's address is not a tuple)."""
    if host is None:
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


# --- the run --------------------------------------------------------------------------------


async def run_system(
    name: str, opener: AbstractAsyncContextManager[System], work: Workload, config: dict[str, Any]
) -> dict[str, Any]:
    """One system from start to close; a failure is recorded with its reason, not raised."""
    started = time.perf_counter()
    try:
        async with opener as system:
            result: dict[str, Any] = {
                "config": config,
                "setup_s": round(time.perf_counter() - started, 2),
            }
            result.update(await measure(name, system, work))
            result["checks"] = await system.checks()
    except Exception as exc:
        progress(f"{name} failed: {exc!r}")
        failure: dict[str, Any] = {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "traceback_tail": traceback.format_exc().strip().splitlines()[-8:],
            "config": config,
        }
        if isinstance(exc, ModuleNotFoundError):
            failure["hint"] = f"install the peers: pip install {' '.join(PEER_REQUIREMENTS)}"
        return failure
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def table(systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system that ran: the figures to compare at a glance."""
    rows = []
    for name, result in systems.items():
        if "error" in result:
            rows.append({"system": name, "error": result["error"]})
            continue
        rows.append(
            {
                "system": name,
                "add_calls_per_s": result["add"]["add_calls_per_s"],
                "searchable_msgs_per_s": result["add"]["searchable_msgs_per_s"],
                "processed_msgs_per_s": result["add"]["processed_msgs_per_s"],
                "search_p50_ms": result["search"]["p50_ms"],
                "search_p95_ms": result["search"]["p95_ms"],
                **{f"recall@{b}": result["recall"][f"recall@{b}"] for b in BUDGETS},
                **{
                    f"{key}_{searchers}_searchers": phase[key]
                    for searchers, phase in result["concurrent_search"].items()
                    for key in ("searches_per_s", "p50_ms", "p95_ms")
                },
            }
        )
    return rows


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    guard = NetworkGuard.for_database(url)
    sys.addaudithook(guard)
    turns = load_turns(args.locomo)
    questions, left_out = load_questions(args.locomo)
    users = list(dict.fromkeys(turn.user for turn in turns))[: args.conversations]
    turns = [turn for turn in turns if turn.user in users]
    questions = [question for question in questions if question.user in users]
    warmup = warmup_questions(args.locomo, args.warmup, users)
    # The token counter loads torch before any system loads its model, so memfuse's model
    # load would come too late to set its OpenMP spin (docs/embedding.md, "Threads"): set it
    # here, for the one torch all three systems share in this process.
    os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))
    work = Workload(turns, questions, warmup, minilm_token_counter())
    results: dict[str, Any] = {"machine": await machine(url, source), "versions": versions()}
    results["gomp_spincount"] = os.environ["GOMP_SPINCOUNT"]
    results["data"] = {
        "file": str(args.locomo),
        "conversations": len(users),
        "turns": len(turns),
        "questions": len(questions),
        "left_out": left_out,
        "warmup": f"{len(work.warmup)} category-5 questions (not scored), before the timed ones",
        "text_per_turn": "'{speaker}: {text}' (the caption of a shared photo appended as memfuse"
        " does)",
    }
    extension_schema = await reset_schemas(url, create=True)
    systems: dict[str, dict[str, Any]] = {}
    try:
        for name in args.systems:
            progress(f"--- {name}")
            config: dict[str, Any] = {}
            systems[name] = await run_system(
                name, opener(name, url, config, extension_schema), work, config
            )
    finally:
        if not args.keep:
            await reset_schemas(url, create=False)
    results["machine"]["pgvector_version_after"] = await pgvector_version(url)
    results["systems"] = systems
    results["table"] = table(systems)
    results["network"] = {
        "blocked_attempts": guard.blocked,
        "watched": "socket.connect and socket.getaddrinfo audit events, for the whole run:"
        " anything but loopback, Unix sockets and the database's host is recorded and blocked",
    }
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["notes"] = notes(systems)
    for row in results["table"]:
        print(json.dumps(row), flush=True)  # noqa: T201 - benchmark output
    return results


def notes(systems: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader needs to read the figures right, filled in from the measurements."""
    found = [
        "One sequential writer and one sequential reader for every system. The systems ran one"
        " after another on the same server and model, not interleaved: noise from other work"
        " on the machine (see machine.load_average_*) does not hit them evenly.",
        "add_calls_per_s is turns / wall time of the add loop. The peers embed the turn inside"
        " each add call (one text per model call), so a turn is searchable when add returns"
        " and searchable_msgs_per_s is the same figure. memfuse's add() returns once the"
        " message is committed (found by full text from then on); its in-process worker embeds"
        " in the background and its pipeline builds M1 episodes and M2 facts, on the same"
        " event loop and the same 2 cores as the add loop. Its searchable_msgs_per_s counts"
        " until every turn has its vector (the peers' criterion: found by vector search), and"
        " processed_msgs_per_s until mf.flush() returns (M1/M2 done, every episode and fact"
        " embedded too); for the peers the two are the same figure.",
        "Search latency is end to end, query embedding included, p50/p95 over every scored"
        " question after the warm-up. Neither peer caches query embeddings (the model runs on"
        " every search); memfuse keeps an LRU of query embeddings, which only the same text"
        " asked twice would hit (calls.search.query_embedding_cache_hits), and its result"
        " cache is off.",
    ]
    memfuse = systems.get("memfuse", {})
    if "checks" in memfuse:
        checks = memfuse["checks"]
        written = {
            phase: calls.get("worker_vectors_written", 0)
            for phase, calls in memfuse["calls"].items()
        }
        found.append(
            f"memfuse wrote {checks.get('worker_vectors_written', 0)} vectors for"
            f" {checks['messages']} turns (the peers: one per turn): the messages, its"
            f" {checks['episodes']} episodes (each embedded once it stops growing) and"
            f" {checks['facts']} facts from the offline extractor (the facts of a message share"
            f" one text); {written['add']} of them during the add loop"
            f", {written['settle']} until every turn had its vector and {written['finish']}"
            " during mf.flush(). The default search uses all three"
            " layers; this is what its add and flush time pay for."
        )
    mem0 = systems.get("mem0", {})
    if "checks" in mem0:
        calls = mem0["calls"]
        matched = calls["search"].get("keyword_matches", 0)
        found.append(
            f"mem0 (infer=False): {calls['add'].get('embed', 0)} model calls for"
            f" {mem0['add']['turns']} adds, {mem0['checks']['rows']} rows stored"
            f" ({mem0['checks']['distinct_turn_ids']} distinct turns). LLM calls in the whole"
            f" run: {sum(phase.get('llm', 0) for phase in calls.values())}. Search:"
            f" {calls['search'].get('embed', 0)} query embeddings for"
            f" {mem0['search']['questions']} questions."
        )
        found.append(
            "mem0's search: a pgvector KNN of max(4 * top_k, 60) rows filtered on"
            " payload->>'user_id', gated at a cosine score of 0.1 (the default threshold), then"
            " re-scored with a keyword match (PostgreSQL full text over spaCy-lemmatized text,"
            " plainto_tsquery: every term must match) and entity boosts. spaCy and its"
            " en_core_web_sm model (mem0ai's optional 'nlp' extra; spaCy fetches the model"
            " from GitHub at first use) are not installed, so mem0 does what it does without"
            " them: the keyword match runs on the raw text, stop words included, and there are"
            " no entity boosts (with infer=False mem0 links no entities anyway). In the timed"
            f" search the keyword match found {matched} rows over"
            f" {calls['search'].get('keyword_search', 0)} searches.",
        )
        found.append(
            "mem0 also writes every add to its SQLite history (history_db_path, in a temporary"
            " directory here), which is part of its add time."
        )
    for name in ("mem0", "langgraph"):
        search = systems.get(name, {}).get("search")
        if search and search["results_per_question"]["fewer_than_top_k"]:
            short = search["results_per_question"]
            found.append(
                f"{name} returned fewer than {RESULTS_PER_QUESTION} results for"
                f" {short['fewer_than_top_k']} questions (min {short['min']}, mean"
                f" {short['mean']})."
            )
    langgraph = systems.get("langgraph", {})
    if "checks" in langgraph:
        found.append(
            "LangGraph's store searches by vector only (no full text); the embed function was"
            " called once per aput and once per asearch, one text each (calls)."
        )
        overall = [f"recall@{budget}" for budget in BUDGETS]
        if "recall" in mem0 and all(
            mem0["recall"][key] == langgraph["recall"][key] for key in overall
        ):
            found.append(
                "mem0's recall equals LangGraph's at every budget: with the keyword match"
                " (almost) never firing and no entity boosts, mem0 ranks by the same model's"
                " cosine similarity as LangGraph's vector search."
            )
    return found


def systems_argument(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SYSTEMS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=int, default=20, help="untimed searches per system")
    parser.add_argument(
        "--systems",
        type=systems_argument,
        default=list(SYSTEMS),
        help=f"comma-separated, in order (default: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--conversations", type=int, help="only the file's first N conversations (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 warm-up searches and the first 2 conversations"
    )
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schemas")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.warmup = min(args.warmup, 5)
        args.conversations = args.conversations or 2
    if args.conversations is not None and args.conversations < 1:
        parser.error("--conversations must be at least 1")
    run_benchmark("benchmarks.peers", run, args)


if __name__ == "__main__":
    main()
