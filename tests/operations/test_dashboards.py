"""The Grafana dashboard and the alert rules in docs/dashboards/ query only metrics memfuse
exports: a running MemFuse (worker and pipeline on) is scraped and every name must be there."""

from __future__ import annotations

import json
import re
from pathlib import Path

from memfuse.embedding.embedders import LocalEmbedder
from tests.real_model import memfuse_with_model

DASHBOARDS = Path(__file__).resolve().parents[2] / "docs" / "dashboards"
METRIC = re.compile(r"\bmemfuse_[a-z0-9_]+")


def queried_metrics() -> set[str]:
    dashboard = json.loads((DASHBOARDS / "memfuse-grafana.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = (DASHBOARDS / "memfuse-alerts.yml").read_text()
    expressions += [line for line in rules.splitlines() if line.strip().startswith("expr:")]
    names = {name for expression in expressions for name in METRIC.findall(expression)}
    return names - {"memfuse_overview"}


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    names = queried_metrics()
    for wanted in (
        "memfuse_embedding_queue_depth",
        "memfuse_embedding_dead_letters",
        "memfuse_operation_duration_ms",
        "memfuse_operation_threshold_ms",
        "memfuse_background_task_up",
    ):
        assert wanted in names


async def test_every_queried_metric_is_exported(database_url: str, model: LocalEmbedder) -> None:
    async with memfuse_with_model(database_url, model) as mf:
        memory = await mf.init("alice")
        await memory.add([{"role": "user", "content": "a message to embed"}])
        await memory.query("message")
        await mf.flush()
        await mf.health()
        exported = set(METRIC.findall(await mf.metrics_text()))
    missing = sorted(queried_metrics() - exported)
    assert missing == [], f"queried but not exported: {missing}"
