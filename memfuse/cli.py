"""The ``memfuse`` command: database migrations, the demo, and importing conversations."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from dependency_injector import providers
from sqlalchemy.ext.asyncio import AsyncEngine

from memfuse.config import (
    SERVER_ADMIN_KEY_VARIABLE,
    PoolSettings,
    Settings,
    load_settings,
    server_admin_key,
)
from memfuse.config.urls import engine_key
from memfuse.db import migrate
from memfuse.db.embedded import database_url_for, default_data_dir
from memfuse.db.engines import create_engine, schema_execution_options, warm_up
from memfuse.db.errors import database_error
from memfuse.errors import (
    ConfigurationError,
    MemfuseError,
    ValidationError,
)
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.operations.health import DEFAULT_MAX_QUEUE_DEPTH, check_health, memory_statistics
from memfuse.types import Check, HealthReport

LOCAL_HOST = "127.0.0.1"
DOCTOR_CACHE_SECONDS = 5.0
SERVER_POOL_SIZE = 20
"""``memfuse serve``'s pool size unless one is configured: concurrent requests beyond the pool
open and close overflow connections per request (8 clients adding at once: 101 requests/s
with the default 5, 158 with 20; docs/benchmarks.md#rest-server)."""


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memfuse", description=__doc__)
    parser.add_argument(
        "--database-url", help="PostgreSQL URL (default: MEMFUSE_DATABASE_URL, else embedded)"
    )
    parser.add_argument("--config", help="TOML config file (default: MEMFUSE_CONFIG)")
    parser.add_argument("--schema", help="database schema for memfuse's tables (default: memfuse)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="manage memfuse's schema (Alembic migrations)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade to a revision (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument("--embedding-dimension", type=int, help="vector size (default: 384)")
    downgrade = db_commands.add_parser(
        "downgrade", help="downgrade to a revision ('base': remove all)"
    )
    downgrade.add_argument("revision")
    db_commands.add_parser("current", help="show the current revision")
    db_commands.add_parser(
        "ini-path", help='print the alembic.ini to use: alembic -c "$(memfuse db ini-path)" ...'
    )

    commands.add_parser(
        "demo", help="ingest a short conversation, list messages, episodes and facts"
    )
    doctor = commands.add_parser(
        "doctor", help="check the database, pgvector, schema, dimension, queue and pipeline"
    )
    doctor.add_argument(
        "--max-queue-depth",
        type=int,
        default=DEFAULT_MAX_QUEUE_DEPTH,
        help="fail when more embedding jobs wait (default: %(default)s)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--cached",
        type=float,
        nargs="?",
        const=DOCTOR_CACHE_SECONDS,
        metavar="SECONDS",
        help="reuse a report of the same database at most this old (default: "
        f"{DOCTOR_CACHE_SECONDS:g}), kept in the data directory",
    )
    stats = commands.add_parser(
        "stats", help="what the schema holds, and this process's monitor report"
    )
    stats.add_argument("--json", action="store_true", help="print JSON")
    evaluation = commands.add_parser("eval", help="measure retrieval quality on a benchmark")
    benchmarks = evaluation.add_subparsers(dest="benchmark", required=True)
    locomo = benchmarks.add_parser(
        "locomo", help="LoCoMo evidence recall@500/1000/2000 (docs/retrieval.md)"
    )
    locomo.add_argument("--data", required=True, help="a LoCoMo JSON file (locomo10.json format)")
    locomo.add_argument("--output", required=True, help="where to write the JSON report")
    locomo.add_argument("--quiet", action="store_true", help="no progress bars")
    ingest = commands.add_parser(
        "ingest", help="import a conversation file (JSON: memfuse's format or LoCoMo's)"
    )
    ingest.add_argument("file", help="the JSON file (see docs/ingest.md)")
    ingest.add_argument("--user", help="user name (for a file of one conversation)")
    ingest.add_argument("--agent", help="agent name (default: the file's, else 'default')")
    ingest.add_argument(
        "--no-flush", action="store_true", help="return without waiting for M1/M2 processing"
    )
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser(
        "bench",
        help="run the benchmark suite, write its JSON (see 'memfuse bench --help')",
        add_help=False,
    )
    serve = commands.add_parser(
        "serve", help="run the REST server for the MemFuse SDK (the server extra)"
    )
    serve.add_argument("--host", default=LOCAL_HOST, help=f"address (default: {LOCAL_HOST})")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765, the SDK's)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    serve.add_argument(
        "--no-warmup", action="store_true", help="do not open the pool's connections at start"
    )
    mcp = commands.add_parser("mcp", help="run the MCP server on stdio (the mcp extra)")
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument("--host", default=LOCAL_HOST, help=f"with --http (default: {LOCAL_HOST})")
    mcp.add_argument("--port", type=int, default=8766, help="with --http (default: 8766)")
    mcp.add_argument("--user", help="serve this user only (default: any user, 'default' first)")
    mcp.add_argument("--agent", help="the agent memories are stored with (default: default)")
    mcp.add_argument("--session", default="mcp", help="the default session (default: mcp)")
    worker = commands.add_parser("worker", help="run the embedding worker until interrupted")
    worker.add_argument("--concurrency", type=int, help="batches at once (default: setting)")
    worker.add_argument("--batch-size", type=int, help="jobs per batch (default: setting)")
    worker.add_argument("--poll-interval", type=float, help="seconds between polls")
    worker.add_argument("--once", action="store_true", help="drain the queue, then exit")
    worker.add_argument(
        "--requeue-dead-letters", action="store_true", help="re-queue dead letters, then exit"
    )
    worker.add_argument(
        "--no-warmup", action="store_true", help="do not open the pool's connections at start"
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for option, setting in (
        ("concurrency", "worker_concurrency"),
        ("batch_size", "worker_batch_size"),
        ("poll_interval", "worker_poll_interval"),
    ):
        if getattr(args, option, None) is not None:
            overrides[setting] = getattr(args, option)
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.schema:
        overrides["schema"] = args.schema
    if getattr(args, "embedding_dimension", None) is not None:
        overrides["embedding_dimension"] = args.embedding_dimension
    return load_settings(args.config, **overrides)


@contextlib.asynccontextmanager
async def command_engine(
    settings: Settings, monitor: PerformanceMonitor | None = None
) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database (or the embedded one), disposed afterwards."""
    async with database_url_for(settings) as url:
        engine = create_engine(url, settings.pool, monitor=monitor)
        try:
            yield engine
        finally:
            await engine.dispose()


async def run_db_command(settings: Settings, action: str, revision: str | None) -> None:
    async with command_engine(settings) as engine:
        options = migrate.MigrationOptions.from_settings(settings)
        if action == "upgrade":
            await migrate.upgrade(engine, revision or "head", options)
        elif action == "downgrade":
            assert revision is not None
            await migrate.downgrade(engine, revision, options)
        current = await migrate.current_revision(engine, settings.schema)
        _write(f"current revision: {current or '(none)'}")


async def run_ingest(settings: Settings, args: argparse.Namespace) -> None:
    from memfuse.ingest import ingest_conversations, load_conversations
    from memfuse.memory import MemFuse

    # The whole file is checked before the database is touched: a bad file writes nothing.
    conversations = load_conversations(
        args.file, user=args.user, agent=args.agent, max_chars=settings.max_message_chars
    )
    if args.user and len(conversations) > 1:
        raise ValidationError(
            f"{args.file} holds {len(conversations)} conversations; --user only applies to a "
            "file of one (each conversation keeps its own user otherwise)"
        )
    started = time.perf_counter()
    async with MemFuse(settings=settings) as mf:
        report = await ingest_conversations(mf, conversations, progress=not args.quiet)
        _write(
            f"added {report.messages} messages in {report.sessions} sessions of "
            f"{report.users} user(s) in {time.perf_counter() - started:.1f} s"
        )
        if not args.no_flush:
            flushing = time.perf_counter()
            await mf.flush()
            _write(f"processed into episodes and facts in {time.perf_counter() - flushing:.1f} s")
        await mf.analyze()  # fresh statistics for search after a bulk load


async def run_doctor(settings: Settings, args: argparse.Namespace) -> bool:
    """Print one line per check; True when all passed. Needs no model loaded.

    ``--cached``: a probe that runs ``doctor`` every second checks the database once per
    interval; the report is kept as JSON in the data directory, keyed by database and schema.
    """
    from memfuse.container import make_embedder

    cache = (settings.data_dir or default_data_dir()) / "doctor-cache.json"
    key = f"{engine_key(settings.database_url or 'embedded')}|{settings.schema}"
    key += f"|{args.max_queue_depth}"
    report = _cached_report(cache, key, args.cached) if args.cached is not None else None
    if report is None:
        async with command_engine(settings) as engine:
            report = await check_health(
                engine.execution_options(**schema_execution_options(settings.schema)),
                schema=settings.schema,
                embedder=make_embedder(settings),
                max_queue_depth=args.max_queue_depth,
            )
        if args.cached is not None:
            _store_report(cache, key, report)
    if args.json:
        _write(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for line in report.lines():
            _write(line)
        _write("healthy" if report.ok else "unhealthy: see the FAIL lines")
    return report.ok


def _cached_report(path: Path, key: str, max_age: float) -> HealthReport | None:
    """The stored report for ``key`` if at most ``max_age`` seconds old."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = stored.get(key) if isinstance(stored, dict) else None
    if not isinstance(entry, dict) or time.time() - float(entry.get("at", 0)) > max_age:
        return None
    report = entry["report"]
    checks = tuple(Check(**check) for check in report["checks"])
    return HealthReport(checks, float(report["seconds"]))


def _store_report(path: Path, key: str, report: HealthReport) -> None:
    try:
        stored = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    stored[key] = {"at": time.time(), "report": report.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(stored, default=str))
    temporary.replace(path)  # atomic: a concurrent doctor reads the old or the new file


async def run_stats(settings: Settings, args: argparse.Namespace) -> None:
    """Row counts of the schema, then the monitor report of the queries just made."""
    from memfuse.monitor import instrument_engine

    monitor = PerformanceMonitor()
    async with command_engine(settings, monitor) as engine:
        instrument_engine(engine, monitor)
        await migrate.require_head(engine, settings.schema)
        figures = await memory_statistics(
            engine.execution_options(**schema_execution_options(settings.schema))
        )
    if args.json:
        _write(json.dumps({"schema": settings.schema, **figures, "monitor": monitor.export()}))
        return
    _write(f"schema {settings.schema!r}")
    for name, value in figures.items():
        _write(f"  {name.replace('_', ' '):<24} {value}")
    _write("\nmonitor (this command's own queries; an app's figures: mf.metrics()):")
    _write(monitor.report())


EVAL_SCHEMA = "memfuse_eval"


async def run_eval(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Load the benchmark into a schema of its own (emptied first) and write the report.

    The file is read and checked before the schema is emptied: a wrong file changes nothing.
    """
    from memfuse.evaluation.locomo import evaluate, load_locomo
    from memfuse.memory import MemFuse

    schema = args.schema or EVAL_SCHEMA
    if settings.embedder == "none":
        raise ConfigurationError("embedder", "the evaluation searches by vector too; not 'none'")
    if schema == Settings().schema:
        raise ConfigurationError("schema", f"the evaluation empties its schema; not {schema!r}")
    data = load_locomo(args.data, max_chars=settings.max_message_chars)
    settings = replace(settings, schema=schema, search_cache_ttl=0.0)
    started = time.perf_counter()
    async with command_engine(settings) as engine:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        # The same server (an embedded one stays up until this block ends).
        url = engine.url.render_as_string(hide_password=False)
        async with MemFuse(settings=replace(settings, database_url=url)) as mf:
            report = await evaluate(mf, data, progress=not args.quiet)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["data"] = str(args.data)
    return report


def write_eval_report(report: dict[str, Any], output: str) -> None:
    Path(output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _write(
        f"evidence recall over {report['questions']} questions: "
        + ", ".join(f"@{b} {report[f'recall@{b}']:.3f}" for b in (500, 1000, 2000))
    )
    for name, line in report["lines"].items():
        _write(f"  {name:<24}" + " ".join(f"{line[f'recall@{b}']:.3f}" for b in (500, 1000, 2000)))
    _write(f"report written to {output}")


async def run_worker(settings: Settings, args: argparse.Namespace) -> None:
    """The worker as its own process: embeds until SIGINT/SIGTERM, then stops gracefully."""
    from memfuse.container import Container, resolve, start, stop

    container = Container()
    container.settings.override(providers.Object(replace(settings, worker_enabled=True)))
    await start(container)
    try:
        if not args.no_warmup:
            await warm_up(await resolve(container.engine), settings.pool.pool_size)
        worker = await resolve(container.embedding_worker)
        if worker is None:
            raise ConfigurationError("embedder", "the worker needs an embedder (not 'none')")
        await worker.verify()
        if args.requeue_dead_letters:
            _write(f"re-queued {await worker.requeue_dead_letters()} dead letters")
            return
        if args.once:
            await worker.drain()
            _write(f"embedded {worker.stats.vectors_written} rows")
            return
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stopped.set)
        worker.start()
        _write(f"embedding worker running ({worker.embedder.model_name}); Ctrl-C stops it")
        await stopped.wait()
        await worker.close()
        _write(f"stopped after embedding {worker.stats.vectors_written} rows")
    finally:
        await stop(container)


def serve(settings: Settings, args: argparse.Namespace) -> None:
    """``memfuse serve``: uvicorn running :func:`memfuse.server.app.create_app`.

    Without ``MEMFUSE_SERVER_API_KEY`` only 127.0.0.1 is served: any other address is refused.
    Several workers need one database for all: the embedded server, if used, is started here
    and its URL handed to them.
    """
    try:
        import uvicorn

        from memfuse.server.app import create_app
    except ImportError:
        raise ConfigurationError(
            "server", "the REST server needs the server extra: pip install 'memfuse[server]'"
        ) from None
    from memfuse.memory import MemFuse

    if settings.pool.pool_size == PoolSettings().pool_size:  # not configured: a server's
        settings = replace(settings, pool=replace(settings.pool, pool_size=SERVER_POOL_SIZE))
    settings = replace(settings, pool_warmup=not args.no_warmup)
    admin_key = server_admin_key()
    refuse_public_without_key(args.host, admin_key)
    if args.workers < 1:
        raise ValidationError("must be at least 1", field="workers")
    logger = logging.getLogger("memfuse.server")
    logger.warning(
        "memfuse serving http://%s:%d/api/v1 (docs at /docs); %s",
        args.host,
        args.port,
        "API keys required" if admin_key else f"no API key: local only ({LOCAL_HOST})",
    )
    if args.workers == 1:
        app = create_app(MemFuse(settings=settings), admin_key=admin_key)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return
    with contextlib.ExitStack() as stack:
        url = settings.database_url
        if url is None:
            url = stack.enter_context(_embedded_url(settings))
        os.environ["MEMFUSE_DATABASE_URL"] = url
        os.environ["MEMFUSE_SCHEMA"] = settings.schema
        os.environ["MEMFUSE_POOL_SIZE"] = str(settings.pool.pool_size)
        os.environ["MEMFUSE_POOL_WARMUP"] = "true" if settings.pool_warmup else "false"
        uvicorn.run(
            "memfuse.server.app:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
        )


def refuse_public_without_key(host: str, admin_key: str | None) -> None:
    """Without a key, a server binds to 127.0.0.1 only: anything else is refused."""
    if admin_key is None and host != LOCAL_HOST:
        raise ConfigurationError(
            "host",
            f"serving {host} without a key would open every user's memory to the network; "
            f"set {SERVER_ADMIN_KEY_VARIABLE} or bind to {LOCAL_HOST}",
        )


def run_mcp(settings: Settings, args: argparse.Namespace) -> None:
    """``memfuse mcp``: the MCP server on stdio, or streamable HTTP with ``--http`` (the key
    rules of ``memfuse serve``: local only without ``MEMFUSE_SERVER_API_KEY``)."""
    try:
        from memfuse.integrations import mcp
    except ImportError:
        raise ConfigurationError(
            "mcp", "the MCP server needs the mcp extra: pip install 'memfuse[mcp]'"
        ) from None
    from memfuse.memory import MemFuse

    options: dict[str, Any] = {"fixed_user": args.user, "agent": args.agent}
    options["session"] = args.session
    memfuse = MemFuse(settings=settings)
    if not args.http:
        asyncio.run(mcp.serve_stdio(memfuse, **options))
        return
    admin_key = server_admin_key()
    refuse_public_without_key(args.host, admin_key)
    asyncio.run(
        mcp.serve_http(memfuse, host=args.host, port=args.port, admin_key=admin_key, **options)
    )


@contextlib.contextmanager
def _embedded_url(settings: Settings) -> Iterator[str]:
    """The embedded server's URL while the block runs (started and stopped on this thread's
    own event loop, outside uvicorn's)."""
    loop = asyncio.new_event_loop()
    manager = database_url_for(settings)
    try:
        yield loop.run_until_complete(manager.__aenter__())
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()


BENCH_NEEDS_CHECKOUT = (
    "`memfuse bench` runs from a source checkout (the benchmarks are not in the wheel): "
    "clone the repository and run pip install -e '.[bench,local]' there"
)


def benchmark_suite() -> ModuleType | None:
    """``benchmarks.suite`` of the checkout this memfuse runs from; None outside a checkout.

    In an editable install ``benchmarks/`` sits beside the ``memfuse/`` package: only then is
    the checkout put first on ``sys.path``, and a ``benchmarks`` found elsewhere is refused.
    """
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "benchmarks" / "suite.py").is_file():
        return None
    if sys.path[:1] != [str(checkout)]:
        sys.path.insert(0, str(checkout))
    from benchmarks import suite

    if Path(suite.__file__).resolve().parent != checkout / "benchmarks":
        return None
    return suite


def database_unavailable(error: Exception, settings: Settings | None) -> MemfuseError | None:
    """The one-line error for an unreachable database (or a connection option the driver
    refused), or None for any other error."""
    return database_error(error, settings.database_url if settings is not None else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command != "bench" and unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    settings: Settings | None = None
    try:
        if args.command == "db" and args.db_command == "ini-path":
            _write(str(migrate.alembic_ini_path()))
            return 0
        settings = settings_from(args)
        if args.command == "db":
            asyncio.run(run_db_command(settings, args.db_command, getattr(args, "revision", None)))
        elif args.command == "demo":
            from memfuse.demo import run_demo

            asyncio.run(run_demo(settings, _write))
        elif args.command == "ingest":
            asyncio.run(run_ingest(settings, args))
        elif args.command == "doctor":
            if not asyncio.run(run_doctor(settings, args)):
                return 1
        elif args.command == "stats":
            asyncio.run(run_stats(settings, args))
        elif args.command == "eval":
            write_eval_report(asyncio.run(run_eval(settings, args)), args.output)
        elif args.command == "worker":
            asyncio.run(run_worker(settings, args))
        elif args.command == "serve":
            serve(settings, args)
        elif args.command == "mcp":
            run_mcp(settings, args)
        elif args.command == "bench":
            suite = benchmark_suite()
            if suite is None:
                sys.stderr.write(f"memfuse: {BENCH_NEEDS_CHECKOUT}\n")
                return 2
            return int(suite.main(unknown, prog="memfuse bench", database_url=args.database_url))
    except MemfuseError as error:
        sys.stderr.write(f"memfuse: {error}\n")
        return 2
    except Exception as error:
        unavailable = database_unavailable(error, settings)
        if unavailable is None:
            raise
        sys.stderr.write(f"memfuse: {unavailable}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
