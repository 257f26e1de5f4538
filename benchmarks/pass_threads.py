"""Forward passes side by side or one at a time: the local model's throughput beside other work.

Run: ``.venv/bin/python -m benchmarks.pass_threads [--rounds 6] [--output FILE.json]`` (no
database). Two ``LocalEmbedder``s, ``pass_threads=1`` (each pass on all of torch's threads) and
the default ``pass_threads=2`` (two passes at a time, each on its share), embed the same LoCoMo
texts in calls of ``--call-size`` texts (the worker's chunk), rounds alternating which goes
first, under three conditions:

* ``alone``: nothing else runs;
* ``beside_a_process``: another process spins half of every 8 ms (about half a core, as the
  database and other processes take it; it shares no lock with the model);
* ``beside_a_python_thread``: a thread of this process does the same in Python, holding the
  interpreter lock while it spins (the event loop's stand-in: the model's threads need that
  lock between kernels).

The texts mix what the worker embeds for a conversation: turns as messages read
(``name: content``), one in four followed by the text of its four turns (a fact group's
length), one in sixteen by 25 turns (an episode, cut at 256 word pieces). Reported per
condition and variant: texts per second (median and p95 over rounds), the ratio of the two in
each round, and a lone query's encode p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import source_version
from benchmarks.layers import DEFAULT_LOCOMO, cpu_description, flat_messages, load_corpus, log
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.monitor.performance import percentile

SPIN_S = 0.004
"""How long the competing work spins in every ``2 * SPIN_S`` seconds."""

CONDITIONS = ("alone", "beside_a_process", "beside_a_python_thread")

_SPIN_PROCESS = f"""
import time
while True:
    started = time.perf_counter()
    while time.perf_counter() - started < {SPIN_S}:
        pass
    time.sleep({SPIN_S})
"""


def texts_like_the_worker(path: Path, count: int) -> list[str]:
    """Turns, fact-group-long and episode-long texts in the worker's proportions."""
    _, conversations = load_corpus(path)
    turns = [f"{m.get('name', '')}: {m['content']}" for m in flat_messages(conversations)]
    texts: list[str] = []
    start = 0
    while len(texts) < count:
        window = [turns[(start + k) % len(turns)] for k in range(25)]
        texts.extend(window[:4])
        texts.append("\n".join(window[:4]))
        if start % 16 == 0:
            texts.append(" ".join(window))
        start += 4
    return texts[:count]


@contextmanager
def competing(condition: str) -> Iterator[None]:
    """Run the condition's competing work for the duration of the block."""
    if condition == "beside_a_process":
        process = subprocess.Popen([sys.executable, "-c", _SPIN_PROCESS])
        try:
            yield
        finally:
            process.kill()
            process.wait()
        return
    if condition == "beside_a_python_thread":
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                while time.perf_counter() - started < SPIN_S:
                    pass
                time.sleep(SPIN_S)

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        return
    yield


async def texts_per_second(embedder: LocalEmbedder, texts: list[str], call_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), call_size):
        await embedder.embed_documents(texts[start : start + call_size])
    return len(texts) / (time.perf_counter() - started)


async def query_p50_ms(embedder: LocalEmbedder, queries: int) -> float:
    samples = []
    for number in range(queries):
        started = time.perf_counter()
        await embedder.embed_query(f"What did Caroline paint in week {number}?")
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    texts = texts_like_the_worker(args.locomo, args.texts)
    variants = {
        "one_pass_at_a_time": LocalEmbedder(pass_threads=1),
        "passes_side_by_side": LocalEmbedder(pass_threads=2),
    }
    for embedder in variants.values():
        await embedder.load()
        await texts_per_second(embedder, texts[: args.call_size], args.call_size)  # warm-up
    first, second = [await embedder.embed_documents(texts[:300]) for embedder in variants.values()]
    min_cosine = min(
        sum(a * b for a, b in zip(x, y, strict=True)) for x, y in zip(first, second, strict=True)
    )
    results: dict[str, Any] = {}
    for condition in args.conditions:
        rates: dict[str, list[float]] = {name: [] for name in variants}
        queries: dict[str, float] = {}
        with competing(condition):
            for round_number in range(args.rounds):
                order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
                for name in order:
                    rate = await texts_per_second(variants[name], texts, args.call_size)
                    rates[name].append(round(rate, 1))
            for name, embedder in variants.items():
                queries[name] = await query_p50_ms(embedder, args.queries)
        ratios = [
            round(two / one, 3)
            for one, two in zip(
                rates["one_pass_at_a_time"], rates["passes_side_by_side"], strict=True
            )
        ]
        results[condition] = {
            **{
                name: {
                    "texts_per_s_median": round(statistics.median(values), 1),
                    "texts_per_s_p95": round(percentile(sorted(values), 95), 1),
                    "rounds": values,
                    "query_p50_ms": queries[name],
                }
                for name, values in rates.items()
            },
            "side_by_side_vs_one_at_a_time": {
                "median": round(statistics.median(ratios), 3),
                "min": min(ratios),
                "max": max(ratios),
            },
        }
        log(f"pass_threads: {condition}: {json.dumps(results[condition])}")
    for embedder in variants.values():
        await embedder.aclose()
    return {
        "machine": {
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        },
        "texts": {"count": len(texts), "call_size": args.call_size, "source": str(args.locomo)},
        "precision": variants["passes_side_by_side"].precision,
        "min_cosine_between_variants": round(min_cosine, 6),
        "conditions": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--call-size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    results = asyncio.run(measure(args))
    meta = {
        "command": " ".join([".venv/bin/python", "-m", "benchmarks.pass_threads", *sys.argv[1:]]),
        "duration_s": round(time.perf_counter() - started, 1),
        **source_version(),
    }
    output = {"meta": meta, **results}
    if args.output is not None:
        args.output.write_text(json.dumps(output, indent=2) + "\n")
    log(f"pass_threads: {json.dumps(output['conditions'])}")


if __name__ == "__main__":
    main()
