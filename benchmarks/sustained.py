"""Sustained load: messages fully processed per second, peak connections and peak memory.

Run: ``.venv/bin/python -m benchmarks.sustained [--duration 300] [--writers 64]
[--backlog 512] [--output FILE.json]`` (database:
``MEMFUSE_DATABASE_URL``, else a fresh embedded server in a temporary directory).

One ``MemFuse`` as an app would run it (local model, in-process worker, parallel pipeline,
write buffer). Writers may only run ``--backlog`` messages ahead of full processing, so the
run measures what the system keeps up with, not how fast a queue fills. How a message counts
as processed and what each figure is: docs/benchmarks.md, "The sustained run".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg

from benchmarks.foundation import summary
from benchmarks.harness import drop_schema, run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, flat_messages, load_corpus, log, machine
from memfuse.config.urls import asyncpg_connect_args
from memfuse.memory import MemFuse, Memory

SCHEMA: Final = "bench_sustained"
USERS_PER_PASS: Final = 8
TARGET_MSGS_PER_S: Final = 10.0
TARGET_CONNECTIONS: Final = 30
TARGET_RSS_MB: Final = 2048.0

CONNECTIONS_SQL: Final = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""
PROCESSED_SQL: Final = f"""
SELECT count(*) FROM {SCHEMA}.messages AS m
JOIN {SCHEMA}.layer_progress AS p1 ON p1.session_id = m.session_id AND p1.layer = 'm1'
JOIN {SCHEMA}.layer_progress AS p2 ON p2.session_id = m.session_id AND p2.layer = 'm2'
WHERE m.embedding IS NOT NULL AND m.seq <= p1.processed_seq AND m.seq <= p2.processed_seq
"""
QUEUE_SQL: Final = f"SELECT count(*) FROM {SCHEMA}.embedding_jobs"
EMBEDDED_SQL: Final = f"""
SELECT (SELECT count(*) FROM {SCHEMA}.messages WHERE embedding IS NOT NULL)
     + (SELECT count(*) FROM {SCHEMA}.episodes WHERE embedding IS NOT NULL)
     + (SELECT count(*) FROM {SCHEMA}.fact_groups)
"""


@dataclass(slots=True)
class Sample:
    at_s: float
    added: int
    processed: int
    queue: int
    connections: int
    rss_mb: float | None


@dataclass(slots=True)
class Load:
    """What the writers have started and done, and what the sampler last saw processed."""

    backlog: int
    warm_up: int = 0
    """Messages processed before the run (not counted)."""
    started: int = 0
    added: int = 0
    processed: int = 0
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    latencies: list[float] = field(default_factory=list)
    waits: int = 0

    def has_room(self) -> bool:
        return self.started - self.processed < self.backlog


async def sample(connection: asyncpg.Connection, load: Load, started: float) -> Sample:
    connections = await connection.fetchval(CONNECTIONS_SQL)
    processed = await connection.fetchval(PROCESSED_SQL) - load.warm_up
    queue = await connection.fetchval(QUEUE_SQL)
    return Sample(
        round(time.perf_counter() - started, 2),
        load.added,
        processed,
        queue,
        connections,
        resident_mb(),
    )


async def watch(
    connection: asyncpg.Connection,
    load: Load,
    samples: list[Sample],
    started: float,
    interval: float,
) -> None:
    """Sample until cancelled; wake the writers waiting for room in the backlog."""
    while True:
        current = await sample(connection, load, started)
        samples.append(current)
        async with load.progress:
            load.processed = current.processed
            load.progress.notify_all()
        await asyncio.sleep(interval)


async def write(
    mf: MemFuse,
    corpus: list[dict[str, Any]],
    load: Load,
    writers: int,
    stop_at: float,
) -> None:
    """``writers`` tasks adding one message per call from one shared cursor over the corpus."""
    cursor = itertools.count()
    memories: dict[tuple[int, int], Memory] = {}

    async def writer(index: int) -> None:
        while time.perf_counter() < stop_at:
            async with load.progress:
                if not load.has_room():
                    load.waits += 1
                    try:
                        async with asyncio.timeout(max(0.0, stop_at - time.perf_counter())):
                            await load.progress.wait_for(load.has_room)
                    except TimeoutError:
                        return
                load.started += 1
            position = next(cursor)
            passed, offset = divmod(position, len(corpus))
            memory = memories.get((passed, index))
            if memory is None:
                user = f"sustained-p{passed}-u{index % USERS_PER_PASS}"
                memory = await mf.init(user, "bench", f"p{passed}-w{index}")
                memories[(passed, index)] = memory
            start = time.perf_counter()
            await memory.add([corpus[offset]])
            load.latencies.append((time.perf_counter() - start) * 1000.0)
            load.added += 1

    await asyncio.gather(*(writer(index) for index in range(writers)))


def resident_mb() -> float | None:
    """This process's resident memory now (Linux ``/proc``), or None elsewhere."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return None


