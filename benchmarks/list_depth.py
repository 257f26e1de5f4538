"""How deep each ranked list must be: LoCoMo evidence within the first k results, per depth.

A search ranks up to ``search_candidates`` rows in each list (layer x method) before fusing
them; a search for ``top_k`` messages ranks fewer (``memfuse.retrieval.service.list_depth``).
This study loads the LoCoMo development split once through the real write path (offline fact
extractor, local model), then asks every question with every list at one depth, for each
depth given, and reports the share of each question's evidence turns among the first k
results (k = 1, 3, 5, 10, 20, 50). The depths are forced with ``search_candidates`` on a
``top_k=50`` search, where the rule keeps the setting. docs/retrieval.md#list-depth holds a run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.list_depth \\
        --output benchmarks/results/list_depth.json
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

SCHEMA: Final = "bench_list_depth"
DEFAULT_DATA: Final = Path(__file__).resolve().parents[2] / "shared/data/locomo/locomo_dev.json"
WITHIN: Final = (1, 3, 5, 10, 20, 50)
DEPTHS: Final = (100, 75, 50, 30, 20, 10)


async def load(url: str, data: LocomoData, common: dict[str, Any]) -> None:
    """The split through the real write path, every layer built, statistics fresh."""
    async with MemFuse(url, **common) as mf:
        await ingest_conversations(mf, data.conversations, progress=True)
        await mf.flush()
        await mf.analyze()


async def evidence_within(
    mf: MemFuse, data: LocomoData, label: str, top_k: int = max(WITHIN)
) -> dict[str, float]:
    """The mean share of evidence turns among the first k results of a ``top_k`` search, for
    each k of WITHIN up to ``top_k``."""
    memories: dict[str, Memory] = {}
    found: dict[int, list[float]] = {k: [] for k in WITHIN if k <= top_k}
    for question in track(data.questions, desc=label, unit="q"):
        memory = memories.get(question.user)
        if memory is None:
            memory = memories[question.user] = await mf.init(question.user)
        results = await memory.query(question.question, top_k=top_k)
        for k in found:
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
        "search": "Memory.query(question, top_k=50), every list at the depth",
        "depths": {},
    }
    common: dict[str, Any] = {"schema": SCHEMA, "embedder": "local", "search_cache_ttl": 0.0}
    try:
        await load(url, data, common)
        for depth in args.depths:
            async with MemFuse(url, search_candidates=depth, pipeline_auto=False, **common) as mf:
                results["depths"][str(depth)] = await evidence_within(mf, data, f"depth {depth}")
    finally:
        if not args.keep:
            await drop_schema(url, SCHEMA)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.list_depth", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), metavar="N")
    parser.add_argument("--output", type=Path, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()
    run_benchmark("benchmarks.list_depth", run, args)


if __name__ == "__main__":
    main()
