"""Shared async engines: one per database for the whole process, each instrumented and disposed.

Every engine memfuse creates gets pgvector's binary codec on each new connection, pool checkout
timing (``connection_pool_access``), connection set-up timing (``pgvector_registration``) and
statement timing (``db_query``) in the :class:`PerformanceMonitor`. An engine a host app hands
in gets the codec and statement timing but is never disposed by memfuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from memfuse.config import PoolSettings
from memfuse.config.urls import engine_key, normalize_url
from memfuse.db.errors import is_unavailable
from memfuse.db.models import SCHEMA
from memfuse.db.vector import register_vector_codec
from memfuse.errors import MemfuseError
from memfuse.monitor.engine_hooks import instrument_engine
from memfuse.monitor.performance import PerformanceMonitor, process_monitor

logger = logging.getLogger(__name__)

POOL_ACCESS_OPERATION = "connection_pool_access"
CODEC_OPERATION = "pgvector_registration"
_CODEC_READY = "memfuse_vector_codec"
_JUST_OPENED = "memfuse_just_opened"
_PING_AT_CHECKOUT: ContextVar[bool] = ContextVar("memfuse_ping_at_checkout", default=True)
"""Off while :func:`pooled_driver` checks out for a caller that checks the connection itself."""


class MonitoredPool(AsyncAdaptedQueuePool):
    """The async queue pool, timing each checkout (waiting included) for the monitor."""

    monitor: PerformanceMonitor | None = None

    def connect(self) -> PoolProxiedConnection:
        monitor = self.monitor
        if monitor is None:
            return super().connect()
        start = time.perf_counter()
        success = False
        try:
            connection = super().connect()
            success = True
            return connection
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            monitor.record(POOL_ACCESS_OPERATION, elapsed_ms, success=success)

    def recreate(self) -> MonitoredPool:
        pool = super().recreate()
        assert isinstance(pool, MonitoredPool)
        pool.monitor = self.monitor
        return pool


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of one engine's pool, keyed and labelled by its masked URL."""

    url: str
    owned: bool
    pool_size: int
    checked_out: int
    checked_in: int
    overflow: int
    connections_opened: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "owned": self.owned,
            "pool_size": self.pool_size,
            "checked_out": self.checked_out,
            "checked_in": self.checked_in,
            "overflow": self.overflow,
            "connections_opened": self.connections_opened,
        }


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """The outcome of a cheap ``SELECT 1`` on one engine, with its pool figures."""

    ok: bool
    latency_ms: float
    error: str | None
    stats: EngineStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "latency_ms": round(self.latency_ms, 3),
            "error": self.error,
            **self.stats.to_dict(),
        }


@dataclass(slots=True)
class _Entry:
    engine: AsyncEngine
    owned: bool
    remove_hooks: Callable[[], None]
    pool: PoolSettings | None = None
    connections_opened: int = 0
    holders: int = 0


def schema_execution_options(schema: str) -> dict[str, Any]:
    """Execution options mapping the models' schema to the configured one."""
    if schema == SCHEMA:
        return {}
    return {"schema_translate_map": {SCHEMA: schema}}


def create_engine(
    url: str | URL,
    pool: PoolSettings | None = None,
    *,
    monitor: PerformanceMonitor | None = None,
) -> AsyncEngine:
    """A new instrumented engine; most code wants :meth:`EngineRegistry.get_engine` instead."""
    settings = pool or PoolSettings()
    kwargs = settings.engine_kwargs()
    # Our own ping replaces SQLAlchemy's: see install_ping.
    ping = kwargs.pop("pool_pre_ping")
    engine = create_async_engine(
        normalize_url(url), poolclass=MonitoredPool, pool_pre_ping=False, **kwargs
    )
    pool_instance = engine.sync_engine.pool
    if isinstance(pool_instance, MonitoredPool):
        pool_instance.monitor = monitor
    if ping:
        install_ping(engine)
    install_vector_codec(engine, monitor)
    return engine


def install_ping(engine: AsyncEngine) -> None:
    """Check each connection at checkout with one empty statement (one round trip); a
    connection that fails it is replaced before anyone uses it.

    SQLAlchemy's own ``pool_pre_ping`` on asyncpg wraps its ping in BEGIN and ROLLBACK (for
    PgBouncer's transaction mode): three round trips before every operation memfuse runs. A
    failed ping raises ``DisconnectionError``, on which the pool discards the connection and
    checks out another (a restarted server's stale connections are all replaced this way).
    """

    def opened(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_JUST_OPENED] = True

    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if record.info.pop(_JUST_OPENED, False):
            return  # opening it just now was the check
        if not _PING_AT_CHECKOUT.get():
            return  # the caller's first statement checks it (pooled_driver(ping=False))
        try:
            dbapi_connection.run_async(_empty_statement)
        except Exception as error:
            raise DisconnectionError(f"connection failed its ping: {error}") from error

    event.listen(engine.sync_engine.pool, "connect", opened)
    event.listen(engine.sync_engine.pool, "checkout", ping)


