"""memfuse: a long-term memory layer for LLM applications on PostgreSQL and pgvector."""

from importlib.metadata import version

from memfuse.config import PoolSettings, Settings, load_settings
from memfuse.errors import (
    ClosedError,
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    DimensionMismatchError,
    EmbeddingError,
    ExtractionError,
    MemfuseError,
    ModelCallError,
    NotFoundError,
    PipelineError,
    SchemaError,
    ValidationError,
)
from memfuse.memory import MemFuse, Memory

__version__ = version("memfuse")

__all__ = [
    "ClosedError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseUnavailableError",
    "DimensionMismatchError",
    "EmbeddingError",
    "ExtractionError",
    "MemFuse",
    "MemfuseError",
    "Memory",
    "ModelCallError",
    "NotFoundError",
    "PipelineError",
    "PoolSettings",
    "SchemaError",
    "Settings",
    "ValidationError",
    "__version__",
    "load_settings",
]
