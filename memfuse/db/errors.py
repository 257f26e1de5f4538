"""Which driver errors mean "the database is not there", and their one memfuse error.

A refused port, an unknown host, a missing socket file, a wrong database or role, a server
shutting down or restarting, a connection dropped mid-call: the caller can do nothing about
these but wait, fix the URL or retry, so they all become
:class:`~memfuse.errors.DatabaseUnavailableError` with the masked URL. Every other error keeps
its type: a constraint violation or a bug must not be reported as an outage.
"""

from __future__ import annotations

import contextlib
import socket
import traceback
from collections.abc import Iterator

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from memfuse.config.urls import mask_url
from memfuse.errors import ConfigurationError, DatabaseUnavailableError, MemfuseError

_DRIVER_MODULES = ("asyncpg", "sqlalchemy")

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, terminated backend
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, pg_hba refusal
    asyncpg.InvalidPasswordError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # the protocol broke off mid-call
    sa_exc.TimeoutError,  # no pooled connection within pool_timeout
)

_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (socket.gaierror, "unknown database host"),
    (FileNotFoundError, "no server socket (is the server running?)"),
    (ConnectionRefusedError, "connection refused (is the server running?)"),
    (asyncpg.CannotConnectNowError, "the server is starting up or shutting down"),
    (asyncpg.OperatorInterventionError, "the server ended the connection (shutdown or restart)"),
    (asyncpg.InvalidCatalogNameError, "the database does not exist"),
    (asyncpg.InvalidAuthorizationSpecificationError, "the role was refused"),
    (asyncpg.InvalidPasswordError, "the password was refused"),
    (asyncpg.TooManyConnectionsError, "the server has no free connection slots"),
    (sa_exc.TimeoutError, "no pooled connection became free in time (pool_timeout)"),
    (
        TimeoutError,
        "no answer in time (connect_timeout, command_timeout): the server is frozen, "
        "unreachable, or the statement ran too long",
    ),
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, what it wraps (SQLAlchemy's ``orig``) and its causes, each once."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (
            getattr(current, "orig", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(inner, BaseException):
                stack.append(inner)


def _from_driver(error: BaseException) -> bool:
    """Whether the database driver raised or passed on ``error``.

    A refused port or an unknown host reach us as plain ``OSError``s whose traceback runs
    through asyncpg; a missing model file or an unwritable report is an ``OSError`` too, and
    must not be reported as a database outage.
    """
    if type(error).__module__.startswith(_DRIVER_MODULES):
        return True
    return any(
        str(frame.f_globals.get("__name__", "")).startswith(_DRIVER_MODULES)
        for frame, _ in traceback.walk_tb(error.__traceback__)
    )


def client_configuration_problem(error: BaseException) -> ConfigurationError | None:
    """The :class:`ConfigurationError` for a connection option the driver refused on our
    side (e.g. ``sslmode=verify-full`` without a root certificate file), else ``None``.

    asyncpg raises these while handling an ``OSError`` (a missing file), so they must be
    told apart before the chain is searched for outages.
    """
    for inner in _chain(error):
        if isinstance(inner, asyncpg.ClientConfigurationError):
            detail = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
            return ConfigurationError(
                "database_url",
                f"the driver refused a connection option: {detail} "
                "(for TLS certificates set PGSSLROOTCERT, PGSSLCERT, PGSSLKEY)",
            )
    return None


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database is unreachable, refused us, or went away."""
    if isinstance(error, MemfuseError):
        return isinstance(error, DatabaseUnavailableError)
    if client_configuration_problem(error) is not None:
        return False
    for inner in _chain(error):
        if isinstance(inner, sa_exc.DBAPIError) and inner.connection_invalidated:
            return True
        if isinstance(inner, _UNAVAILABLE):
            return True
        if isinstance(inner, OSError) and _from_driver(inner):
            return True  # refused port, unknown host, missing socket file, reset
        if isinstance(inner, asyncpg.InterfaceError) and "closed" in str(inner):
            return True  # "connection is closed": other interface errors are our bugs
    return False


def describe_unavailable(error: BaseException) -> str:
    """A one-line reason, most specific first, without the driver's traceback."""
    for inner in _chain(error):
        for kind, reason in _REASONS:
            if isinstance(inner, kind):
                return f"database unavailable: {reason}"
    for inner in _chain(error):
        if isinstance(inner, asyncpg.PostgresError | OSError | asyncpg.InterfaceError):
            detail = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
            name = type(inner).__name__
            return f"database unavailable: {name}{': ' + detail if detail else ''}"
    return "database unavailable: the connection was lost"


def unavailable_error(error: BaseException, url: str | URL | None) -> DatabaseUnavailableError:
    """The memfuse error for ``error``, naming the masked URL."""
    if isinstance(error, DatabaseUnavailableError):
        return error
    masked = None
    if url is not None:
        try:
            masked = mask_url(url)
        except MemfuseError:
            masked = None  # an unparsable URL is not echoed: it may hold a password
    return DatabaseUnavailableError(describe_unavailable(error), url=masked)


@contextlib.contextmanager
def translate_unavailable(url: str | URL | None) -> Iterator[None]:
    """Raise :class:`DatabaseUnavailableError` for outage errors inside the block (and
    :class:`ConfigurationError` for a connection option the driver refused)."""
    try:
        yield
    except Exception as error:
        translated = database_error(error, url)
        if translated is not None:
            raise translated from error
        raise


def database_error(error: BaseException, url: str | URL | None) -> MemfuseError | None:
    """The memfuse error a driver error stands for, or ``None`` if it is not about reaching
    the database (then it keeps its own type)."""
    if isinstance(error, MemfuseError):
        return None
    configuration = client_configuration_problem(error)
    if configuration is not None:
        return configuration
    if is_unavailable(error):
        return unavailable_error(error, url)
    return None