def steady_rate(samples: list[Sample], write_s: float) -> float:
    """Fully processed messages per second over the write phase, after its first fifth."""
    window = [s for s in samples if write_s / 5 <= s.at_s <= write_s]
    if len(window) < 2 or window[-1].at_s == window[0].at_s:
        return 0.0
    return (window[-1].processed - window[0].processed) / (window[-1].at_s - window[0].at_s)


def rss_growth(samples: list[Sample], write_s: float) -> float | None:
    """Resident memory's trend over the write phase's second half, in MB per minute (a least
    squares slope): near 0 when memory has settled, positive when it keeps growing, which a
    peak over a few minutes hides. ``None`` without RSS samples (not Linux)."""
    window = [s for s in samples if write_s / 2 <= s.at_s <= write_s and s.rss_mb is not None]
    if len(window) < 2 or window[-1].at_s == window[0].at_s:
        return None
    slope, _ = statistics.linear_regression(
        [s.at_s for s in window], [float(s.rss_mb or 0.0) for s in window]
    )
    return round(slope * 60.0, 2)


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    text_source, conversations = load_corpus(args.locomo)
    corpus = flat_messages(conversations)
    await drop_schema(url, SCHEMA)
    results: dict[str, Any] = {"text": text_source}
    mf = MemFuse(
        url,
        schema=SCHEMA,
        embedder="local",
        pipeline_parallel=True,
        worker_concurrency=args.worker_concurrency,
        monitor_history_size=100_000,
    )
    sampler = await asyncpg.connect(**asyncpg_connect_args(url))
    load = Load(backlog=args.backlog)
    samples: list[Sample] = []
    try:
        async with mf:
            results["machine"] = await machine(url, source)
            warm = await mf.init("sustained-warm-up", "bench", "warm-up")
            await warm.add([corpus[0]])
            await mf.flush()
            rss_warm_mb = resident_mb()
            load.warm_up = await sampler.fetchval(PROCESSED_SQL)
            log("sustained: model loaded, warm-up message processed; writing")
            started = time.perf_counter()
            watcher = asyncio.create_task(
                watch(sampler, load, samples, started, args.sample_interval)
            )
            await write(mf, corpus, load, args.writers, started + args.duration)
            write_s = time.perf_counter() - started
            log(f"sustained: writers stopped after {write_s:.0f} s, {load.added} messages; drain")
            await mf.flush()
            total_s = time.perf_counter() - started
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            final = await sample(sampler, load, started)
            samples.append(final)
            embedded = await sampler.fetchval(EMBEDDED_SQL)
            worker_stats = mf.worker_stats()
            texts_embedded = 0 if worker_stats is None else worker_stats.texts_embedded
            settings = mf.settings
            monitor = mf.monitor.export()
    finally:
        await sampler.close()
        if not args.keep:
            await drop_schema(url, SCHEMA)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak_connections = max(s.connections for s in samples)
    sustained = load.added / total_s
    steady = steady_rate(samples, write_s)
    results.update(
        {
            "settings": {
                "writers": args.writers,
                "backlog_limit": args.backlog,
                "pipeline_parallel": settings.pipeline_parallel,
                "pipeline_concurrency": settings.pipeline_concurrency,
                "worker_concurrency": settings.worker_concurrency,
                "worker_batch_size": settings.worker_batch_size,
                "embedding_batch_size": settings.embedding_batch_size,
                "pool_size": settings.pool.pool_size,
                "max_overflow": settings.pool.max_overflow,
                "fact_extractor": settings.fact_extractor,
                "embedder": settings.embedder,
            },
            "messages": load.added,
            "fully_processed_at_end": final.processed,
            "write_phase_s": round(write_s, 1),
            "drain_s": round(total_s - write_s, 1),
            "sustained_msgs_per_s": round(sustained, 2),
            "steady_msgs_per_s": round(steady, 2),
            "sustained_ratio_vs_target_10": round(sustained / TARGET_MSGS_PER_S, 2),
            "vectors_written": embedded,
            "vectors_per_message": round(embedded / (load.added + load.warm_up), 2),
            "texts_embedded": texts_embedded,
            "texts_embedded_per_message": round(texts_embedded / (load.added + load.warm_up), 2),
            "writer_waits_on_backlog": load.waits,
            "add_call_latency": summary(load.latencies),
            "queue_depth_max": max(s.queue for s in samples),
            "peak_connections": peak_connections,
            "peak_connections_vs_target_30": round(peak_connections / TARGET_CONNECTIONS, 2),
            "median_connections": statistics.median(s.connections for s in samples),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "rss_after_warm_up_mb": rss_warm_mb,
            "rss_growth_mb_per_min": rss_growth(samples, write_s),
            "peak_rss_vs_target_2gb": round(peak_rss_mb / TARGET_RSS_MB, 2),
            "monitor": {
                name: {k: figures[k] for k in ("count", "p50_ms", "p95_ms") if k in figures}
                for name, figures in monitor.get("operations", {}).items()
            },
            "samples": [
                {
                    "at_s": s.at_s,
                    "added": s.added,
                    "processed": s.processed,
                    "queue": s.queue,
                    "connections": s.connections,
                    "rss_mb": s.rss_mb,
                }
                for s in samples
            ],
        }
    )
    log(
        "sustained: "
        + json.dumps({k: v for k, v in results.items() if k not in ("samples", "monitor")})
    )
    if args.plot is not None:
        plot(samples, write_s, args.plot)
    return results


