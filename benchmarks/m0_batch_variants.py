"""Where a batch ``add()`` spends its time: the same call on the messages table as built and
with parts of its work changed, against raw ``executemany`` into a plain table.

Issue 14 asks one ``add()`` of 100 messages to reach half the rows per second of raw asyncpg
``executemany`` (``m0_batch_ratio_vs_executemany`` >= 0.5). This study measures what each part
of the insert costs, on LoCoMo turns, in schemas of their own:

- ``as_built``: the schema as migrated, written as configured by default (an embedder, so the
  words are left to the embedding worker; the worker itself off);
- ``words_at_insert``: the same schema written without an embedder: the writer stems each
  message's words into ``content_tsv`` at insert (what every write did before migration 0009,
  and still does without an embedder);
- ``jobs_by_row_id``, ``jobs_by_row_id_hash``: as built, the queue's index on
  ``(table_name, row_id)`` replaced by a B-tree or a hash index on ``row_id`` (whether the
  queue's lookup index is what makes queueing cost);
- ``without_job_trigger``: as built, without the trigger that queues the rows' embedding.

The first two keep memfuse's guarantees (the index variants would too); the last shows what
queueing costs. Rounds
interleave every candidate. Buffer and pipeline off. The study before migration 0009 (a
generated full-text column, three foreign keys) ran at ``361b9c0``:
``benchmarks/results/m0_batch_variants.json``.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.m0_batch_variants \\
        --output benchmarks/results/m0_batch_variants_0009.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import uuid
from pathlib import Path
from typing import Any, Final

import asyncpg

from benchmarks.foundation import compare
from benchmarks.harness import drop_schema, run_benchmark
from benchmarks.layers import (
    DEFAULT_LOCOMO,
    RAW_INSERT,
    RAW_SCHEMA,
    RAW_TABLE,
    load_corpus,
    raw_args,
    single_messages,
)
from memfuse import MemFuse, Memory
from memfuse.config.urls import asyncpg_connect_args

VARIANTS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "as_built": ("local", ()),
    "words_at_insert": ("none", ()),
    "jobs_by_row_id": (
        "local",
        (
            "DROP INDEX {s}.ix_embedding_jobs_table_name_row_id",
            "CREATE INDEX ON {s}.embedding_jobs (row_id)",
        ),
    ),
    "jobs_by_row_id_hash": (
        "local",
        (
            "DROP INDEX {s}.ix_embedding_jobs_table_name_row_id",
            "CREATE INDEX ON {s}.embedding_jobs USING hash (row_id)",
        ),
    ),
    "without_job_trigger": (
        "local",
        ("ALTER TABLE {s}.messages DISABLE TRIGGER messages_enqueue_on_insert",),
    ),
}
"""Each variant's embedder setting and the statements that change its schema."""


def schema_of(variant: str) -> str:
    return f"bench_m0_{variant}"[:63]


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    text_source, conversations = load_corpus(args.locomo)
    messages = single_messages(conversations)
    for schema in (RAW_SCHEMA, *map(schema_of, VARIANTS)):
        await drop_schema(url, schema)
    admin = await asyncpg.connect(**asyncpg_connect_args(url))
    raw_pool = await asyncpg.create_pool(**asyncpg_connect_args(url), min_size=1, max_size=1)
    try:
        await admin.execute(f"CREATE SCHEMA {RAW_SCHEMA}")
        await admin.execute(RAW_TABLE)
        async with contextlib.AsyncExitStack() as stack:
            candidates: dict[str, Any] = {}
            session_id = uuid.uuid4()
            seq = itertools.count(1)

            async def raw_executemany() -> None:
                rows = [raw_args(next(messages), session_id, next(seq)) for _ in range(args.size)]
                async with raw_pool.acquire() as connection, connection.transaction():
                    await connection.executemany(RAW_INSERT, rows)

            candidates["asyncpg_executemany"] = raw_executemany
            for variant, (embedder, statements) in VARIANTS.items():
                schema = schema_of(variant)
                mf = await stack.enter_async_context(
                    MemFuse(
                        url,
                        schema=schema,
                        embedder=embedder,
                        worker_enabled=False,
                        buffer_enabled=False,
                        pipeline_auto=False,
                    )
                )
                for statement in statements:
                    await admin.execute(statement.format(s=schema))
                memory = await mf.init("bench-batch", "bench", "batch")

                async def add_batch(memory: Memory = memory) -> None:
                    await memory.add([next(messages) for _ in range(args.size)])

                candidates[variant] = add_batch
            result = await compare(
                "m0_batch_variants", candidates, "asyncpg_executemany", args.rounds, args.ops
            )
        for key in candidates:
            result[key]["rows_per_s_p50"] = round(args.size / (result[key]["p50_ms"] / 1000), 1)
            result[key]["rows_per_s_ratio_vs_executemany"] = round(
                result["asyncpg_executemany"]["p50_ms"] / result[key]["p50_ms"], 3
            )
        return {"text": text_source, "database": source, "rows_per_call": args.size, **result}
    finally:
        await raw_pool.close()
        await admin.close()
        if not args.keep:
            for schema in (RAW_SCHEMA, *map(schema_of, VARIANTS)):
                await drop_schema(url, schema)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.m0_batch_variants", description=__doc__
    )
    parser.add_argument("--size", type=int, default=100, help="messages per add()")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=40, help="calls per candidate per round")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--keep", action="store_true", help="keep the schemas afterwards")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    run_benchmark("benchmarks.m0_batch_variants", run, args)


if __name__ == "__main__":
    main()
