"""Database URL normalization and masking: one engine per database, no password in any key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from memfuse.errors import ConfigurationError

ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED_DRIVERS = frozenset(
    {"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2"}
)
DEFAULT_PORT = 5432


def normalize_url(url: str | URL) -> URL:
    """Canonical form of a PostgreSQL URL, so two spellings of one database compare equal.

    The driver becomes asyncpg, the host lower-case, the default port explicit and query
    parameters sorted. A URL that cannot be parsed, or names another database system, raises
    :class:`ConfigurationError` without echoing the (possibly secret) text.
    """
    if isinstance(url, str):
        if not url.strip():
            raise ConfigurationError("database_url", "is empty")
        try:
            parsed = make_url(url.strip())
        except (ArgumentError, ValueError):
            raise ConfigurationError(
                "database_url",
                "is not a valid URL; expected postgresql://user:password@host:port/database",
            ) from None
    else:
        parsed = url
    if parsed.drivername not in _ACCEPTED_DRIVERS:
        raise ConfigurationError(
            "database_url",
            f"unsupported scheme {parsed.drivername!r}; memfuse needs PostgreSQL "
            f"(postgresql:// or postgresql+asyncpg://)",
        )
    host = parsed.host.lower() if parsed.host else None
    port = parsed.port if parsed.port is not None or host is None else DEFAULT_PORT
    return URL.create(
        ASYNC_DRIVER,
        username=parsed.username,
        password=parsed.password,
        host=host,
        port=port,
        database=parsed.database,
        query=dict(sorted(parsed.query.items())),
    )


def mask_url(url: str | URL) -> str:
    """The normalized URL as text with the password replaced by ``***``."""
    return normalize_url(url).render_as_string(hide_password=True)


def engine_key(url: str | URL) -> str:
    """The key under which one engine per database is shared: the masked, normalized URL."""
    return mask_url(url)


def asyncpg_connect_args(url: str | URL) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect`` from a URL, Unix-socket hosts included.

    For connections that must live outside the pool, such as a long-lived LISTEN.
    """
    parsed = normalize_url(url)
    return {
        "user": parsed.username,
        "password": parsed.password or None,
        "host": parsed.query.get("host") or parsed.host,
        "port": parsed.port,
        "database": parsed.database,
    }