def plot(samples: list[Sample], write_s: float, path: Path) -> None:
    """Throughput (fully processed messages per second) and resident memory over the run,
    as a PNG; needs matplotlib (the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    from matplotlib import pyplot

    times = [s.at_s for s in samples]
    rates = [0.0] + [
        (b.processed - a.processed) / (b.at_s - a.at_s) if b.at_s > a.at_s else 0.0
        for a, b in itertools.pairwise(samples)
    ]
    window = 10  # samples: a moving average, so the line shows the trend, not the polling
    smooth = [statistics.fmean(rates[max(0, i - window + 1) : i + 1]) for i in range(len(rates))]
    figure, (top, bottom) = pyplot.subplots(2, 1, sharex=True, figsize=(7, 4.5))
    top.plot(times, smooth, color="tab:blue")
    top.set_ylabel("processed msgs/s")
    top.axvline(write_s, color="grey", linestyle=":", label="writers stop")
    top.legend(loc="upper right")
    bottom.plot(times, [s.rss_mb or 0.0 for s in samples], color="tab:red")
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("seconds")
    bottom.axvline(write_s, color="grey", linestyle=":")
    figure.suptitle("sustained run: 64 writers, local model, M1+M2+vectors")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of writing")
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--backlog", type=int, default=512, help="unprocessed messages allowed")
    parser.add_argument(
        "--worker-concurrency", type=int, default=1, help="embedding loops (the library's default)"
    )
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schema")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--plot", type=Path, help="also draw throughput and RSS over time into this PNG"
    )
    parser.add_argument(
        "--plot-from",
        type=Path,
        help="draw --plot from an earlier result (this section's JSON, or a suite's) and exit",
    )
    args = parser.parse_args()
    if args.plot_from is not None:
        if args.plot is None:
            parser.error("--plot-from needs --plot")
        plot_result(json.loads(args.plot_from.read_text()), args.plot)
        return
    run_benchmark("benchmarks.sustained", run, args)


def plot_result(result: dict[str, Any], path: Path) -> None:
    """:func:`plot` of a recorded run: the section's own JSON or a ``memfuse bench`` suite's."""
    section = result.get("sections", {}).get("sustained", result)
    samples = [Sample(**sample) for sample in section["samples"]]
    plot(samples, section["write_phase_s"], path)


if __name__ == "__main__":
    main()