@contextlib.asynccontextmanager
async def pooled_driver(
    engine: AsyncEngine, *, ping: bool = True
) -> AsyncIterator[PoolProxiedConnection]:
    """A connection from ``engine``'s pool (checkout, ping and accounting as for every
    statement) for statements sent to asyncpg directly, on its ``driver_connection``.

    ``ping=False`` skips the ping for a caller whose statements are safe to run again: a
    connection that went away while pooled then fails the first statement (and is
    invalidated), and the caller retries on a connection checked out with the ping.

    Hot statements skip SQLAlchemy's execution layer this way (it cost about as much client
    time as the rest of a one-message ``add()`` or a search). Outside a transaction each
    statement is its own. A connection that broke, or whose statement was cancelled midway
    (which leaves asyncpg's protocol mid-message), is invalidated, so the pool replaces it
    instead of handing it out again.
    """
    token = _PING_AT_CHECKOUT.set(ping)
    try:
        connection = await engine.raw_connection()
    finally:
        _PING_AT_CHECKOUT.reset(token)
    try:
        yield connection
    except BaseException as error:
        if not isinstance(error, Exception) or is_unavailable(error):
            await greenlet_spawn(connection.invalidate, error)
        raise
    finally:
        await greenlet_spawn(connection.close)


T = TypeVar("T")


async def on_live_connection(
    engine: AsyncEngine,
    run: Callable[[PoolProxiedConnection], Awaitable[T]],
    again: Callable[[PoolProxiedConnection], Awaitable[T]],
    *,
    what: str,
    log: logging.Logger,
) -> T:
    """``run`` on a pooled connection the pool does not ping first (:func:`pooled_driver`
    with ``ping=False``): its first statement shows whether the connection is alive. If it
    went away (a restarted server, a terminated backend), ``again`` runs on a pinged one;
    ``again`` must be safe whether or not ``run`` took effect. The retry is logged on the
    caller's ``log``, naming the work (``what``)."""
    used = False
    try:
        async with pooled_driver(engine, ping=False) as connection:
            used = True
            return await run(connection)
    except Exception as error:
        if not used or not is_unavailable(error):
            raise
        log.info("%s connection went away, running again: %s", what, error)
    async with pooled_driver(engine) as connection:
        return await again(connection)


async def _empty_statement(connection: Any) -> None:
    await connection.fetchrow(";")


def install_vector_codec(
    engine: AsyncEngine, monitor: PerformanceMonitor | None
) -> Callable[[], None]:
    """Register pgvector's codec on every new connection of ``engine``; returns a remover.

    Before the first migration the extension does not exist yet; such connections try again
    at each checkout until it does, so pooled connections never miss the codec.
    """

    def register(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        start = time.perf_counter()
        success = False
        try:
            record.info[_CODEC_READY] = dbapi_connection.run_async(register_vector_codec)
            success = True
        finally:
            if monitor is not None:
                elapsed_ms = (time.perf_counter() - start) * 1000.0
                monitor.record(CODEC_OPERATION, elapsed_ms, success=success)

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if not record.info.get(_CODEC_READY):
            register(dbapi_connection, record)

    target: Pool = engine.sync_engine.pool
    hooks: list[tuple[str, Callable[..., None]]] = [("connect", register), ("checkout", checkout)]
    for name, hook in hooks:
        event.listen(target, name, hook)

    def remove() -> None:
        for name, hook in hooks:
            if event.contains(target, name, hook):
                event.remove(target, name, hook)

    return remove


async def warm_up(engine: AsyncEngine, connections: int) -> float:
    """Open ``connections`` pooled connections at once (each registers pgvector's codec and
    runs ``SELECT 1``), then return them to the pool: the first requests find them ready.
    Seconds it took."""
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(stack.enter_async_context(engine.connect()) for _ in range(connections))
        )
        for connection in opened:
            await connection.execute(text("SELECT 1"))
    return time.perf_counter() - started


