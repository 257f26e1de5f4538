"""The benchmark suite's plumbing: sections measured for real on the test database.

Timings here are only checked for being measured (positive, ordered), never against a speed:
speed goals live in the benchmarks themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import foundation, suite, sustained
from memfuse.cli import main as memfuse_main
from memfuse.config import Settings


@pytest.mark.model  # the local extra: settings default to embedder="local"
async def test_foundation_keys_come_from_a_measured_run(database_url: str) -> None:
    results = await foundation.measure(database_url, rounds=1, ops=20)

    keys = suite.foundation_keys(results)

    assert set(keys) == {
        "pool_checkout_p50_ms",
        "pool_checkout_p99_ms",
        "pool_checkout_p50_ratio_vs_asyncpg",
        "asyncpg_pool_acquire_p50_ms",
        "asyncpg_pool_acquire_p99_ms",
        "service_access_p99_ms",
        "first_request_p50_ms_cold",
        "first_request_p50_ms_warmed",
        "first_request_warmed_ratio_vs_cold",
    }
    assert all(value > 0 for value in keys.values())
    assert keys["pool_checkout_p99_ms"] >= keys["pool_checkout_p50_ms"]


@pytest.mark.model
async def test_sustained_run_processes_every_message_it_adds(database_url: str) -> None:
    args = argparse.Namespace(
        duration=2.0,
        writers=4,
        backlog=8,
        worker_concurrency=1,
        sample_interval=0.2,
        locomo=sustained.DEFAULT_LOCOMO,
        keep=False,
        plot=None,
    )

    results = await sustained.run(database_url, args, "test database")

    assert results["messages"] > 0
    assert results["fully_processed_at_end"] == results["messages"]
    assert results["vectors_written"] >= results["messages"]
    assert results["sustained_msgs_per_s"] > 0
    assert results["peak_connections"] >= 1
    assert results["peak_rss_mb"] > 0
    assert all(sample["rss_mb"] > 0 for sample in results["samples"]), "RSS over time"
    keys = suite.sustained_keys(results)
    assert keys["sustained_msgs_per_s"] == results["sustained_msgs_per_s"]


def test_the_sustained_plot_draws_throughput_and_memory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra")
    samples = [
        sustained.Sample(
            at_s=t / 2, added=40 * t, processed=30 * t, queue=5, connections=9, rss_mb=600.0 + t
        )
        for t in range(40)
    ]
    path = tmp_path / "sustained.png"
    sustained.plot(samples, write_s=15.0, path=path)
    assert path.read_bytes().startswith(b"\x89PNG"), "a PNG image"

    # A recorded run draws the same plot: the section's own JSON or a suite's.
    section = {"write_phase_s": 15.0, "samples": [dataclasses.asdict(s) for s in samples]}
    for result in (section, {"sections": {"sustained": section}}):
        again = tmp_path / "again.png"
        sustained.plot_result(json.loads(json.dumps(result)), again)
        assert again.read_bytes().startswith(b"\x89PNG")


def test_rss_growth_is_the_second_halfs_trend_per_minute() -> None:
    def samples(rss: Callable[[float], float]) -> list[sustained.Sample]:
        return [
            sustained.Sample(at_s=t, added=t, processed=t, queue=0, connections=1, rss_mb=rss(t))
            for t in range(0, 601, 10)
        ]

    # Warm-up growth in the first half does not count; a settled process reads 0.
    settled = samples(lambda t: 500.0 + min(t, 250.0))
    assert sustained.rss_growth(settled, write_s=600.0) == 0.0
    # 0.25 MB/s for the whole run is 15 MB a minute.
    climbing = samples(lambda t: 500.0 + 0.25 * t)
    assert sustained.rss_growth(climbing, write_s=600.0) == pytest.approx(15.0)
    assert sustained.rss_growth(samples(lambda t: 1.0)[:1], write_s=600.0) is None


def retrieval_result(p50_by_size: dict[int, float]) -> dict[str, object]:
    """The retrieval section's shape, with the figures the summary and the plot read."""

    def line(p50: float) -> dict[str, float]:
        return {"p50_ms": p50, "p95_ms": 1.5 * p50, "p50_ratio_vs_raw_knn": p50 / 1.5}

    return {
        "sizes": {
            str(size): {
                "latency": {
                    "memfuse_fused_cached": line(p50),
                    "memfuse_end_to_end_uncached": line(p50 + 8.0),
                    "raw_knn": line(1.5),
                }
            }
            for size, p50 in p50_by_size.items()
        }
    }


def test_retrieval_keys_name_each_size_and_how_flat_search_stays() -> None:
    keys = suite.retrieval_keys(retrieval_result({10_000: 10.0, 100_000: 12.0, 1_000_000: 20.0}))
    assert keys["search_p50_ms_db_1m"] == 20.0
    assert keys["search_p50_ratio_vs_knn_100k"] == 8.0
    assert keys["search_p50_100k_vs_10k"] == 1.2
    assert keys["search_p50_1m_vs_10k"] == 2.0


def test_the_latency_plot_draws_sizes_and_peers(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra")
    from benchmarks import latency_plot

    peers = {
        "data": {"conversations": 2, "turns": 788},
        "systems": {name: {"search": {"p50_ms": 18.0, "p95_ms": 22.0}} for name in ("mem0",)},
    }
    result = {"sections": {"retrieval": retrieval_result({10_000: 10.0}), "peers": peers}}
    path = tmp_path / "latency.png"
    latency_plot.plot(result, path)
    assert path.read_bytes().startswith(b"\x89PNG"), "a PNG image"
    assert latency_plot.peer_turns_per_user(peers) == 394.0


async def test_a_failing_section_is_reported_and_its_keys_left_out(
    database_url: str, tmp_path: Path
) -> None:
    missing = suite.Section("no_such_module", "", "", suite.foundation_keys)
    args = argparse.Namespace(quick=True, output=tmp_path / "suite.json")

    results = await suite.run_suite(args, [missing], "test", database_url)

    assert results["meta"]["failed_sections"] == {"no_such_module": "exit status 1"}
    assert results["summary"] == {}
    assert results["sections"] == {}


def test_bench_rejects_unknown_sections(tmp_path: Path) -> None:
    output = tmp_path / "suite.json"

    code = memfuse_main(["bench", "--only", "nope", "--output", str(output)])

    assert code == 2
    assert not output.exists()


def test_every_section_names_a_benchmark_module() -> None:
    modules = {path.stem for path in Path(suite.__file__).parent.glob("*.py")}

    assert {section.name for section in suite.SECTIONS} <= modules


def test_the_embedding_section_measures_the_default_worker_batch_size() -> None:
    """Its summary reads the default batch size's line, so both modes must measure it."""
    [section] = [s for s in suite.SECTIONS if s.name == "embedding"]
    default = str(Settings().worker_batch_size)
    for arguments in (section.quick, section.full):
        sizes = arguments.split("--batch-sizes ")[1].split()[0].split(",")
        assert default in sizes, arguments
