"""The embedding worker against a real PostgreSQL and the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

import parts
import pytest
from real_model import close_to, memfuse_with_model
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memfuse.container import resolve
from memfuse.db import migrate
from memfuse.db.engines import create_engine
from memfuse.db.models import FACT_GROUP_MESSAGES
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.embedding.worker import EmbeddingWorker
from memfuse.errors import DimensionMismatchError, EmbeddingError
from memfuse.memory import MemFuse, Memory
from memfuse.monitor import PerformanceMonitor
from memfuse.repositories.jobs import JobRepository

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.model  # every test here embeds with the real model


class ScriptedEmbedder:
    """The real model, plus failures and pauses a test asks for."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.model = model
        self.model_name = model.model_name
        self.dimension = model.dimension
        self.poison = "POISON"
        self.before: Callable[[Sequence[str]], object] | None = None
        self.calls = 0

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.before is not None:
            pending = self.before(texts)
            if asyncio.iscoroutine(pending):
                await pending
        if any(self.poison in t for t in texts):
            raise RuntimeError("the model cannot embed this")
        return await self.model.embed_documents(texts)


def make_worker(engine: AsyncEngine, embedder: object, **options: object) -> EmbeddingWorker:
    return EmbeddingWorker(engine, embedder, PerformanceMonitor(), **options)  # type: ignore[arg-type]


async def message_vectors(engine: AsyncEngine) -> dict[str, list[float] | None]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT content, embedding FROM memfuse.messages"))
        return {
            row.content: (None if row.embedding is None else row.embedding.to_list())
            for row in rows
        }


async def jobs(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(text("SELECT count(*) FROM memfuse.embedding_jobs"))
            ).scalar_one()
        )


async def add(memory: Memory, *contents: str) -> list[uuid.UUID]:
    return await memory.add([{"role": "user", "content": c} for c in contents])


async def wait_until(check: Callable[[], object], limit: float = 10.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.perf_counter() - started
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_new_row_is_embedded_promptly_through_notify(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    worker = make_worker(engine_for_worker, model, poll_interval=30.0)
    await worker.verify()
    worker.start()
    try:
        await wait_until(lambda: worker.stats.listener_connects == 1)
        memory = await mf.init("ana")
        await add(memory, "I adopted a cat named Miso.")

        async def embedded() -> bool:
            return (await message_vectors(engine_for_worker)).get(
                "I adopted a cat named Miso."
            ) is not None

        waited = await wait_until(embedded)
    finally:
        await worker.close()
    assert waited < 5.0, "well before the 30 s poll interval"
    assert worker.stats.notifications >= 1
    [vector] = [v for v in (await message_vectors(engine_for_worker)).values() if v]
    assert close_to(vector, await model.embed_query("I adopted a cat named Miso."))


async def test_rows_written_while_no_worker_ran_are_found_by_polling(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, "first", "second", "third")
    worker = make_worker(engine_for_worker, model, listen=False, poll_interval=0.1)
    worker.start()
    try:

        async def all_embedded() -> bool:
            return all(v is not None for v in (await message_vectors(engine_for_worker)).values())

        await wait_until(all_embedded)
    finally:
        await worker.close()
    assert await jobs(engine_for_worker) == 0


async def test_a_poison_row_is_retried_then_dead_lettered_while_its_batch_succeeds(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, "good one", "POISON pill", "good two")
    embedder = ScriptedEmbedder(model)
    worker = make_worker(engine_for_worker, embedder, max_attempts=2, backoff_base=0.0)

    await worker.process_batch()
    vectors = await message_vectors(engine_for_worker)
    assert vectors["good one"] is not None and vectors["good two"] is not None
    assert vectors["POISON pill"] is None
    assert await jobs(engine_for_worker) == 1, "the poison job waits for a retry"

    await worker.process_batch()
    assert await jobs(engine_for_worker) == 0
    async with engine_for_worker.connect() as connection:
        letter = (
            await connection.execute(
                text("SELECT attempts, last_error FROM memfuse.embedding_dead_letters")
            )
        ).one()
    assert letter.attempts == 2 and "cannot embed" in letter.last_error
    assert worker.stats.dead_lettered == 1

    embedder.poison = "nothing matches this"
    assert await worker.requeue_dead_letters() == 1
    await worker.drain()
    assert (await message_vectors(engine_for_worker))["POISON pill"] is not None


class NonFiniteEmbedder(ScriptedEmbedder):
    """The real model, except that a poison text comes back with a NaN or an infinity."""

    def __init__(self, model: LocalEmbedder, bad: float) -> None:
        super().__init__(model)
        self.bad = bad

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = await self.model.embed_documents(texts)
        return [
            [self.bad, *vector[1:]] if "POISON" in text else vector
            for text, vector in zip(texts, vectors, strict=True)
        ]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_a_vector_with_nan_or_infinity_fails_its_row_alone(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder, bad: float
) -> None:
    """pgvector refuses such a vector; stored with the others, it would fail their write too,
    batch after batch. It is the row's failure instead: retried, then dead-lettered."""
    memory = await mf.init("ana")
    await add(memory, "good one", "POISON pill", "good two")
    worker = make_worker(
        engine_for_worker, NonFiniteEmbedder(model, bad), max_attempts=1, backoff_base=0.0
    )
    await worker.process_batch()
    vectors = await message_vectors(engine_for_worker)
    assert vectors["good one"] is not None and vectors["good two"] is not None
    assert vectors["POISON pill"] is None
    assert worker.stats.dead_lettered == 1
    async with engine_for_worker.connect() as connection:
        error = (
            await connection.execute(text("SELECT last_error FROM memfuse.embedding_dead_letters"))
        ).scalar_one()
    assert "NaN or infinite" in error


async def test_an_embedder_that_is_down_fails_the_batch_without_a_call_per_text(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, *(f"message {i}" for i in range(10)))
    embedder = ScriptedEmbedder(model)

    def down(_: Sequence[str]) -> None:
        raise EmbeddingError("embedding failed after 4 attempt(s): HTTP 503", transient=True)

    embedder.before = down
    worker = make_worker(engine_for_worker, embedder, backoff_base=60.0)
    assert await worker.process_batch() == 10
    assert embedder.calls == 1, "no point in calling a service that is down once per text"
    assert worker.stats.failures == 10 and worker.stats.vectors_written == 0
    async with engine_for_worker.connect() as connection:
        waiting = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM memfuse.embedding_jobs "
                    "WHERE attempts = 1 AND retry_after > clock_timestamp() "
                    "AND last_error LIKE '%HTTP 503%'"
                )
            )
        ).scalar_one()
    assert waiting == 10, "every job backs off and keeps its error"