class EngineRegistry:
    """One engine per normalized database URL; creates, shares, reports and disposes them."""

    def __init__(self, monitor: PerformanceMonitor | None = None) -> None:
        self._monitor = monitor
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def monitor(self) -> PerformanceMonitor | None:
        return self._monitor

    def get_engine(self, url: str | URL, pool: PoolSettings | None = None) -> AsyncEngine:
        """The shared engine for ``url``, created on first use with ``pool`` settings.

        Two spellings of one database give the same engine; later ``pool`` values for an
        existing engine are ignored with a warning rather than silently applied.
        """
        key = engine_key(url)
        settings = pool or PoolSettings()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if pool is not None and entry.pool is not None and entry.pool != pool:
                    logger.warning("engine for %s already exists; its pool settings are kept", key)
                return entry.engine
            engine = create_engine(url, settings, monitor=self._monitor)
            entry = _Entry(engine=engine, owned=True, remove_hooks=lambda: None, pool=settings)
            entry.remove_hooks = self._instrument(entry)
            self._entries[key] = entry
            logger.info("created engine for %s", key)
            return engine

    def acquire(self, url: str | URL, pool: PoolSettings | None = None) -> AsyncEngine:
        """Like :meth:`get_engine`, and hold it until :meth:`release`."""
        engine = self.get_engine(url, pool)
        with self._lock:
            self._entries[engine_key(url)].holders += 1
        return engine

    async def release(self, engine: AsyncEngine) -> None:
        """Drop one hold on ``engine``; the last release unhooks it and disposes it if ours."""
        key = engine_key(engine.url)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.engine.sync_engine.pool is not engine.sync_engine.pool:
                return
            entry.holders = max(entry.holders - 1, 0)
            if entry.holders > 0:
                return
            del self._entries[key]
        entry.remove_hooks()
        if entry.owned:
            await entry.engine.dispose()
            logger.info("disposed engine for %s", key)

    def adopt(self, engine: AsyncEngine) -> AsyncEngine:
        """Use and hold a host app's engine: instrument it, share it, never dispose it.

        It gets the pgvector codec, statement timing and connection counts; checkout timing
        needs memfuse's pool class, so a host engine reports no ``connection_pool_access``.
        The last :meth:`release` removes the hooks again.
        """
        key = engine_key(engine.url)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.engine is engine:
                    entry.holders += 1
                    return engine
                raise MemfuseError(
                    f"an engine for {key} is already registered; adopt the host engine "
                    f"before memfuse creates its own"
                )
            entry = _Entry(engine=engine, owned=False, remove_hooks=lambda: None, holders=1)
            remove_codec = install_vector_codec(engine, self._monitor)
            remove_hooks = self._instrument(entry)

            def remove() -> None:
                remove_codec()
                remove_hooks()

            entry.remove_hooks = remove
            self._entries[key] = entry
            return engine

    def stats(self) -> dict[str, EngineStats]:
        """Pool figures per engine, keyed by the masked URL."""
        with self._lock:
            entries = dict(self._entries)
        return {key: _stats(key, entry) for key, entry in entries.items()}

    async def health(self, probe_seconds: float = 5.0) -> dict[str, EngineHealth]:
        """``SELECT 1`` on every engine; a failure is reported, and the engine is kept.

        A failed check never drops an engine: dropping one without disposing it leaked its
        connections in the original system; the pool's pre-ping replaces dead connections.
        """
        with self._lock:
            entries = dict(self._entries)
        results = {}
        for key, entry in entries.items():
            start = time.perf_counter()
            error: str | None = None
            try:
                async with asyncio.timeout(probe_seconds), entry.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            except Exception as failure:  # reported, not raised: this is a health probe
                error = f"{type(failure).__name__}: {failure}".splitlines()[0]
            latency_ms = (time.perf_counter() - start) * 1000.0
            results[key] = EngineHealth(error is None, latency_ms, error, _stats(key, entry))
        return results

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str | URL) and engine_key(url) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    async def dispose_all(self) -> None:
        """Dispose every engine memfuse created; unhook (but keep open) adopted ones."""
        with self._lock:
            entries = list(self._entries.items())
            self._entries.clear()
        for key, entry in entries:
            entry.remove_hooks()
            if entry.owned:
                await entry.engine.dispose()
                logger.info("disposed engine for %s", key)

    def _instrument(self, entry: _Entry) -> Callable[[], None]:
        """Count new connections and, with a monitor, time every statement."""
        pool = entry.engine.sync_engine.pool

        def count_connection(*_: Any) -> None:
            entry.connections_opened += 1

        event.listen(pool, "connect", count_connection)
        remove_timing = (
            instrument_engine(entry.engine, self._monitor) if self._monitor is not None else None
        )

        def remove() -> None:
            if event.contains(pool, "connect", count_connection):
                event.remove(pool, "connect", count_connection)
            if remove_timing is not None:
                remove_timing()

        return remove


def pool_size(engine: AsyncEngine) -> int | None:
    """How many connections ``engine``'s pool keeps open; ``None`` for a pool that keeps no
    fixed number (``NullPool``, ``StaticPool``)."""
    pool = engine.sync_engine.pool
    return pool.size() if isinstance(pool, AsyncAdaptedQueuePool) else None


def _stats(key: str, entry: _Entry) -> EngineStats:
    pool = entry.engine.sync_engine.pool
    if isinstance(pool, AsyncAdaptedQueuePool):
        size, checked_out, checked_in, overflow = (
            pool.size(),
            pool.checkedout(),
            pool.checkedin(),
            max(pool.overflow(), 0),
        )
    else:
        size = checked_out = checked_in = overflow = 0
    return EngineStats(
        url=key,
        owned=entry.owned,
        pool_size=size,
        checked_out=checked_out,
        checked_in=checked_in,
        overflow=overflow,
        connections_opened=entry.connections_opened,
    )


_process_registry: EngineRegistry | None = None
_process_lock = threading.Lock()


def process_registry() -> EngineRegistry:
    """The process-wide registry, reporting to the process-wide monitor."""
    global _process_registry
    with _process_lock:
        if _process_registry is None:
            _process_registry = EngineRegistry(process_monitor())
        return _process_registry
