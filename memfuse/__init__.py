"""memfuse: a long-term memory layer for LLM applications on PostgreSQL and pgvector."""

from memfuse.config import PoolSettings, Settings, load_settings
from memfuse.errors import (
    ConfigurationError,
    DimensionMismatchError,
    MemfuseError,
    SchemaError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DimensionMismatchError",
    "MemfuseError",
    "PoolSettings",
    "SchemaError",
    "Settings",
    "__version__",
    "load_settings",
]
