"""Settings from arguments, a TOML config file and the environment, validated at start-up.

Precedence, highest first: keyword arguments to :func:`load_settings`, environment variables,
the config file, defaults. Pool settings in the file come in three levels, resolved
``[store]`` > ``[database]`` > ``[postgres]`` > defaults, and the environment overrides them.
Every invalid value fails here, with an error naming the setting, not later in a request.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from sqlalchemy.engine import URL

from memfuse.config.urls import mask_url, normalize_url
from memfuse.errors import ConfigurationError

DEFAULT_SCHEMA = "memfuse"
DEFAULT_EMBEDDING_DIMENSION = 384
MAX_EMBEDDING_DIMENSION = 2000
"""pgvector's HNSW index takes ``vector`` columns of at most 2000 dimensions."""
POOL_LEVELS = ("store", "database", "postgres")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Connection pool options, named as SQLAlchemy's ``create_async_engine`` names them."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: int = 1800
    pool_pre_ping: bool = True
    connect_timeout: float = 10.0
    command_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ConfigurationError("pool_size", f"must be at least 1, got {self.pool_size}")
        if self.max_overflow < 0:
            raise ConfigurationError("max_overflow", f"must be 0 or more, got {self.max_overflow}")
        for name in ("pool_timeout", "connect_timeout", "command_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(name, f"must be positive, got {getattr(self, name)}")
        if self.pool_recycle <= 0 and self.pool_recycle != -1:
            raise ConfigurationError(
                "pool_recycle",
                f"must be positive seconds, or -1 to disable, got {self.pool_recycle}",
            )

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``create_async_engine``.

        ``connect_timeout`` and ``command_timeout`` go to asyncpg: a server that accepts the
        connection and then never answers (frozen, or behind a partition that drops packets)
        fails the call after that long instead of hanging it.
        """
        driver = {"connect_timeout", "command_timeout"}
        kwargs: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in driver
        }
        kwargs["connect_args"] = {
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
        }
        return kwargs


FACT_EXTRACTORS = ("offline", "llm", "none")
EMBEDDERS = ("local", "openai", "none")
EMBEDDING_PRECISIONS = ("auto", "float32", "bfloat16")
_SECRETS = frozenset({"database_url", "llm_api_key", "embedding_api_key"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything memfuse needs to start; build it with :func:`load_settings`.

    Each field but ``pool`` and ``database_url`` is read from ``MEMFUSE_<FIELD>`` and from the
    config file's top-level key of the same name.
    """

    database_url: str | None = field(default=None, repr=False)
    schema: str = DEFAULT_SCHEMA
    embedding_dimension: int = DEFAULT_EMBEDDING_DIMENSION
    data_dir: Path | None = None
    embedded_shared_buffers_mb: int = 0
    pool: PoolSettings = field(default_factory=PoolSettings)
    monitor_enabled: bool = True
    monitor_history_size: int = 1000
    auto_migrate: bool = True
    max_message_chars: int = 100_000
    buffer_enabled: bool = True
    buffer_max_messages: int = 500
    buffer_max_tokens: int = 50_000
    buffer_max_delay: float = 0.0
    buffer_max_pending: int = 10_000
    pipeline_parallel: bool = True
    pipeline_concurrency: int = 4
    pipeline_auto: bool = True
    pipeline_batch_messages: int = 500
    pipeline_poll_interval: float = 30.0
    pipeline_pass_interval: float = 1.0
    episode_target_tokens: int = 700
    episode_max_tokens: int = 800
    episode_idle_gap: float = 3600.0
    embed_delay: float = 30.0
    fact_extractor: str = "offline"
    llm_base_url: str | None = None
    llm_api_key: str | None = field(default=None, repr=False)
    llm_model: str | None = None
    llm_timeout: float = 30.0
    llm_max_retries: int = 3
    llm_batch_size: int = 20
    embedder: str = "local"
    embedding_base_url: str | None = None
    embedding_model: str | None = None
    embedding_api_key: str | None = field(default=None, repr=False)
    embedding_batch_size: int = 64
    worker_batch_size: int = 1024
    worker_enabled: bool = True
    worker_concurrency: int = 1
    worker_poll_interval: float = 5.0
    worker_max_attempts: int = 5
    worker_lease_seconds: float = 120.0
    # Embedding worker throughput and memory (issue 14; docs/embedding.md, "Memory").
    embedding_batch_tokens: int = 2048
    embedding_precision: str = "auto"
    embedding_pass_threads: int = 2
    worker_chunk_size: int = 256
    search_candidates: int = 100
    search_rrf_k: int = 60
    search_ef_search: int = 100
    search_common_term_frequency: float = 0.01
    search_common_term_rows: int = 2000
    search_term_budget_rows: int = 1000
    search_cache_ttl: float = 30.0
    search_cache_size: int = 1000
    query_embedding_cache_size: int = 1024
    # Health checks and start-up (issue 18; docs/operations.md).
    health_cache_seconds: float = 0.0
    pool_warmup: bool = False

    def __post_init__(self) -> None:
        if self.database_url is not None:
            normalize_url(self.database_url)
        if not _IDENTIFIER.match(self.schema):
            raise ConfigurationError(
                "schema", f"must be a lower-case SQL identifier, got {self.schema!r}"
            )
        if not 1 <= self.embedding_dimension <= MAX_EMBEDDING_DIMENSION:
            raise ConfigurationError(
                "embedding_dimension",
                f"must be between 1 and {MAX_EMBEDDING_DIMENSION} (pgvector's HNSW limit), "
                f"got {self.embedding_dimension}",
            )
        for name in (
            "monitor_history_size",
            "max_message_chars",
            "buffer_max_messages",
            "buffer_max_tokens",
            "buffer_max_pending",
            "pipeline_concurrency",
            "pipeline_batch_messages",
            "episode_target_tokens",
            "llm_batch_size",
            "embedding_batch_size",
            "worker_batch_size",
            "worker_concurrency",
            "worker_max_attempts",
            "search_candidates",
            "search_rrf_k",
            "search_ef_search",
            "search_common_term_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in (
            "buffer_max_delay",
            "pipeline_pass_interval",
            "episode_idle_gap",
            "embed_delay",
            "llm_max_retries",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(name, f"must be 0 or more, got {getattr(self, name)}")
        if self.pipeline_poll_interval <= 0:
            raise ConfigurationError(
                "pipeline_poll_interval", f"must be positive, got {self.pipeline_poll_interval}"
            )
        if self.llm_base_url is not None and not self.llm_base_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError(
                "llm_base_url", f"must be an http(s) URL, got {self.llm_base_url!r}"
            )
        if self.llm_timeout <= 0:
            raise ConfigurationError("llm_timeout", f"must be positive, got {self.llm_timeout}")
        if self.buffer_max_pending < self.buffer_max_messages:
            raise ConfigurationError(
                "buffer_max_pending",
                f"must be at least buffer_max_messages ({self.buffer_max_messages}), "
                f"got {self.buffer_max_pending}",
            )
        if self.episode_max_tokens < self.episode_target_tokens:
            raise ConfigurationError(
                "episode_max_tokens",
                f"must be at least episode_target_tokens ({self.episode_target_tokens}), "
                f"got {self.episode_max_tokens}",
            )
        if self.fact_extractor not in FACT_EXTRACTORS:
            raise ConfigurationError(
                "fact_extractor",
                f"must be one of {', '.join(FACT_EXTRACTORS)}, got {self.fact_extractor!r}",
            )
        for name in ("embedding_batch_tokens", "embedding_pass_threads", "worker_chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigurationError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("worker_poll_interval", "worker_lease_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(name, f"must be positive, got {getattr(self, name)}")
        for name in (
            "search_cache_ttl",
            "search_cache_size",
            "query_embedding_cache_size",
            "health_cache_seconds",
            "search_term_budget_rows",
            "embedded_shared_buffers_mb",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(
                    name, f"must be 0 (off) or more, got {getattr(self, name)}"
                )
        if not 0.0 <= self.search_common_term_frequency <= 1.0:
            raise ConfigurationError(
                "search_common_term_frequency",
                f"must be between 0 (off) and 1, got {self.search_common_term_frequency}",
            )
        if self.embedding_precision not in EMBEDDING_PRECISIONS:
            raise ConfigurationError(
                "embedding_precision",
                f"must be one of {', '.join(EMBEDDING_PRECISIONS)}, "
                f"got {self.embedding_precision!r}",
            )
        if self.embedder not in EMBEDDERS:
            raise ConfigurationError(
                "embedder", f"must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}"
            )
        if self.embedder == "openai":
            for name in ("embedding_base_url", "embedding_model"):
                if not getattr(self, name):
                    raise ConfigurationError(name, "is required when embedder is 'openai'")
        if self.fact_extractor == "llm":
            for name in ("llm_base_url", "llm_model"):
                if not getattr(self, name):
                    raise ConfigurationError(name, "is required when fact_extractor is 'llm'")

    @property
    def masked_database_url(self) -> str | None:
        """The database URL with its password hidden, safe for logs."""
        return None if self.database_url is None else mask_url(self.database_url)

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "database_url":
                value = self.masked_database_url
            elif item.name in _SECRETS and value is not None:
                value = "***"
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


_POOL_ENV = {
    "pool_size": "MEMFUSE_POOL_SIZE",
    "max_overflow": "MEMFUSE_MAX_OVERFLOW",
    "pool_timeout": "MEMFUSE_POOL_TIMEOUT",
    "pool_recycle": "MEMFUSE_POOL_RECYCLE",
    "pool_pre_ping": "MEMFUSE_POOL_PRE_PING",
    "connect_timeout": "MEMFUSE_CONNECT_TIMEOUT",
    "command_timeout": "MEMFUSE_COMMAND_TIMEOUT",
}


def _field_types(cls: type) -> dict[str, type]:
    """Each field's value type, with ``X | None`` reduced to ``X``."""
    types: dict[str, type] = {}
    for name, hint in get_type_hints(cls).items():
        options = [arg for arg in get_args(hint) if arg is not type(None)] or [hint]
        types[name] = options[0]
    return types


_TYPES: dict[str, type] = {
    name: kind
    for name, kind in (_field_types(Settings) | _field_types(PoolSettings)).items()
    if name != "pool"
}
_SETTINGS_ENV = {
    item.name: f"MEMFUSE_{item.name.upper()}"
    for item in fields(Settings)
    if item.name not in {"pool", "database_url"}
}
_TOP_LEVEL_KEYS = frozenset(_SETTINGS_ENV) | {"database_url"}
_POSTGRES_KEYS = frozenset({"host", "port", "database", "user", "password"})


SERVER_ADMIN_KEY_VARIABLE = "MEMFUSE_SERVER_API_KEY"
"""The admin key of ``memfuse serve`` and ``memfuse mcp --http``: never a setting, so it is
never in a config file, a ``repr`` or a log line."""


def server_admin_key() -> str | None:
    """The servers' admin key from the environment, if set."""
    return os.environ.get(SERVER_ADMIN_KEY_VARIABLE) or None


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings: ``overrides`` > environment > ``config_file`` (or ``MEMFUSE_CONFIG``).

    ``overrides`` take any :class:`Settings` field or :class:`PoolSettings` field by name.
    """
    env = os.environ if environ is None else environ
    path = config_file if config_file is not None else env.get("MEMFUSE_CONFIG")
    document = _read_toml(Path(path)) if path else {}

    values: dict[str, Any] = {}
    pool_values: dict[str, Any] = {}

    for key, raw in document.items():
        if key in POOL_LEVELS:
            continue
        if key in _POOL_ENV:
            raise ConfigurationError(
                key, f"put pool settings under [store], [database] or [postgres] in {path}"
            )
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigurationError(key, f"unknown key in config file {path}")
        values[key] = _coerce(key, raw, source=f"config file {path}")
    for name in _POOL_ENV:
        for level in reversed(POOL_LEVELS):  # postgres, then database, then store wins
            section = _section(document, level, path)
            if name in section:
                pool_values[name] = _coerce(name, section[name], source=f"[{level}] in {path}")
    file_url = _url_from_file(document, path)
    if file_url is not None:
        values["database_url"] = file_url

    for name, variable in _SETTINGS_ENV.items():
        if variable in env:
            values[name] = _coerce(name, env[variable], source=variable)
    for name, variable in _POOL_ENV.items():
        if variable in env:
            pool_values[name] = _coerce(name, env[variable], source=variable)
    env_url = env.get("MEMFUSE_DATABASE_URL") or _url_from_postgres_env(env)
    if env_url:
        values["database_url"] = env_url

    for name, raw in overrides.items():
        if name in _POOL_ENV:
            pool_values[name] = _coerce(name, raw, source="argument")
        elif name in _TYPES:
            values[name] = None if raw is None else _coerce(name, raw, source="argument")
        else:
            raise ConfigurationError(name, "unknown setting")

    return Settings(pool=PoolSettings(**pool_values), **values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError("MEMFUSE_CONFIG", f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError("MEMFUSE_CONFIG", f"config file {path}: {error}") from None


def _section(document: Mapping[str, Any], name: str, path: object) -> Mapping[str, Any]:
    section = document.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigurationError(name, f"must be a table in config file {path}")
    allowed = set(_POOL_ENV) | (_POSTGRES_KEYS if name == "postgres" else set())
    if name == "database":
        allowed.add("url")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigurationError(f"{name}.{unknown[0]}", f"unknown key in config file {path}")
    return section


def _url_from_file(document: Mapping[str, Any], path: object) -> str | None:
    database = _section(document, "database", path)
    if "url" in database:
        return str(database["url"])
    postgres = _section(document, "postgres", path)
    if "host" not in postgres:
        return None
    return _render_url(
        {key: str(value) for key, value in postgres.items() if key in _POSTGRES_KEYS}
    )


def _url_from_postgres_env(env: Mapping[str, str]) -> str | None:
    if not env.get("POSTGRES_HOST"):
        return None
    names = {
        "host": "HOST",
        "port": "PORT",
        "database": "DB",
        "user": "USER",
        "password": "PASSWORD",
    }
    parts = {
        key: env[f"POSTGRES_{suffix}"]
        for key, suffix in names.items()
        if f"POSTGRES_{suffix}" in env
    }
    return _render_url(parts)


def _render_url(parts: Mapping[str, str]) -> str:
    port = parts.get("port")
    if port is not None and not port.isdigit():
        raise ConfigurationError("postgres.port", f"must be a port number, got {port!r}")
    url = URL.create(
        "postgresql+asyncpg",
        username=parts.get("user", "postgres"),
        password=parts.get("password"),
        host=parts["host"],
        port=int(port) if port is not None else None,
        database=parts.get("database", "postgres"),
    )
    return url.render_as_string(hide_password=False)


def _coerce(name: str, raw: Any, *, source: str) -> Any:
    kind = _TYPES.get(name)
    if kind is None:
        raise ConfigurationError(name, f"unknown setting (from {source})")
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigurationError(name, f"expected true/false, got {raw!r} (from {source})")
    if kind is int and (isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer())):
        raise ConfigurationError(name, f"expected an integer, got {raw!r} (from {source})")
    try:
        if kind is int and isinstance(raw, str):
            return int(raw.strip())
        return kind(raw)
    except (TypeError, ValueError):
        expected = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ConfigurationError(
            name, f"expected {expected}, got {raw!r} (from {source})"
        ) from None