async def test_a_worker_cancelled_midway_gives_its_jobs_back_to_another(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, *(f"message {i}" for i in range(10)))
    queued = await jobs(engine_for_worker)
    embedding = asyncio.Event()
    embedder = ScriptedEmbedder(model)

    async def hang(_: Sequence[str]) -> None:
        embedding.set()
        await asyncio.sleep(3600)

    embedder.before = hang
    stuck = make_worker(engine_for_worker, embedder)
    batch = asyncio.create_task(stuck.process_batch())
    await asyncio.wait_for(embedding.wait(), 10)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert await jobs(engine_for_worker) == queued
    assert all(v is None for v in (await message_vectors(engine_for_worker)).values())

    other = make_worker(engine_for_worker, model)
    await other.drain()
    assert other.stats.jobs_done == queued
    assert all(v is not None for v in (await message_vectors(engine_for_worker)).values())


async def test_a_crashed_workers_leases_expire_and_its_jobs_come_back(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    """A worker that dies without giving its leases back (a killed process) holds its jobs
    only until the lease expires; no connection has to die for them to come back."""
    memory = await mf.init("ana")
    await add(memory, *(f"message {i}" for i in range(5)))
    queued = await jobs(engine_for_worker)
    async with engine_for_worker.begin() as connection:
        leased = (
            await connection.execute(
                text(
                    "UPDATE memfuse.embedding_jobs SET locked_by = 'dead-worker', "
                    "locked_until = clock_timestamp() + interval '1 second' RETURNING id"
                )
            )
        ).all()
    assert len(leased) == queued

    other = make_worker(engine_for_worker, model)
    assert await other.process_batch() == 0, "a live lease keeps the jobs from other workers"
    await asyncio.sleep(1.2)
    await other.drain()
    assert other.stats.jobs_done == queued
    assert all(v is not None for v in (await message_vectors(engine_for_worker)).values())


async def test_a_slow_embed_keeps_its_leases_renewed(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    """A model call longer than the lease: the lease is renewed, no other worker takes the
    jobs meanwhile, and the batch finishes them."""
    memory = await mf.init("ana")
    await add(memory, "one", "two", "three")
    embedder = ScriptedEmbedder(model)
    embedder.before = lambda _: asyncio.sleep(1.5)
    slow = make_worker(engine_for_worker, embedder, lease_seconds=0.6)
    batch = asyncio.create_task(slow.process_batch())
    await asyncio.sleep(1.0)  # well past the first lease
    other = make_worker(engine_for_worker, model)
    assert await other.process_batch() == 0, "the renewed leases keep the jobs"
    assert await batch == 3
    assert await jobs(engine_for_worker) == 0
    assert slow.stats.jobs_done == 3


async def test_a_job_whose_lease_lapsed_mid_embed_is_still_finished(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    """Another worker re-leased the jobs while the first one embedded: the first one, holding
    the rows and writing the vectors of their current text, still deletes the jobs. (Leaving
    them to their new owner let two workers hand jobs back and forth for ever.)"""
    memory = await mf.init("ana")
    await add(memory, "one", "two")
    other = make_worker(engine_for_worker, model)

    async def lapse(_: Sequence[str]) -> None:
        async with engine_for_worker.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE memfuse.embedding_jobs "
                    "SET locked_until = clock_timestamp() - interval '1 second'"
                )
            )
        async with async_sessionmaker(engine_for_worker).begin() as db:
            stolen = await JobRepository(db).claim(
                10, owner=other.worker_id, lease=timedelta(minutes=1)
            )
        assert len(stolen) == 2

    embedder = ScriptedEmbedder(model)
    embedder.before = lapse
    first = make_worker(engine_for_worker, embedder)
    assert await first.process_batch() == 2
    assert await jobs(engine_for_worker) == 0
    assert first.stats.jobs_done == 2
    assert all(v is not None for v in (await message_vectors(engine_for_worker)).values())


async def worker_inside_its_embed_call(
    engine: AsyncEngine, model: LocalEmbedder, embed_seconds: float
) -> EmbeddingWorker:
    """A running worker whose embed call of the queued batch takes ``embed_seconds``."""
    embedding = asyncio.Event()
    embedder = ScriptedEmbedder(model)

    async def slow(_: Sequence[str]) -> None:
        embedding.set()
        await asyncio.sleep(embed_seconds)

    embedder.before = slow
    worker = make_worker(engine, embedder, poll_interval=30.0, listen=False)
    worker.start()
    await asyncio.wait_for(embedding.wait(), 10)
    return worker


async def test_graceful_stop_finishes_the_batch_in_hand(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    await add(await mf.init("ana"), *(f"slow message {i}" for i in range(5)))
    worker = await worker_inside_its_embed_call(engine_for_worker, model, embed_seconds=0.5)
    await worker.close(grace=10.0)

    assert worker.stats.jobs_done == 5
    assert await jobs(engine_for_worker) == 0
    assert all(v is not None for v in (await message_vectors(engine_for_worker)).values())


async def test_a_stop_past_its_grace_rolls_the_batch_back(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    await add(await mf.init("ana"), *(f"stuck message {i}" for i in range(5)))
    worker = await worker_inside_its_embed_call(engine_for_worker, model, embed_seconds=3600)
    await worker.close(grace=0.1)

    assert worker.stats.jobs_done == 0
    assert await jobs(engine_for_worker) == 5, "the jobs are back in the queue"
    assert all(v is None for v in (await message_vectors(engine_for_worker)).values())


async def test_the_monitor_shows_queue_depth_dead_letters_and_batches(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, "fine", "POISON", "also fine")
    monitor = PerformanceMonitor()
    embedder = ScriptedEmbedder(model)
    worker = EmbeddingWorker(
        engine_for_worker,
        embedder,
        monitor,
        max_attempts=1,
        backoff_base=0.0,  # type: ignore[arg-type]
    )
    assert await worker.queue_depth() == 3
    assert monitor.gauges()["embedding_queue_depth"] == 3

    await worker.process_batch()
    await worker.refresh_gauges()

    gauges, counters = monitor.gauges(), monitor.counters()
    assert gauges["embedding_queue_depth"] == 0
    assert gauges["embedding_dead_letters"] == 1
    assert gauges["embedding_last_batch_jobs"] == 3
    assert counters == {
        "embedding_jobs_dead_lettered": 1,
        "embedding_jobs_failed": 1,
        "embedding_texts_embedded": 2,
        "embedding_vectors_written": 2,
    }
    lag = monitor.stats("embedding_lag")
    assert lag is not None and lag.count == 2
    batch = monitor.stats("embedding_batch")
    assert batch is not None and batch.errors >= 1, "the failed batch call is counted"
    assert "embedding_dead_letters = 1" in monitor.report()


async def test_two_workers_process_each_job_once(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, *(f"note number {i}" for i in range(120)))
    queued = await jobs(engine_for_worker)
    first = make_worker(engine_for_worker, model, batch_size=8)
    second = make_worker(engine_for_worker, model, batch_size=8)
    await asyncio.gather(first.drain(), second.drain())
    assert first.stats.jobs_done + second.stats.jobs_done == queued == 120
    assert first.stats.jobs_done > 0 and second.stats.jobs_done > 0
    assert all(v is not None for v in (await message_vectors(engine_for_worker)).values())


async def test_a_content_update_is_embedded_again(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    [message_id] = await add(memory, "I live in Porto.")
    worker = make_worker(engine_for_worker, model)
    await worker.drain()
    await memory.update_message(message_id, content="I live in Lisbon.")
    assert (await message_vectors(engine_for_worker))["I live in Lisbon."] is None
    await worker.drain()
    vector = (await message_vectors(engine_for_worker))["I live in Lisbon."]
    assert vector is not None and close_to(vector, await model.embed_query("I live in Lisbon."))


async def test_a_message_is_embedded_and_searchable_with_its_speaker(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await memory.add(
        [{"role": "user", "name": "Caroline", "content": "I went to a support group."}]
    )
    await add(memory, "no speaker here")
    await make_worker(engine_for_worker, model).drain()
    vectors = await message_vectors(engine_for_worker)
    named = vectors["I went to a support group."]
    assert named is not None
    assert close_to(named, await model.embed_query("Caroline: I went to a support group."))
    plain = vectors["no speaker here"]
    assert plain is not None and close_to(plain, await model.embed_query("no speaker here"))
    async with engine_for_worker.connect() as connection:
        found = (
            await connection.execute(
                text(
                    "SELECT content FROM memfuse.messages "
                    "WHERE content_tsv @@ websearch_to_tsquery('english', 'caroline')"
                )
            )
        ).scalars()
        assert list(found) == ["I went to a support group."]


async def test_edits_before_a_worker_runs_share_one_job(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    [message_id] = await add(memory, "draft 0")
    for n in range(1, 6):
        await memory.update_message(message_id, content=f"draft {n}")
    assert await jobs(engine_for_worker) == 1, "the queued job reads the text when claimed"
    worker = make_worker(engine_for_worker, model)
    await worker.drain()
    assert worker.stats.vectors_written == 1
    vector = (await message_vectors(engine_for_worker))["draft 5"]
    assert vector is not None and close_to(vector, await model.embed_query("draft 5"))


async def test_a_row_changed_while_embedding_keeps_no_stale_vector(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    [message_id] = await add(memory, "old text")
    embedder = ScriptedEmbedder(model)

    async def edit_meanwhile(_: Sequence[str]) -> None:
        embedder.before = None
        await memory.update_message(message_id, content="new text")

    embedder.before = edit_meanwhile
    worker = make_worker(engine_for_worker, embedder)
    await worker.process_batch()
    assert (await message_vectors(engine_for_worker))["new text"] is None, "old vector not written"
    assert await jobs(engine_for_worker) == 1, "the edit queued its own job"
    await worker.drain()
    vector = (await message_vectors(engine_for_worker))["new text"]
    assert vector is not None and close_to(vector, await model.embed_query("new text"))


async def test_an_embedder_of_another_dimension_is_refused(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    embedder = ScriptedEmbedder(model)
    embedder.dimension = 768
    with pytest.raises(DimensionMismatchError, match="768"):
        await make_worker(engine_for_worker, embedder).verify()


async def test_the_listen_connection_survives_being_terminated(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    worker = make_worker(engine_for_worker, model, poll_interval=30.0)
    worker.start()
    try:
        await wait_until(lambda: worker.stats.listener_connects == 1)
        async with engine_for_worker.connect() as connection:
            killed = await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%'"
                )
            )
            assert killed.scalars().all() == [True]
        await wait_until(lambda: worker.stats.listener_connects == 2)
        memory = await mf.init("ana")
        await add(memory, "after the reconnect")

        async def embedded() -> bool:
            return (await message_vectors(engine_for_worker))["after the reconnect"] is not None

        assert await wait_until(embedded) < 5.0
    finally:
        await worker.close()


async def test_migrated_schema_is_required(database_url: str, model: LocalEmbedder) -> None:
    engine = create_engine(database_url)
    try:
        with pytest.raises(Exception, match="not migrated"):
            await make_worker(engine, model).verify()
        await migrate.upgrade(engine)
        await make_worker(engine, model).verify()
    finally:
        await engine.dispose()


async def test_memfuse_runs_the_worker_and_flush_waits_for_the_vectors(database_url: str) -> None:
    async with MemFuse(database_url, embedder="local", pipeline_auto=False) as mf:
        assert (await resolve(mf.container.embedding_worker)) is not None
        memory = await mf.init("ana")
        await memory.add(
            [
                {"role": "user", "content": "I moved to Lisbon last month."},
                {"role": "assistant", "content": "How do you like it?"},
            ]
        )
        await mf.flush()
        messages = await memory.list_messages()
        episodes = await memory.list_episodes()
        facts = await memory.list_facts()
    assert messages and episodes and facts
    assert all(row.embedded for row in (*messages, *episodes, *facts))


async def test_a_text_repeated_in_one_batch_is_embedded_once(
    mf: MemFuse, engine_for_worker: AsyncEngine, model: LocalEmbedder
) -> None:
    memory = await mf.init("ana")
    await add(memory, "ok", "ok", "sounds good", "ok")
    embedder = ScriptedEmbedder(model)
    sent: list[str] = []
    embedder.before = sent.extend
    worker = make_worker(engine_for_worker, embedder)
    await worker.drain()
    assert sorted(sent) == ["ok", "sounds good"], "each distinct text reaches the model once"
    assert worker.stats.texts_embedded == 2 and worker.stats.vectors_written == 4
    vectors = await message_vectors(engine_for_worker)
    ok = await model.embed_query("ok")
    async with engine_for_worker.connect() as connection:
        rows = await connection.execute(
            text("SELECT embedding FROM memfuse.messages WHERE content = 'ok'")
        )
        assert [close_to(row.embedding.to_list(), ok) for row in rows] == [True, True, True]
    assert vectors["sounds good"] is not None


async def test_the_facts_of_a_group_of_messages_share_one_vector_of_all_of_them(
    database_url: str, model: LocalEmbedder
) -> None:
    """With the pipeline and the worker running: M2 draws several facts from each message,
    and the facts of each FACT_GROUP_MESSAGES consecutive messages of a session are embedded
    as one text (docs/layers.md, "Fact groups")."""
    pets = ["Rex", "Luna", "Mochi", "Pepper", "Ziggy", "Nova", "Juno", "Olive"]
    followers = [f"I adopted a puppy named {pet}." for pet in pets[:FACT_GROUP_MESSAGES]]
    async with memfuse_with_model(database_url, model) as running:
        memory = await running.init("caroline", session="chat")
        await memory.add(
            [
                {
                    "role": "user",
                    "name": "Caroline",
                    "content": "I went to a support group yesterday. "
                    "My sister moved to Lisbon last year. I love painting sunsets.",
                },
                *({"role": "user", "name": "Caroline", "content": line} for line in followers),
            ]
        )
        await running.flush()
        stats = running.worker_stats()
        assert stats is not None
        async with parts.db(running) as db:
            facts = (
                await db.execute(
                    text(
                        f"SELECT (m.seq - 1) / {FACT_GROUP_MESSAGES} AS fact_group,"
                        " f.content, g.embedding"
                        " FROM memfuse.facts f JOIN memfuse.messages m"
                        " ON m.id = f.message_ids[1] LEFT JOIN memfuse.fact_groups g"
                        " ON g.session_id = f.session_id AND g.group_no = f.group_no"
                        " ORDER BY m.seq, f.created_at, f.id"
                    )
                )
            ).all()
    by_group: dict[int, list[tuple[str, list[float]]]] = {}
    for fact_group, content, embedding in facts:
        assert embedding is not None, "every fact has a vector"
        by_group.setdefault(fact_group, []).append((content, embedding.to_list()))
    assert sorted(by_group) == [0, 1] and len(by_group[0]) >= 3
    for group in by_group.values():
        expected = await model.embed_query("\n".join(content for content, _ in group))
        assert all(close_to(vector, expected) for _, vector in group)
    assert stats.texts_embedded < stats.vectors_written, "fewer model texts than vectors"
