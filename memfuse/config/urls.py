"""Database URL normalization and masking: one engine per database, no password in any key.

SQLAlchemy's asyncpg dialect hands every query parameter of the URL to ``asyncpg.connect`` as a
keyword argument, as text. So a URL may only carry parameters that ``asyncpg.connect`` (or the
dialect itself) takes *and* can use as text; anything else would fail at the first connection
with a raw ``TypeError``. :func:`normalize_url` checks them when the settings load instead,
translating libpq's spellings (``sslmode``, ``sslnegotiation``) to asyncpg's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError

from memfuse.errors import ConfigurationError

ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED_DRIVERS = frozenset(
    {"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2"}
)
DEFAULT_PORT = 5432
_MAX_PORT = 65535

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_VERIFYING_SSL_MODES = frozenset({"require", "verify-ca", "verify-full"})
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
_GSSLIBS = ("gssapi", "sspi")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_SSL_NEGOTIATIONS = {"direct": "true", "postgres": None}

# The dialect's own reading of a URL (hosts, ports, query), so the LISTEN connection is opened
# with exactly the arguments the pool's connections get. create_connect_args needs no driver.
ASYNCPG_DIALECT: Dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
"""SQLAlchemy's asyncpg dialect: how memfuse's URLs and SQL text become asyncpg's."""
# Taken by SQLAlchemy's asyncpg adapter, not by asyncpg.connect.
_DIALECT_ONLY = frozenset({"prepared_statement_cache_size"})
# Query parameters that may be repeated (SQLAlchemy's multi-host forms).
_MULTI_VALUED = frozenset({"host", "port"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


class _Invalid(Exception):
    """A query parameter's value is unusable; the message never holds the value."""


def _text(value: str) -> str:
    if not value:
        raise _Invalid("is empty")
    return value


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}")
        return value

    return check


def _count(value: str) -> str:
    if not (value.isascii() and value.isdigit()):
        raise _Invalid("must be an integer, 0 or more")
    return str(int(value))


def _flag(value: str) -> str | None:
    lowered = value.lower()
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return None  # the default; a URL cannot carry False, and "false" would read as true
    raise _Invalid("must be true or false")


def _ssl_negotiation(value: str) -> str | None:
    if value not in _SSL_NEGOTIATIONS:
        raise _Invalid(f"must be one of {', '.join(_SSL_NEGOTIATIONS)}")
    return _SSL_NEGOTIATIONS[value]


# Each accepted parameter: (the name kept in the URL, a check returning the canonical value or
# None to drop it). Aliases from libpq map onto asyncpg's name.
_ACCEPTED: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "host": ("host", _text),
    "port": ("port", _text),  # parsed, and range-checked, with the hosts below
    "ssl": ("ssl", _choice(SSL_MODES)),
    "sslmode": ("ssl", _choice(SSL_MODES)),
    "direct_tls": ("direct_tls", _flag),
    "sslnegotiation": ("direct_tls", _ssl_negotiation),
    "passfile": ("passfile", _text),
    "prepared_statement_cache_size": ("prepared_statement_cache_size", _count),
    "target_session_attrs": ("target_session_attrs", _choice(TARGET_SESSION_ATTRS)),
    "krbsrvname": ("krbsrvname", _text),
    "gsslib": ("gsslib", _choice(_GSSLIBS)),
    "service": ("service", _text),
    "servicefile": ("servicefile", _text),
}
ACCEPTED_QUERY_PARAMETERS = tuple(sorted(_ACCEPTED))

_AS_TEXT = (
    "cannot be set in the URL: SQLAlchemy passes URL values to asyncpg as text, and asyncpg "
    "needs a number here"
)
_CONNECT_TIMEOUT = (
    "cannot be set in the URL: memfuse gives asyncpg its connect_timeout setting "
    "(MEMFUSE_CONNECT_TIMEOUT), which would override it"
)
_EXPLAINED: dict[str, str] = {
    "timeout": _CONNECT_TIMEOUT,
    "connect_timeout": _CONNECT_TIMEOUT,
    "command_timeout": (
        "cannot be set in the URL: memfuse gives asyncpg its command_timeout setting "
        "(MEMFUSE_COMMAND_TIMEOUT), which would override it"
    ),
    "statement_cache_size": (
        _AS_TEXT + "; prepared_statement_cache_size=0 turns off the statement cache that "
        "SQLAlchemy's asyncpg adapter uses"
    ),
    "max_cached_statement_lifetime": _AS_TEXT,
    "max_cacheable_statement_size": _AS_TEXT,
    "application_name": (
        "cannot be set in the URL: asyncpg takes it only as a server setting, which a URL "
        "cannot carry through SQLAlchemy; set it on the server instead, e.g. "
        "ALTER ROLE <user> SET application_name = '<name>'"
    ),
    "options": "cannot be set in the URL; use ALTER ROLE <user> SET <setting> on the server",
    "sslrootcert": "cannot be set in the URL; set the PGSSLROOTCERT environment variable",
    "sslcert": "cannot be set in the URL; set the PGSSLCERT environment variable",
    "sslkey": "cannot be set in the URL; set the PGSSLKEY environment variable",
    "sslcrl": "cannot be set in the URL; set the PGSSLCRL environment variable",
    "ssl_min_protocol_version": (
        "cannot be set in the URL; set the PGSSLMINPROTOCOLVERSION environment variable"
    ),
    "ssl_max_protocol_version": (
        "cannot be set in the URL; set the PGSSLMAXPROTOCOLVERSION environment variable"
    ),
}
_EXPLAINED.update(
    dict.fromkeys(
        ("user", "password", "database", "dbname"),
        "belongs in the URL itself, not its query: postgresql://user:password@host:port/database",
    )
)


