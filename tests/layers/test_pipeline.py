"""The layer pipeline on a real database: modes, crash recovery, failures, background runs."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import parts
import pytest
from dependency_injector import providers
from scripted_extractor import ScriptedExtractor
from sqlalchemy import text

from memfuse.container import Container, resolve
from memfuse.errors import DatabaseUnavailableError, PipelineError
from memfuse.layers.extractors import FactCandidate
from memfuse.layers.extractors.offline import OfflineFactExtractor
from memfuse.layers.m1 import EpisodeProcessor
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.facts import FactRepository
from memfuse.repositories.progress import Progress
from memfuse.types import ChunkData, EpisodeRow

DAY_1 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def conversation(session: int, turns: int = 30) -> list[dict[str, Any]]:
    """A LoCoMo-like exchange: two speakers, first-person statements, one date."""
    at = DAY_1 + timedelta(days=7 * session)
    lines = []
    for turn in range(turns):
        speaker = "Caroline" if turn % 2 == 0 else "Melanie"
        lines.append(
            {
                "role": "user",
                "name": speaker,
                "content": f"I went to the art class number {session}-{turn} yesterday "
                f"and painted a lake with {speaker}'s brushes.",
                "created_at": at + timedelta(minutes=turn),
            }
        )
    return lines


async def load(mf: MemFuse, user: str, sessions: int = 3) -> list[Memory]:
    memories = []
    for number in range(sessions):
        memory = await mf.init(user, session=f"session-{number}")
        await memory.add(conversation(number))
        memories.append(memory)
    return memories


async def layer_contents(memory: Memory) -> tuple[list[Any], list[Any]]:
    episodes = await memory.list_episodes(all_sessions=True, order="asc", limit=1000)
    facts = await memory.list_facts(all_sessions=True, include_superseded=True, limit=1000)
    return (
        sorted((e.content, e.first_seq, e.last_seq, len(e.message_ids)) for e in episodes),
        sorted((f.content, f.fact_type, f.fact_key, f.valid_to is None) for f in facts),
    )


async def count(mf: MemFuse, sql: str) -> int:
    async with parts.db(mf) as db:
        return int((await db.execute(text(sql))).scalar_one())


async def test_parallel_and_sequential_modes_give_the_same_layers(database_url: str) -> None:
    async with MemFuse(
        database_url,
        pipeline_auto=False,
        pipeline_batch_messages=7,
        episode_target_tokens=120,
        episode_max_tokens=160,
    ) as mf:
        parallel_user = await load(mf, "parallel")
        mf.set_parallel(True)
        await mf.flush()
        sequential_user = await load(mf, "sequential")
        mf.set_parallel(False)
        assert not mf.parallel
        await mf.flush()

        parallel = await layer_contents(parallel_user[0])
        sequential = await layer_contents(sequential_user[0])
    assert parallel == sequential
    episodes, facts = parallel
    assert len(episodes) > 3 and len(facts) >= 90


async def test_every_layer_is_timed_in_the_monitor(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        mf.monitor.clear()
        await load(mf, "timed", sessions=1)
        await mf.flush()
        names = set(mf.monitor.all_stats())
    assert {"m0_operation", "m1_operation", "m2_operation", "buffer_flush"} <= names


async def test_processing_cancelled_midway_resumes_after_restart_without_loss_or_duplicates(
    database_url: str,
) -> None:
    extractor = ScriptedExtractor({}, delegate=OfflineFactExtractor())
    extractor.pause_on_call = 3
    container = Container()
    container.fact_extractor.override(providers.Object(extractor))
    async with MemFuse(
        database_url, container=container, pipeline_auto=False, pipeline_batch_messages=10
    ) as mf:
        mf.set_parallel(False)
        memories = await load(mf, "crash", sessions=2)
        flushing = asyncio.create_task(mf.flush())
        await asyncio.wait_for(extractor.paused.wait(), timeout=10)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        partly = await count(
            mf, "SELECT count(*) FROM memfuse.layer_progress WHERE processed_seq > 0"
        )
        assert partly >= 1

    async with MemFuse(database_url, pipeline_auto=False) as restarted:
        await restarted.flush()
        memory = await restarted.init("crash", session="session-0")
        messages = await memory.list_messages(all_sessions=True, limit=1000)
        episodes = await memory.list_episodes(all_sessions=True, limit=1000)
        lineage = [i for e in episodes for i in e.message_ids]
        assert sorted(lineage) == sorted(m.id for m in messages), "each message in one episode"
        facts = await memory.list_facts(all_sessions=True, include_superseded=True, limit=1000)
        assert len({f.content for f in facts}) == len(facts) == 60
        assert {i for f in facts for i in f.message_ids} == {m.id for m in messages}
    assert len(memories) == 2


async def test_a_failing_layer_keeps_its_messages_and_is_retried(database_url: str) -> None:
    extractor = ScriptedExtractor({"I love hiking.": [("Ana loves hiking.", None)]})
    extractor.fail_next = 1
    container = Container()
    container.fact_extractor.override(providers.Object(extractor))
    async with MemFuse(database_url, container=container, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I love hiking."}])
        with pytest.raises(PipelineError, match="extractor unavailable"):
            await mf.flush()
        assert len(await memory.list_episodes()) == 1, "M1 is not held back by M2"
        assert await memory.list_facts() == []
        failures = await count(mf, "SELECT failures FROM memfuse.layer_progress WHERE layer = 'm2'")
        assert failures == 1

        await mf.flush()
        assert [f.content for f in await memory.list_facts()] == ["Ana loves hiking."]
        assert await count(mf, "SELECT max(failures) FROM memfuse.layer_progress") == 0


class LostConnectionExtractor(ScriptedExtractor):
    """Fails as a dropped connection does: the database's fault, not the session's.

    A double because a real connection cannot be dropped at exactly this step reliably; the
    real outage, a server restarted mid-traffic, is tests/test_server_restart.py.
    """

    def __init__(self) -> None:
        super().__init__({})
        self.fail = True

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        if self.fail:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        return await super().extract(messages)


async def test_a_lost_database_is_not_recorded_as_the_sessions_failure(database_url: str) -> None:
    """A session whose processing met an outage keeps no failure, backoff or raw driver text;
    the caller sees DatabaseUnavailableError and the next flush processes it."""
    extractor = LostConnectionExtractor()
    container = Container()
    container.fact_extractor.override(providers.Object(extractor))
    async with MemFuse(database_url, container=container, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I love hiking."}])
        with pytest.raises(DatabaseUnavailableError):
            await mf.flush()
        assert await count(mf, "SELECT coalesce(max(failures), 0) FROM memfuse.layer_progress") == 0
        extractor.fail = False
        await mf.flush()
        assert (
            await count(mf, "SELECT count(*) FROM memfuse.layer_progress WHERE processed_seq = 1")
            == 2
        )


async def test_the_background_runner_processes_new_messages(database_url: str) -> None:
    async with MemFuse(database_url) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I adopted a cat named Miso."}])
        for _ in range(100):
            if await memory.list_episodes():
                break
            await asyncio.sleep(0.05)
        [episode] = await memory.list_episodes()
    assert "Miso" in episode.content


async def test_the_background_runner_gathers_writes_within_its_pass_interval(
    database_url: str,
) -> None:
    async with MemFuse(database_url, pipeline_pass_interval=0.5) as mf:
        pipeline = await resolve(mf.container.pipeline)
        process_pending = pipeline.process_pending
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        async def timed(*, retry_failed: bool = True) -> Any:
            starts.append(loop.time())
            return await process_pending(retry_failed=retry_failed)

        pipeline.process_pending = timed  # type: ignore[method-assign]
        memory = await mf.init("ana")
        for turn in range(12):
            await memory.add([{"role": "user", "content": f"Turn {turn}: I adopted a cat."}])
            await asyncio.sleep(0.05)
        for _ in range(100):
            episodes = await memory.list_episodes()
            if sum(len(e.message_ids) for e in episodes) == 12:
                break
            await asyncio.sleep(0.05)
        assert sum(len(e.message_ids) for e in episodes) == 12
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps, "the writes took more than one pass"
    assert min(gaps) >= 0.49, f"passes started {gaps} s apart"
    assert len(starts) <= 4, "twelve writes 50 ms apart were processed in a few passes"


async def test_flush_does_not_wait_for_the_pass_interval(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_pass_interval=600) as mf:
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I adopted a cat named Miso."}])
        await asyncio.wait_for(mf.flush(), timeout=30)
        [episode] = await memory.list_episodes()
        await memory.add([{"role": "user", "content": "Miso likes the balcony."}])
        await asyncio.wait_for(mf.flush(), timeout=30)
        [episode] = await memory.list_episodes()
    assert "balcony" in episode.content


async def test_the_background_runner_restarts_after_an_unexpected_error(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as idle:
        assert (await parts.pipeline(idle)).task_states() == []
    async with MemFuse(database_url) as mf:
        pipeline = await resolve(mf.container.pipeline)
        process_pending = pipeline.process_pending
        calls = 0

        async def fails_once(*, retry_failed: bool = True) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("database gone")
            return await process_pending(retry_failed=retry_failed)

        pipeline.process_pending = fails_once  # type: ignore[method-assign]
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I adopted a cat named Miso."}])
        for _ in range(100):
            if await memory.list_episodes():
                break
            await asyncio.sleep(0.05)
        assert len(await memory.list_episodes()) == 1, "processed after the restart"
        [state] = pipeline.task_states()
        assert (state.name, state.status, state.restarts) == ("pipeline", "running", 1)
        assert state.last_error == "RuntimeError: database gone"
        assert mf.monitor.counters()["pipeline_restarts"] == 1
    [warning] = [r for r in caplog.records if r.levelname == "WARNING" and "pipeline" in r.message]
    assert "database gone" in warning.message
    assert [s.status for s in pipeline.task_states()] == ["stopped"]


async def test_an_edit_rebuilds_the_session_from_its_messages(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        first, second = await memory.add(
            [
                {"role": "user", "content": "I adopted a cat named Miso."},
                {"role": "user", "content": "I work at the bakery on Main Street."},
            ]
        )
        await mf.flush()
        await memory.update_message(first, content="I adopted a dog named Rex.")
        await memory.delete_message(second)
        await mf.flush()
        [episode] = await memory.list_episodes()
        facts = await memory.list_facts(include_superseded=True)
    assert "Rex" in episode.content and "Miso" not in episode.content
    assert episode.message_ids == (first,)
    assert facts and all("Miso" not in f.content and "bakery" not in f.content for f in facts)
    assert all(f.message_ids == (first,) for f in facts)


class PausingEpisodes(EpisodeProcessor):
    """M1 that stops once inside its read step, with the read transaction still open;
    ``local=False`` makes the pipeline step it as it steps an LLM layer (two transactions)."""

    def __init__(self, original: EpisodeProcessor, *, local: bool = True) -> None:
        super().__init__(original.policy)
        self.local = local
        self.paused = asyncio.Event()
        self.release = asyncio.Event()
        self.pause = True

    async def load(self, db: Any, progress: Progress) -> EpisodeRow | None:
        context = await super().load(db, progress)
        if self.pause:
            self.pause = False
            self.paused.set()
            await self.release.wait()
        return context


@pytest.mark.parametrize("local", [True, False], ids=["one-transaction", "two-transactions"])
async def test_an_edit_while_a_session_is_first_read_is_not_missed(
    database_url: str, local: bool
) -> None:
    """The first read of a session creates its progress row; an edit committed meanwhile
    must still discard what that read saw (a rebuild once missed the uncommitted row)."""
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        first, second = await memory.add(
            [
                {"role": "user", "content": "I adopted a cat named Miso."},
                {"role": "user", "content": "I work at the bakery on Main Street."},
            ]
        )
        pausing = PausingEpisodes((await parts.pipeline(mf)).processors["m1"], local=local)
        (await parts.pipeline(mf)).processors["m1"] = pausing
        flushing = asyncio.create_task(mf.flush())
        await asyncio.wait_for(pausing.paused.wait(), timeout=10)
        editing = asyncio.create_task(
            memory.update_message(first, content="I adopted a dog named Rex.")
        )
        await asyncio.sleep(0.3)
        pausing.release.set()
        await asyncio.wait_for(asyncio.gather(flushing, editing), timeout=10)
        await mf.flush()
        [episode] = await memory.list_episodes()
        facts = await memory.list_facts(include_superseded=True)
    assert episode.content.splitlines() == [
        "user: I adopted a dog named Rex.",
        "user: I work at the bakery on Main Street.",
    ]
    assert episode.message_ids == (first, second)
    assert not [f for f in facts if "Miso" in f.content]


@pytest.mark.parametrize("local", [True, False], ids=["one-transaction", "two-transactions"])
async def test_a_layer_step_during_a_deletion_does_not_lose_episodes(
    database_url: str, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    """A deletion racing a session's first read once reset no progress, and an M1 step that
    committed between the deletion's steps had its episode deleted but its progress kept."""
    deleting = asyncio.Event()
    resume = asyncio.Event()
    delete_for_session = FactRepository.delete_for_session

    async def slow_delete(self: FactRepository, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
        deleting.set()
        await resume.wait()
        await delete_for_session(self, user_id, session_id)

    monkeypatch.setattr(FactRepository, "delete_for_session", slow_delete)
    async with MemFuse(database_url, pipeline_auto=False, fact_extractor="none") as mf:
        memory = await mf.init("ana")
        first, second, third = await memory.add(
            [{"role": "user", "content": f"Message number {n}."} for n in range(3)]
        )
        pausing = PausingEpisodes((await parts.pipeline(mf)).processors["m1"], local=local)
        (await parts.pipeline(mf)).processors["m1"] = pausing
        flushing = asyncio.create_task(mf.flush())
        await asyncio.wait_for(pausing.paused.wait(), timeout=10)
        removing = asyncio.create_task(memory.delete_message(second))
        await asyncio.sleep(0.2)
        pausing.release.set()
        await asyncio.wait_for(deleting.wait(), timeout=10)
        await asyncio.sleep(0.3)  # time for the M1 step to commit, if nothing holds it
        resume.set()
        await asyncio.wait_for(asyncio.gather(flushing, removing), timeout=10)
        await mf.flush()
        episodes = await memory.list_episodes()
    assert [e.message_ids for e in episodes] == [(first, third)]


async def test_new_messages_extend_the_open_episode(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        first = await memory.add([{"role": "user", "content": "Hello there."}])
        await mf.flush()
        second = await memory.add([{"role": "assistant", "content": "Hi Ana."}])
        await mf.flush()
        [episode] = await memory.list_episodes()
    assert episode.message_ids == (*first, *second)
    assert episode.content == "user: Hello there.\nassistant: Hi Ana."
    assert uuid.UUID(str(episode.id))


async def test_deleting_a_user_while_their_sessions_are_processed(database_url: str) -> None:
    async with MemFuse(database_url, pipeline_auto=False, pipeline_batch_messages=5) as mf:
        memories = await load(mf, "leaving", sessions=3)
        staying = await load(mf, "staying", sessions=1)
        flushing = asyncio.create_task(mf.flush())
        await asyncio.sleep(0.01)
        await memories[0].delete_user()
        await flushing
        await mf.flush()
        assert await count(mf, "SELECT count(*) FROM memfuse.messages") == 30
        assert len(await staying[0].list_episodes(all_sessions=True)) >= 1
        assert await memories[0].list_messages(all_sessions=True) == []


class KeepingPaceExtractor(ScriptedExtractor):
    """Adds a message to the session it processes on every call: a writer that always keeps
    up with the pipeline, so the session is never caught up."""

    def __init__(self) -> None:
        super().__init__({})
        self.memory: Memory | None = None

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        assert self.memory is not None
        await self.memory.add([{"role": "user", "content": f"And one more, {self.calls}."}])
        return await super().extract(messages)


async def test_a_flush_ends_while_writes_keep_pace_with_the_pipeline(database_url: str) -> None:
    """flush() processes what was written before it, not what arrives meanwhile: chasing the
    newest message never ended under steady writes (a reader's flush() hung well past a
    server restart in tests/test_server_restart.py, other sessions starved of the pass)."""
    extractor = KeepingPaceExtractor()
    container = Container()
    container.fact_extractor.override(providers.Object(extractor))
    async with MemFuse(database_url, container=container, pipeline_auto=False) as mf:
        memory = await mf.init("ana")
        extractor.memory = memory
        await memory.add([{"role": "user", "content": "I love hiking."}])
        m2_done = "SELECT processed_seq FROM memfuse.layer_progress WHERE layer = 'm2'"
        for calls in (1, 2):
            await asyncio.wait_for(mf.flush(), 10)
            assert extractor.calls == calls
            assert await count(mf, m2_done) == calls
        assert await count(mf, "SELECT message_count FROM memfuse.sessions") == 3
