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
import statistics
from pathlib import Path
from typing import Any, Final

from benchmarks.harness import drop_schema, run_benchmark
from memfuse import MemFuse, Memory
from memfuse.evaluation.locomo import LocomoData, load_locomo
from memfuse.ingest import ingest_conversations
from memfuse.progress import track
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


async def evidence_within(mf: MemFuse, data: LocomoData, top_k: int, label: str) -> dict[str, Any]:
    """The mean share of evidence turns among the first k results, for k up to ``top_k``."""
    within = [k for k in (1, 3, 5, 10, 20, 50) if k <= top_k]
    memories: dict[str, Memory] = {}
    found: dict[int, list[float]] = {k: [] for k in within}
    for question in track(data.questions, desc=f"vector depth {label}", unit="q"):
        memory = memories.get(question.user)
        if memory is None:
            memory = memories[question.user] = await mf.init(question.user)
        results = await memory.query(question.question, top_k=top_k)
        for k in within:
            turns = {turn for result in results[:k] for turn in result.message_ids}
            found[k].append(len(question.evidence & turns) / len(question.evidence))
    return {f"within_{k}": round(statistics.mean(shares), 4) for k, shares in found.items()}


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
        async with MemFuse(url, **common) as mf:
            await ingest_conversations(mf, data.conversations, progress=True)
            await mf.flush()
            await mf.analyze()
        async with MemFuse(url, pipeline_auto=False, **common) as mf:
            for label in args.depths:
                force_vector_depth(None if label == "rule" else int(label))
                results["vector_depths"][label] = await evidence_within(mf, data, args.top_k, label)
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
