"""Health checks: what ``await mf.health()`` returns and ``memfuse doctor`` prints.

Each check is one line a person can act on: the database answers, pgvector is installed, the
schema is at this code's revision, the vectors have the embedder's dimension, the embedding
queue is not piling up, no row is dead-lettered, no session's layer processing is failing, and
(for a running ``MemFuse``) every background task is up rather than restarting. A check never
raises; a failure is reported with its reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from memfuse.db import migrate
from memfuse.db.errors import describe_unavailable, is_unavailable
from memfuse.db.models import Episode, Fact, FactGroup, Message, Session, User, listener_name
from memfuse.embedding.embedders import Embedder
from memfuse.errors import MemfuseError
from memfuse.repositories.facts import FACT_EMBEDDED
from memfuse.repositories.jobs import JobRepository, QueueCounts
from memfuse.repositories.progress import ProgressRepository
from memfuse.types import Check, HealthReport, TaskState

DEFAULT_MAX_QUEUE_DEPTH = 10_000
"""More jobs waiting than this fails the queue check: the worker is not keeping up."""


async def check_health(
    engine: AsyncEngine,
    *,
    schema: str,
    embedder: Embedder | None,
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH,
    check_seconds: float = 5.0,
    tasks: Sequence[TaskState] | None = None,
) -> HealthReport:
    """Run every check against ``engine``; later checks are skipped once the database is gone.

    ``tasks`` are this process's background tasks (``None``: not checked, as in ``doctor``,
    which runs none); any one not running fails the ``background`` check.
    """
    started = time.perf_counter()
    factory = async_sessionmaker(engine, expire_on_commit=False)
    queue_counts: list[QueueCounts] = []

    async def read_queue() -> QueueCounts:
        """The queue and dead-letter checks share one read."""
        if not queue_counts:
            async with factory() as db:
                queue_counts.append(await JobRepository(db).counts())
        return queue_counts[0]

    checks = [await _guarded("database", check_seconds, lambda: _database(engine))]
    if checks[0].ok:
        for name, run in (
            ("pgvector", lambda: _pgvector(engine)),
            ("schema", lambda: _schema(engine, schema)),
            ("dimension", lambda: _dimension(engine, schema, embedder)),
            (
                "queue",
                lambda: _queue(read_queue, max_queue_depth, lambda: _listeners(engine, schema)),
            ),
            ("dead letters", lambda: _dead_letters(read_queue)),
            ("pipeline", lambda: _pipeline(factory)),
        ):
            checks.append(await _guarded(name, check_seconds, run))
    if tasks is not None:
        checks.append(_background(tasks))
    return HealthReport(tuple(checks), time.perf_counter() - started)


def _background(tasks: Sequence[TaskState]) -> Check:
    down = [task for task in tasks if task.status != "running"]
    restarts = sum(task.restarts for task in tasks)
    if down:
        detail = "; ".join(
            f"{task.name} {task.status}" + (f" after {task.last_error}" if task.last_error else "")
            for task in down
        )
        return Check("background", False, detail, len(down))
    return Check("background", True, f"{len(tasks)} tasks running ({restarts} restarts so far)", 0)


async def _guarded(name: str, seconds: float, run: Callable[[], Awaitable[Check]]) -> Check:
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await run()
    except Exception as error:  # reported, not raised: this is a health check
        if isinstance(error, TimeoutError) and limit.expired():
            return Check(name, False, f"no answer within {seconds:g} s")
        if is_unavailable(error):
            return Check(name, False, describe_unavailable(error))
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        return Check(name, False, reason)


async def _database(engine: AsyncEngine) -> Check:
    started = time.perf_counter()
    async with engine.connect() as connection:
        version = (await connection.execute(text("SHOW server_version"))).scalar_one()
    latency_ms = (time.perf_counter() - started) * 1000
    return Check(
        "database",
        True,
        f"PostgreSQL {version} at {engine.url.render_as_string(hide_password=True)} "
        f"({latency_ms:.1f} ms)",
        latency_ms,
    )


async def _pgvector(engine: AsyncEngine) -> Check:
    async with engine.connect() as connection:
        version = (
            await connection.execute(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
        ).scalar_one_or_none()
    if version is None:
        return Check("pgvector", False, "the vector extension is not installed: run migrations")
    return Check("pgvector", True, f"vector {version}", version)


async def _schema(engine: AsyncEngine, schema: str) -> Check:
    current = await migrate.current_revision(engine, schema)
    head = migrate.head_revision()
    if current == head:
        return Check("schema", True, f"{schema!r} at revision {current} (head)", current)
    state = "not migrated" if current is None else f"at revision {current}, code needs {head}"
    return Check("schema", False, f"{schema!r} {state}: run `memfuse db upgrade`", current)


async def _dimension(engine: AsyncEngine, schema: str, embedder: Embedder | None) -> Check:
    if embedder is None:
        return Check("dimension", True, "no embedder configured: nothing to compare")
    try:
        await migrate.check_embedding_dimension(
            engine, embedder.dimension, schema=schema, source=f"embedder {embedder.model_name!r}"
        )
    except MemfuseError as error:
        return Check("dimension", False, str(error))
    return Check(
        "dimension",
        True,
        f"vector({embedder.dimension}) matches {embedder.model_name}",
        embedder.dimension,
    )


async def _queue(
    read_queue: Callable[[], Awaitable[QueueCounts]],
    max_depth: int,
    count_listeners: Callable[[], Awaitable[int]],
) -> Check:
    depth = (await read_queue()).depth
    listening = f"{await count_listeners()} worker(s) listening for new jobs"
    if depth > max_depth:
        return Check(
            "queue", False, f"{depth} embedding jobs waiting (more than {max_depth}); {listening}"
        )
    return Check("queue", True, f"{depth} embedding jobs waiting; {listening}", depth)


async def _listeners(engine: AsyncEngine, schema: str) -> int:
    """Workers (of any process) whose LISTEN connection to this schema's queue is open."""
    async with engine.connect() as connection:
        found = await connection.execute(
            select(func.count())
            .select_from(text("pg_stat_activity"))
            .where(
                text("datname = current_database()"),
                text("application_name = :name").bindparams(name=listener_name(schema)),
            )
        )
        return int(found.scalar_one())


