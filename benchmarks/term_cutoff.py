"""The common-terms cutoff at scale: LoCoMo evidence recall and statement time per setting.

Run after ``benchmarks.retrieval --keep`` (its schema ``bench_retrieval`` must hold the
measured user's rows): ``MEMFUSE_DATABASE_URL=... .venv/bin/python -m benchmarks.term_cutoff
[--rows 2000] [--budgets 0,2000,1000,500] [--limits 10,50] [--output FILE.json]``. Needs the
``local`` extra.

The measured user holds jittered copies of every LoCoMo development turn (tens of copies at
100k rows), so each LoCoMo question can be scored on a history of that size: a result counts
for the evidence turn it is a copy of (``metadata.turn``, ``metadata.source``). For each
``common_term_rows`` (a term in at least that many rows of the table only orders rows other
terms find, :meth:`~memfuse.repositories.search.SearchRepository.term_statistics`), each term
budget (the rows of rarer terms after which an uncommon term no longer admits rows) and each
result count, memfuse's statement for every question runs on one raw asyncpg connection, the
settings interleaved per question: mean evidence recall and p50/p95 time. Only the statement
differs between settings.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.harness import run_benchmark
from benchmarks.layers import DEFAULT_LOCOMO, load_corpus
from benchmarks.retrieval import MEASURED_USER, SCHEMA, load_data, sizes
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.engines import pooled_driver
from memfuse.db.vector import register_vector_codec
from memfuse.evaluation.locomo import load_locomo
from memfuse.ingest import NAMESPACE
from memfuse.memory import MemFuse
from memfuse.repositories.search import SearchFilters, SearchRepository
from memfuse.types import Layer, Method

LAYERS: tuple[Layer, ...] = ("m0", "m1", "m2", "knowledge")
METHODS: tuple[Method, ...] = ("vector", "text")
CANDIDATES = 50
VECTOR_CANDIDATES = 30
"""The list depths of a default search for up to 10 messages (``list_depth``)."""


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    data = load_locomo(args.locomo)
    _, conversations = load_corpus(args.locomo)
    corpus = load_data(args.locomo)
    sample_of = [conversation.user.removeprefix("locomo-") for conversation in conversations]
    questions = data.questions
    async with MemFuse(
        url,
        schema=SCHEMA,
        embedder="local",
        pipeline_auto=False,
        worker_enabled=False,
        search_cache_ttl=0.0,
    ) as mf:
        memory = await mf.init(MEASURED_USER, session="queries")
        retrieval = await resolve(mf.container.retrieval_service)
        engine = await resolve(mf.container.engine)
        vectors = [await retrieval.embed_query(question.question) for question in questions]
        statements: dict[tuple[int, int, int], list[tuple[str, tuple[Any, ...]]]] = {}
        async with pooled_driver(engine) as connection:
            repository = SearchRepository(connection, SCHEMA)
            driver: Any = connection.driver_connection  # an asyncpg connection
            rows_held = await driver.fetchval(
                f"SELECT count(*) FROM {SCHEMA}.messages WHERE user_id = $1",
                memory.scope.user_id,
            )
            common: dict[int, int] = {}
            for rows in args.rows:
                terms = await repository.term_statistics(retrieval.common_term_frequency, rows)
                common[rows] = len(terms["m0"].common_terms)
                for budget, limit in itertools.product(args.budgets, args.limits):
                    statements[rows, budget, limit] = [
                        statement
                        for question, vector in zip(questions, vectors, strict=True)
                        if (
                            statement := repository.statement(
                                SearchFilters(user_id=memory.scope.user_id),
                                unit="message",
                                query_text=question.question,
                                query_vector=vector,
                                layers=LAYERS,
                                methods=METHODS,
                                candidates=CANDIDATES,
                                vector_candidates=VECTOR_CANDIDATES,
                                rrf_k=retrieval.rrf_k,
                                limit=limit,
                                terms=terms,
                                term_budget=budget or None,
                            )
                        )
                        is not None
                    ]
    raw = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        await register_vector_codec(raw)
        await raw.execute(  # memfuse's session settings for searches (SearchRepository.tune)
            f"SET hnsw.ef_search = {int(retrieval.ef_search)};"
            " SET hnsw.iterative_scan = relaxed_order; SET plan_cache_mode = force_custom_plan"
        )
        evidence_of: dict[uuid.UUID, uuid.UUID] = {}

        async def evidence(ids: list[uuid.UUID]) -> set[uuid.UUID]:
            missing = [id_ for id_ in ids if id_ not in evidence_of]
            if missing:
                for row in await raw.fetch(
                    f"SELECT id, (metadata->>'turn')::int AS turn, metadata->>'source' AS source"
                    f" FROM {SCHEMA}.messages WHERE id = ANY($1::uuid[])",
                    missing,
                ):
                    conversation = corpus.turns[row["turn"]].conversation
                    evidence_of[row["id"]] = uuid.uuid5(
                        NAMESPACE, f"{sample_of[conversation]}/{row['source']}"
                    )
            return {evidence_of[id_] for id_ in ids}

        settings = list(statements)
        recalls: dict[tuple[int, int, int], list[float]] = {setting: [] for setting in settings}
        times: dict[tuple[int, int, int], list[float]] = {setting: [] for setting in settings}
        for _ in range(args.rounds):
            for index, question in enumerate(questions):
                # Settings interleaved per question, their order rotated: the first statement
                # of a question reads its rows' pages cold, and that must not fall on one.
                shift = index % len(settings)
                for setting in settings[shift:] + settings[:shift]:
                    sql, arguments = statements[setting][index]
                    started = time.perf_counter()
                    found = await raw.fetch(sql, *arguments)
                    times[setting].append((time.perf_counter() - started) * 1000)
                    turns = await evidence([row["id"] for row in found])
                    recalls[setting].append(len(turns & question.evidence) / len(question.evidence))
        results: dict[str, dict[str, float]] = {}
        for rows, budget, limit in settings:
            ordered = sorted(times[rows, budget, limit])
            results[f"rows_{rows}_budget_{budget}_top_{limit}"] = {
                "common_terms": common[rows],
                "evidence_recall": round(statistics.mean(recalls[rows, budget, limit]), 4),
                "p50_ms": round(statistics.median(ordered), 3),
                "p95_ms": round(ordered[int(len(ordered) * 0.95)], 3),
            }
    finally:
        await raw.close()
    return {
        "database": source,
        "measured_user_rows": rows_held,
        "questions": len(questions),
        "results": results,
    }


def budgets(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 0 for value in values):
        raise argparse.ArgumentTypeError("budgets must be integers from 0 (none), comma-separated")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=sizes, default=[2000])
    parser.add_argument(
        "--budgets", type=budgets, default=[0, 2000, 1000, 500], help="term budgets, 0: none"
    )
    parser.add_argument("--limits", type=sizes, default=[10, 50])
    parser.add_argument("--rounds", type=int, default=1, help="passes over the questions")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--output", type=Path)
    run_benchmark("benchmarks.term_cutoff", run, parser.parse_args())


if __name__ == "__main__":
    main()
