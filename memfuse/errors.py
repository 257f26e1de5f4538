"""Exceptions raised by memfuse: one hierarchy so callers can catch ``MemfuseError``."""

from __future__ import annotations


class MemfuseError(Exception):
    """Base class of every error memfuse raises on purpose."""


class ConfigurationError(MemfuseError, ValueError):
    """A setting is missing or invalid; ``setting`` names it so the fix is obvious."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"invalid setting {setting!r}: {message}")
        self.setting = setting


class SchemaError(MemfuseError):
    """The database schema is missing, outdated or incompatible with this process."""


class DimensionMismatchError(SchemaError):
    """The embedding dimension asked for differs from the one the schema was created with."""

    def __init__(self, expected: int, actual: int, *, source: str) -> None:
        super().__init__(
            f"embedding dimension mismatch: the database schema stores vector({actual}) but "
            f"{source} uses {expected} dimensions; use a model of dimension {actual}, or create "
            f"a new schema for the new dimension"
        )
        self.expected = expected
        self.actual = actual


class ValidationError(MemfuseError, ValueError):
    """Input was rejected before anything was written.

    For a message in a batch, ``index`` is its position and ``field`` the offending key.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        where = []
        if index is not None:
            where.append(f"message {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.index = index
        self.field = field


class NotFoundError(MemfuseError, LookupError):
    """The row does not exist in the caller's scope (another user's rows are never found)."""


class ModelCallError(MemfuseError):
    """A call to a model failed.

    ``transient`` means the service rather than the input was at fault (timeouts, HTTP 5xx or
    429 after every retry): splitting the input into smaller calls would not help.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ExtractionError(ModelCallError):
    """A fact extractor failed; the messages stay unprocessed and are retried later."""


class EmbeddingError(ModelCallError):
    """Texts could not be embedded; nothing was returned, so the caller can retry later."""


class PipelineError(MemfuseError):
    """Some sessions could not be processed into M1/M2; their messages are kept for a retry."""


class ClosedError(MemfuseError):
    """The object was closed and takes no more work."""


class ConflictError(MemfuseError):
    """A concurrent call changed the same rows first (e.g. the same message id raced in two
    calls); nothing of this call was written, and retrying it is safe."""


class DatabaseUnavailableError(MemfuseError):
    """The database could not be reached or refused us: the server is down or restarting, the
    host, database or role is wrong, or the connection dropped mid-call.

    ``url`` is the masked URL (never the password). Whether the call's writes committed is
    unknown only if the connection dropped during the commit itself; retrying a write with the
    same message ids is always safe.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(f"{message} (database {url})" if url else message)
        self.url = url