def normalize_url(url: str | URL) -> URL:
    """Canonical form of a PostgreSQL URL, so two spellings of one database compare equal.

    The driver becomes asyncpg, the host lower-case, the default port explicit, libpq's
    ``sslmode`` becomes asyncpg's ``ssl`` (``sslnegotiation=direct`` becomes
    ``direct_tls=true``) and query parameters are sorted. A URL that cannot be parsed, names
    another database system, has a port outside 1-65535 or a query parameter memfuse cannot
    pass to asyncpg raises :class:`ConfigurationError` without echoing the (possibly secret)
    text.
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
    if parsed.port is not None and not 1 <= parsed.port <= _MAX_PORT:
        raise ConfigurationError("database_url", f"has a port outside 1-{_MAX_PORT}")
    host = parsed.host.lower() if parsed.host else None
    port = parsed.port if parsed.port is not None or host is None else DEFAULT_PORT
    normalized = URL.create(
        ASYNC_DRIVER,
        username=parsed.username,
        password=parsed.password,
        host=host,
        port=port,
        database=parsed.database,
        query=_normalize_query(parsed.query, parsed.password),
    )
    _check_hosts_and_ports(normalized)
    return normalized


def _normalize_query(
    query: Mapping[str, str | Sequence[str]], password: str | None
) -> dict[str, str | Sequence[str]]:
    """The accepted query parameters under asyncpg's names, checked and sorted."""
    result: dict[str, str | Sequence[str]] = {}
    given_as: dict[str, str] = {}
    for name, raw in query.items():
        values = (raw,) if isinstance(raw, str) else tuple(raw)
        if name not in _ACCEPTED:
            raise _query_error(name, password, _unknown_reason(name))
        target, check = _ACCEPTED[name]
        if target in _MULTI_VALUED:
            for each in values:
                _checked(name, check, each, password)
            result[target] = raw if isinstance(raw, str) else tuple(raw)
            continue
        if len(values) != 1:
            raise _query_error(name, password, "is given more than once")
        value = _checked(name, check, values[0], password)
        if target in given_as:
            if result.get(target) != value:
                raise ConfigurationError(
                    "database_url",
                    f"query parameters {given_as[target]!r} and {name!r} disagree; give one",
                )
            continue
        given_as[target] = name
        if value is not None:
            result[target] = value
    if result.get("direct_tls") == "true" and result.get("ssl") not in _VERIFYING_SSL_MODES:
        raise ConfigurationError(
            "database_url",
            "direct TLS (direct_tls=true or sslnegotiation=direct) needs ssl (or sslmode) "
            "require, verify-ca or verify-full in the URL",
        )
    return dict(sorted(result.items()))


def _checked(
    name: str, check: Callable[[str], str | None], value: str, password: str | None
) -> str | None:
    try:
        return check(value)
    except _Invalid as invalid:
        raise _query_error(name, password, str(invalid)) from None


def _unknown_reason(name: str) -> str:
    explained = _EXPLAINED.get(name)
    if explained is not None:
        return explained
    return "is not a connection option memfuse can pass to asyncpg; accepted: " + ", ".join(
        ACCEPTED_QUERY_PARAMETERS
    )


def _query_error(name: str, password: str | None, reason: str) -> ConfigurationError:
    """The error for one query parameter, naming it unless the name could hold a secret."""
    known = name in _ACCEPTED or name in _EXPLAINED
    shown = known or (bool(_NAME.match(name)) and not (password and password in name))
    label = f"query parameter {name!r}" if shown else "a query parameter"
    return ConfigurationError("database_url", f"{label} {reason}")


def _check_hosts_and_ports(url: URL) -> None:
    """Parse hosts and ports as the dialect will, and keep each port in range."""
    try:
        _, options = ASYNCPG_DIALECT.create_connect_args(url)
    except (ArgumentError, ValueError, TypeError):
        raise ConfigurationError(
            "database_url",
            "has a host or port that cannot be parsed; ports are integers from 1 to "
            f"{_MAX_PORT}, several hosts are given as ?host=h1:p1&host=h2:p2",
        ) from None
    ports = options.get("port")
    for port in ports if isinstance(ports, list) else [ports]:
        if port is not None and not (isinstance(port, int) and 1 <= port <= _MAX_PORT):
            raise ConfigurationError("database_url", f"has a port outside 1-{_MAX_PORT}")


def mask_url(url: str | URL) -> str:
    """The normalized URL as text with the password replaced by ``***``."""
    return normalize_url(url).render_as_string(hide_password=True)


def engine_key(url: str | URL) -> str:
    """The key under which one engine per database is shared: the masked, normalized URL."""
    return mask_url(url)


def asyncpg_connect_args(url: str | URL) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect`` from a URL, Unix-socket hosts included.

    For connections that must live outside the pool, such as a long-lived LISTEN: they are the
    arguments SQLAlchemy's asyncpg dialect gives the pool's connections (``ssl``, ``passfile``,
    ``target_session_attrs``, ``direct_tls`` ... included), less the dialect's own
    ``prepared_statement_cache_size``. They never include ``timeout``, ``command_timeout`` or
    ``server_settings``, which a URL cannot carry (the pool gets its timeouts from
    :class:`~memfuse.config.PoolSettings`), so callers may pass those themselves.
    """
    _, options = ASYNCPG_DIALECT.create_connect_args(normalize_url(url))
    args: dict[str, Any] = dict.fromkeys(("user", "password", "host", "port", "database"))
    args.update((name, value) for name, value in options.items() if name not in _DIALECT_ONLY)
    return args
