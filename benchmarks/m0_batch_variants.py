"""Where a batch ``add()`` spends its time: the same call on the messages table as built and
with parts of its work taken away, against raw ``executemany`` into a plain table.

Issue 14 asks one ``add()`` of 100 messages to reach half the rows per second of raw asyncpg
``executemany`` (``m0_batch_ratio_vs_executemany`` >= 0.5). This study measures how far each
part of what the insert does is from that, on LoCoMo turns, in schemas of its own:

- ``as_built``: the schema as migrated;
- ``no_full_text_at_insert``: the generated ``content_tsv`` column made a plain one, left
  NULL (what indexing the text later, off the ``add()`` path, would save at most);
- ``also_without_user_and_agent_keys``: and without the foreign keys on ``user_id`` and
  ``agent_id`` (the session's key alone would still cascade deletes);
- ``also_without_job_trigger``: and without the trigger that queues the rows' embedding.

Only ``as_built`` keeps memfuse's guarantees; the others show what each part costs. Rounds
interleave every candidate. ``embedder="none"``, buffer and pipeline off.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.m0_batch_variants \\
        --output benchmarks/results/m0_batch_variants.json
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

VARIANTS: Final[dict[str, tuple[str, ...]]] = {
    "as_built": (),
    "no_full_text_at_insert": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
    ),
    "also_without_user_and_agent_keys": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
        "ALTER TABLE {s}.messages DROP CONSTRAINT fk_messages_user_id_users,"
        " DROP CONSTRAINT fk_messages_agent_id_agents",
    ),
    "planned_deferred_text_one_key": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
        "CREATE INDEX ix_unindexed ON {s}.messages (user_id) WHERE content_tsv IS NULL",
        "ALTER TABLE {s}.sessions ADD CONSTRAINT uq_sess_scope UNIQUE (id, user_id, agent_id)",
        "ALTER TABLE {s}.messages DROP CONSTRAINT fk_messages_user_id_users,"
        " DROP CONSTRAINT fk_messages_agent_id_agents,"
        " DROP CONSTRAINT fk_messages_session_id_sessions,"
        " ADD CONSTRAINT fk_scope FOREIGN KEY (session_id, user_id, agent_id)"
        " REFERENCES {s}.sessions (id, user_id, agent_id) ON DELETE CASCADE",
    ),
    "planned_and_no_agent_index": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
        "CREATE INDEX ix_unindexed ON {s}.messages (user_id) WHERE content_tsv IS NULL",
        "ALTER TABLE {s}.sessions ADD CONSTRAINT uq_sess_scope UNIQUE (id, user_id, agent_id)",
        "ALTER TABLE {s}.messages DROP CONSTRAINT fk_messages_user_id_users,"
        " DROP CONSTRAINT fk_messages_agent_id_agents,"
        " DROP CONSTRAINT fk_messages_session_id_sessions,"
        " ADD CONSTRAINT fk_scope FOREIGN KEY (session_id, user_id, agent_id)"
        " REFERENCES {s}.sessions (id, user_id, agent_id) ON DELETE CASCADE",
        "DROP INDEX {s}.ix_messages_agent_id",
    ),
    "planned_no_agent_index_partial_gin": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
        "CREATE INDEX ix_unindexed ON {s}.messages (user_id) WHERE content_tsv IS NULL",
        "ALTER TABLE {s}.sessions ADD CONSTRAINT uq_sess_scope UNIQUE (id, user_id, agent_id)",
        "ALTER TABLE {s}.messages DROP CONSTRAINT fk_messages_user_id_users,"
        " DROP CONSTRAINT fk_messages_agent_id_agents,"
        " DROP CONSTRAINT fk_messages_session_id_sessions,"
        " ADD CONSTRAINT fk_scope FOREIGN KEY (session_id, user_id, agent_id)"
        " REFERENCES {s}.sessions (id, user_id, agent_id) ON DELETE CASCADE",
        "DROP INDEX {s}.ix_messages_agent_id",
        "DROP INDEX {s}.ix_messages_content_tsv_gin",
        "CREATE INDEX ix_gin ON {s}.messages USING gin (content_tsv) WHERE content_tsv IS NOT NULL",
    ),
    "also_without_job_trigger": (
        "ALTER TABLE {s}.messages ALTER COLUMN content_tsv DROP EXPRESSION",
        "ALTER TABLE {s}.messages DROP CONSTRAINT fk_messages_user_id_users,"
        " DROP CONSTRAINT fk_messages_agent_id_agents",
        "ALTER TABLE {s}.messages DISABLE TRIGGER messages_enqueue_on_insert",
    ),
}


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
            for variant, statements in VARIANTS.items():
                schema = schema_of(variant)
                mf = await stack.enter_async_context(
                    MemFuse(
                        url,
                        schema=schema,
                        embedder="none",
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
