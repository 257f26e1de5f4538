"""Search latency against memory size, from one ``memfuse bench`` result (issue 15).

Run: ``.venv/bin/python -m benchmarks.latency_plot SUITE.json OUT.png``. Draws p50 and p95 of
memfuse's search (the statement, and end to end with the query's embedding) and of raw pgvector
KNN at each size of the retrieval section, and the peers section's figures (memfuse, mem0,
LangGraph's store, end to end) at the size of that section's users: the peers were measured on
LoCoMo conversations (about 550 turns a user), not at the retrieval section's sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LINES = {
    "memfuse_fused_cached": "memfuse search (statement)",
    "memfuse_end_to_end_uncached": "memfuse search (with query embedding)",
    "raw_knn": "raw pgvector KNN, top 10",
}
PEER_MARKERS = {"memfuse": "o", "mem0": "s", "langgraph": "^"}


def plot(result: dict[str, Any], output: Path) -> None:
    """Write the PNG; sections missing from ``result`` are left out of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = result.get("sections", result)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, percentile in zip(axes, ("p50_ms", "p95_ms"), strict=True):
        retrieval = sections.get("retrieval")
        if retrieval is not None:
            sizes = sorted(int(size) for size in retrieval["sizes"])
            for line, label in LINES.items():
                values = [
                    retrieval["sizes"][str(size)]["latency"][line][percentile] for size in sizes
                ]
                axis.plot(sizes, values, marker=".", label=label)
        peers = sections.get("peers")
        if peers is not None:
            users_turns = peer_turns_per_user(peers)
            for name, marker in PEER_MARKERS.items():
                figures = peers.get("systems", {}).get(name, {}).get("search")
                if figures is not None:
                    label = f"peers section: {name} (end to end)"
                    axis.scatter(
                        [users_turns],
                        [figures[percentile]],
                        marker=marker,
                        color="black",
                        label=label,
                    )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("items in the user's memory")
        axis.set_title(percentile.replace("_ms", ""))
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def peer_turns_per_user(peers: dict[str, Any]) -> float:
    """Mean turns per user (conversation) in the peers section."""
    data = peers["data"]
    return float(data["turns"]) / float(data["conversations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("result", type=Path, help="a `memfuse bench` JSON")
    parser.add_argument("output", type=Path, help="the PNG to write")
    args = parser.parse_args()
    plot(json.loads(args.result.read_text()), args.output)


if __name__ == "__main__":
    main()
