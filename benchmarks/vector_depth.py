"""How deep the vector lists of a short search must be: LoCoMo evidence within the first k results.

A user-filtered HNSW scan costs in proportion to the rows it must find, so the vector lists are
the dearest part of a short search (docs/benchmarks.md, "Why the vector list keeps the ratio
above 4 at 10k"). This study loads the LoCoMo development split once through the real write path
(offline fact extractor, local model), then asks every question with ``top_k`` results, the
full-text lists at the rule's depth (``memfuse.retrieval.service.list_depth``) and the vector
lists at each depth given ("rule": as built), and reports the share of each question's evidence
turns among the first k results. docs/retrieval.md#list-depth holds a run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.vector_depth --top-k 10 \\
        --depths rule 50 30 20 --output benchmarks/results/vector_depth_top10.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from benchmarks.harness import drop_schema, run_benchmark
from benchmarks.list_depth import evidence_within, load
from memfuse import MemFuse
from memfuse.evaluation.locomo import load_locomo
from memfuse.retrieval import service
from memfuse.types import Method, Unit

SCHEMA: Final = "bench_vector_depth"
DEFAULT_DATA: Final = Path(__file__).resolve().parents[2] / "shared/data/locomo/locomo_dev.json"
RULE: Final = service.list_depth


def force_vector_depth(depth: int | None) -> None:
    """Make the service rank ``depth`` rows in every vector list (``None``: the rule's)."""

    def list_depth(
        configured: int, *, unit: Unit, fetch: int, budgeted: bool, method: Method = "text"
    ) -> int:
        if method == "vector" and depth is not None:
            return depth
        return RULE(configured, unit=unit, fetch=fetch, budgeted=budgeted, method=method)

    service.list_depth = list_depth  # the service looks it up at each search


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    data = load_locomo(args.data)
    await drop_schema(url, SCHEMA)
    results: dict[str, Any] = {
        "data": str(args.data),
        "database": source,
        "questions": len(data.questions),
        "search": f"Memory.query(question, top_k={args.top_k}), full-text lists at the rule's "
        "depth, vector lists at each depth",
        "vector_depths": {},
    }
    common: dict[str, Any] = {"schema": SCHEMA, "embedder": "local", "search_cache_ttl": 0.0}
    try:
        await load(url, data, common)
        async with MemFuse(url, pipeline_auto=False, **common) as mf:
            for label in args.depths:
                force_vector_depth(None if label == "rule" else int(label))
                results["vector_depths"][label] = await evidence_within(
                    mf, data, f"vector depth {label}", args.top_k
                )
    finally:
        force_vector_depth(None)
        if not args.keep:
            await drop_schema(url, SCHEMA)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vector_depth", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--depths", nargs="+", default=["rule", "50", "30", "20"], metavar="N")
    parser.add_argument("--output", type=Path, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()
    run_benchmark("benchmarks.vector_depth", run, args)


if __name__ == "__main__":
    main()
