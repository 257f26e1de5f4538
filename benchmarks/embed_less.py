"""Which vectors earn their cost: LoCoMo recall with each kind of row left unembedded.

Issue 14 asks memfuse to embed less without losing recall. This study loads the LoCoMo
development split once through the real write path (offline fact extractor, local model),
counts the rows of each layer per message, then asks every question again with the vectors of
one kind of row set aside: facts, episodes, the episodes still open at the end of each session
(what "embed an episode when it closes" would leave unembedded), and facts and episodes
together. Two more variants embed new texts instead: every fact of a message shares one vector
of all that message's facts, and a message's own vector reads the message followed by its
facts (facts then unembedded). Rows without a vector are still found by full text
(``include_unembedded``), as they would be in the design being measured. The vectors are
restored after each variant. (Since issue 14 the library embeds a message's facts as one text,
so the first variant of a run today is already that design.)

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.embed_less \\
        --output benchmarks/results/embed_less.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import asyncpg
import numpy as np

from benchmarks.harness import drop_schema, run_benchmark
from memfuse import MemFuse, Memory
from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.models import message_text
from memfuse.db.vector import register_vector_codec
from memfuse.embedding.embedders import Embedder
from memfuse.evaluation.locomo import (
    RESULTS_PER_QUESTION,
    LocomoData,
    load_locomo,
    minilm_token_counter,
    recall_at_budgets,
    summarize,
)
from memfuse.ingest import ingest_conversations
from memfuse.progress import track

SCHEMA: Final = "memfuse_embed_study"
TABLES: Final = ("messages", "episodes", "facts")
DEFAULT_DATA: Final = Path(__file__).resolve().parents[2] / "shared/data/locomo/locomo_dev.json"

OPEN_EPISODES: Final = f"""
    SELECT DISTINCT ON (session_id) id FROM {SCHEMA}.episodes ORDER BY session_id, last_seq DESC
"""
ALL_FACTS: Final = ("facts", f"SELECT id FROM {SCHEMA}.facts")
ALL_EPISODES: Final = ("episodes", f"SELECT id FROM {SCHEMA}.episodes")
VARIANTS: Final[dict[str, list[tuple[str, str]]]] = {
    "all_vectors": [],
    "no_fact_vectors": [ALL_FACTS],
    "no_episode_vectors": [ALL_EPISODES],
    "no_open_episode_vectors": [("episodes", OPEN_EPISODES)],
    "no_fact_or_episode_vectors": [ALL_FACTS, ALL_EPISODES],
}
"""Each variant: (table, query selecting ids of that table) whose vectors are set aside."""


Fold = Callable[
    [asyncpg.Connection, Embedder, list[asyncpg.Record]], Coroutine[Any, Any, dict[str, int]]
]
"""A variant that embeds new texts: gives rows new vectors, says how many it changed."""


async def set_aside(
    connection: asyncpg.Connection, selects: list[tuple[str, str]]
) -> dict[str, int]:
    """Move the selected rows' vectors to a side table; how many of each table moved."""
    counts: dict[str, int] = {}
    for table, select in selects:
        await connection.execute(
            f"""
            WITH saved AS (
                INSERT INTO {SCHEMA}.set_aside
                SELECT '{table}', t.id, t.embedding FROM {SCHEMA}.{table} t
                WHERE t.id IN ({select}) AND t.embedding IS NOT NULL
                RETURNING id
            )
            UPDATE {SCHEMA}.{table} SET embedding = NULL WHERE id IN (SELECT id FROM saved)
            """
        )
        counts[table] = int(
            await connection.fetchval(
                f"SELECT count(*) FROM {SCHEMA}.set_aside WHERE table_name = $1", table
            )
        )
    return counts


async def restore(connection: asyncpg.Connection) -> None:
    for table in TABLES:
        await connection.execute(
            f"""
            UPDATE {SCHEMA}.{table} t SET embedding = s.embedding
            FROM {SCHEMA}.set_aside s WHERE s.table_name = '{table}' AND s.id = t.id
            """
        )
    await connection.execute(f"TRUNCATE {SCHEMA}.set_aside")