async def _dead_letters(read_queue: Callable[[], Awaitable[QueueCounts]]) -> Check:
    letters = (await read_queue()).dead_letters
    if letters:
        return Check(
            "dead letters",
            False,
            f"{letters} rows failed to embed: see embedding_dead_letters, then "
            "`memfuse worker --requeue-dead-letters`",
            letters,
        )
    return Check("dead letters", True, "none", 0)


async def _pipeline(factory: async_sessionmaker[AsyncSession]) -> Check:
    async with factory() as db:
        failing = await ProgressRepository(db).failing()
    if failing:
        return Check(
            "pipeline",
            False,
            f"{failing} session layer(s) failing: see layer_progress.last_error",
            failing,
        )
    return Check("pipeline", True, "no session failing M1/M2 processing", 0)


async def memory_statistics(engine: AsyncEngine) -> dict[str, int]:
    """How much the schema holds: tenants, rows per layer, vectors, queue and failures.

    ``engine`` maps memfuse's schema to the configured one (``schema_execution_options``).
    """

    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where).scalar_subquery()

    async with async_sessionmaker(engine)() as db:
        row = (
            await db.execute(
                select(
                    count(User).label("users"),
                    count(Session).label("sessions"),
                    count(Message).label("messages"),
                    count(Message, Message.embedding.is_not(None)).label("messages_embedded"),
                    count(Episode).label("episodes"),
                    count(Episode, Episode.embedding.is_not(None)).label("episodes_embedded"),
                    count(Fact, Fact.valid_to.is_(None)).label("facts_live"),
                    count(Fact, Fact.valid_to.is_not(None)).label("facts_superseded"),
                    count(Fact, FACT_EMBEDDED).label("facts_embedded"),
                    count(FactGroup).label("fact_groups"),
                )
            )
        ).one()
        queue = await JobRepository(db).counts()
        failing = await ProgressRepository(db).failing()
    return {
        **{key: int(value) for key, value in row._mapping.items()},
        "queue_depth": queue.depth,
        "dead_letters": queue.dead_letters,
        "failing_session_layers": failing,
    }