async def facts_by_message(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """Each message with facts: its speaker, text, and its facts' ids and texts in order."""
    return list(
        await connection.fetch(
            f"""
            SELECT m.id, m.name, m.content,
                   array_agg(f.id ORDER BY f.created_at, f.id) AS fact_ids,
                   array_agg(f.content ORDER BY f.created_at, f.id) AS fact_texts
            FROM {SCHEMA}.messages m JOIN {SCHEMA}.facts f ON f.message_ids[1] = m.id
            GROUP BY m.id, m.name, m.content
            """
        )
    )


async def one_vector_per_message_for_its_facts(
    connection: asyncpg.Connection, embedder: Embedder, groups: list[asyncpg.Record]
) -> dict[str, int]:
    """Every fact of a message gets the vector of all that message's facts, as one text."""
    moved = await set_aside(connection, [ALL_FACTS])
    vectors = await embedder.embed_documents(["\n".join(g["fact_texts"]) for g in groups])
    await connection.executemany(
        f"UPDATE {SCHEMA}.facts SET embedding = $2 WHERE id = ANY($1::uuid[])",
        [(g["fact_ids"], np.asarray(v, np.float32)) for g, v in zip(groups, vectors, strict=True)],
    )
    return moved | {"vectors_embedded": len(groups)}


async def fact_rows(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every fact with its source message's session and number, and its episode, in order."""
    return list(
        await connection.fetch(
            f"""
            SELECT f.id, f.content, m.session_id, m.seq, f.episode_id
            FROM {SCHEMA}.facts f JOIN {SCHEMA}.messages m ON m.id = f.message_ids[1]
            ORDER BY m.session_id, m.seq, f.created_at, f.id
            """
        )
    )


async def facts_share_vectors_by(
    connection: asyncpg.Connection,
    embedder: Embedder,
    key: Callable[[asyncpg.Record], object],
) -> dict[str, int]:
    """Facts with the same ``key`` share one vector: of all their texts, one per line."""
    moved = await set_aside(connection, [ALL_FACTS])
    groups: dict[object, list[asyncpg.Record]] = {}
    for fact in await fact_rows(connection):
        groups.setdefault(key(fact), []).append(fact)
    members = list(groups.values())
    vectors = await embedder.embed_documents(
        ["\n".join(fact["content"] for fact in group) for group in members]
    )
    await connection.executemany(
        f"UPDATE {SCHEMA}.facts SET embedding = $2 WHERE id = ANY($1::uuid[])",
        [
            ([fact["id"] for fact in group], np.asarray(vector, np.float32))
            for group, vector in zip(members, vectors, strict=True)
        ],
    )
    return moved | {"vectors_embedded": len(members)}


def facts_share_one_vector_per_messages(count: int) -> Fold:
    """The facts of ``count`` consecutive messages of a session share a vector (1-n, ...)."""

    async def fold(
        connection: asyncpg.Connection, embedder: Embedder, groups: list[asyncpg.Record]
    ) -> dict[str, int]:
        del groups
        return await facts_share_vectors_by(
            connection, embedder, lambda fact: (fact["session_id"], (fact["seq"] - 1) // count)
        )

    return fold


async def facts_share_one_vector_per_episode(
    connection: asyncpg.Connection, embedder: Embedder, groups: list[asyncpg.Record]
) -> dict[str, int]:
    """The facts of one episode share a vector (the model reads its first 256 word pieces)."""
    del groups
    return await facts_share_vectors_by(connection, embedder, lambda fact: fact["episode_id"])


async def facts_vector_instead_of_message_vector(
    connection: asyncpg.Connection, embedder: Embedder, groups: list[asyncpg.Record]
) -> dict[str, int]:
    """Facts share one vector per message, and a message with facts keeps none of its own."""
    moved = await one_vector_per_message_for_its_facts(connection, embedder, groups)
    return moved | await set_aside(
        connection, [("messages", f"SELECT message_ids[1] FROM {SCHEMA}.facts")]
    )


async def message_vector_with_its_facts(
    connection: asyncpg.Connection, embedder: Embedder, groups: list[asyncpg.Record]
) -> dict[str, int]:
    """A message's vector reads the message, then its facts; facts have none."""
    moved = await set_aside(
        connection,
        [ALL_FACTS, ("messages", f"SELECT message_ids[1] FROM {SCHEMA}.facts")],
    )
    texts = ["\n".join([message_text(g["name"], g["content"]), *g["fact_texts"]]) for g in groups]
    vectors = await embedder.embed_documents(texts)
    await connection.executemany(
        f"UPDATE {SCHEMA}.messages SET embedding = $2 WHERE id = $1",
        [(g["id"], np.asarray(v, np.float32)) for g, v in zip(groups, vectors, strict=True)],
    )
    return moved | {"vectors_embedded": len(groups)}


async def ask(
    mf: MemFuse, data: LocomoData, count_tokens: Callable[[str], int], label: str
) -> dict[str, Any]:
    memories: dict[str, Memory] = {}
    recalls: list[dict[int, float]] = []
    for question in track(data.questions, desc=label, unit="q"):
        memory = memories.get(question.user)
        if memory is None:
            memory = memories[question.user] = await mf.init(question.user)
        results = await memory.query(question.question, top_k=RESULTS_PER_QUESTION)
        recalls.append(recall_at_budgets(question, results, count_tokens))
    return summarize(data.questions, recalls)


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    data = load_locomo(args.data)
    await drop_schema(url, SCHEMA)
    count_tokens = minilm_token_counter()
    results: dict[str, Any] = {"data": str(args.data), "database": source}
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        async with MemFuse(
            url, schema=SCHEMA, embedder="local", search_cache_ttl=0.0, pipeline_parallel=True
        ) as mf:
            await ingest_conversations(mf, data.conversations, progress=True)
            await mf.flush()
            messages = int(await connection.fetchval(f"SELECT count(*) FROM {SCHEMA}.messages"))
            rows = {
                table: int(
                    await connection.fetchval(
                        f"SELECT count(*) FROM {SCHEMA}.{table} WHERE embedding IS NOT NULL"
                    )
                )
                for table in ("messages", "episodes", "facts")
            }
            open_episodes = len(await connection.fetch(OPEN_EPISODES))
            results["messages"] = messages
            results["questions"] = len(data.questions)
            results["vectors_per_message"] = {
                table: round(count / messages, 3) for table, count in rows.items()
            } | {"total": round(sum(rows.values()) / messages, 3)}
            results["open_episodes_at_end"] = open_episodes
            results["variants"] = {}
            assert await register_vector_codec(connection)
            await connection.execute(
                f"CREATE TABLE {SCHEMA}.set_aside AS SELECT 'facts'::text AS table_name, id,"
                f" embedding FROM {SCHEMA}.facts WITH NO DATA"
            )
            for name, selects in VARIANTS.items():
                if args.only and name not in args.only:
                    continue
                set_aside_counts = await set_aside(connection, selects)
                try:
                    recall = await ask(mf, data, count_tokens, name)
                finally:
                    await restore(connection)
                kept = sum(rows.values()) - sum(set_aside_counts.values())
                results["variants"][name] = {
                    **recall,
                    "vectors_set_aside": set_aside_counts,
                    "vectors_per_message": round(kept / messages, 3),
                }
            embedder = (await resolve(mf.container.retrieval_service)).embedder
            assert embedder is not None
            groups = await facts_by_message(connection)
            folded: dict[str, Fold] = {
                "facts_share_one_vector_per_message": one_vector_per_message_for_its_facts,
                **{
                    f"facts_share_one_vector_per_{count}_messages": (
                        facts_share_one_vector_per_messages(count)
                    )
                    for count in args.windows
                },
                "facts_share_one_vector_per_episode": facts_share_one_vector_per_episode,
                "message_vector_includes_its_facts": message_vector_with_its_facts,
                "facts_vector_instead_of_message_vector": facts_vector_instead_of_message_vector,
            }
            for name, fold in folded.items():
                if args.only and name not in args.only:
                    continue
                changed = await fold(connection, embedder, groups)
                try:
                    recall = await ask(mf, data, count_tokens, name)
                finally:
                    await restore(connection)
                removed = changed.get("facts", 0)
                if name == "facts_vector_instead_of_message_vector":
                    removed += changed.get("messages", 0)
                kept = sum(rows.values()) - removed
                if name != "message_vector_includes_its_facts":
                    kept += changed["vectors_embedded"]
                results["variants"][name] = {
                    **recall,
                    "vectors_changed": changed,
                    "vectors_per_message": round(kept / messages, 3),
                }
    finally:
        await connection.close()
        if not args.keep:
            await drop_schema(url, SCHEMA)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed_less", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")
    parser.add_argument("--output", type=Path, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[2, 3, 4],
        metavar="N",
        help="fact groups of N consecutive messages to measure (default: 2 3 4)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="VARIANT", help="run only these variants (default: all)"
    )
    args = parser.parse_args()
    run_benchmark("benchmarks.embed_less", run, args)


if __name__ == "__main__":
    main()
