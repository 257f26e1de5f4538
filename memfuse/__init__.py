"""memfuse: a long-term memory layer for LLM applications on PostgreSQL and pgvector.

Everything a caller needs is importable from here: the facade (:class:`MemFuse`,
:class:`Memory`), its settings and container, every type its public methods take or return
(:mod:`memfuse.types`), the extension points (:class:`Embedder`, :class:`FactExtractor`) and
every error. ``tests/test_public_api.py`` checks that public signatures name nothing else.
"""

from importlib.metadata import version

from memfuse.config import PoolSettings, Settings, load_settings
from memfuse.container import Container
from memfuse.embedding.embedders import Embedder
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
from memfuse.layers.extractors.base import FactCandidate, FactExtractor
from memfuse.memory import MemFuse, Memory
from memfuse.monitor.performance import Alert, OperationStats, PerformanceMonitor, Regression
from memfuse.services.api_keys import ApiKeyService
from memfuse.services.knowledge import KnowledgeService
from memfuse.services.tenancy import TenancyService
from memfuse.types import (
    AgentRow,
    ApiKeyRow,
    BufferStats,
    Check,
    ChunkData,
    EpisodeRow,
    FactRow,
    FilterIds,
    HealthReport,
    KnowledgeRow,
    Layer,
    MemoryScope,
    MessageRow,
    Method,
    Order,
    Page,
    RetrievalStats,
    Role,
    SearchResult,
    SessionRow,
    TaskState,
    TaskStatus,
    Unit,
    UserRow,
    WorkerStats,
)

__version__ = version("memfuse")

__all__ = [
    "AgentRow",
    "Alert",
    "ApiKeyRow",
    "ApiKeyService",
    "BufferStats",
    "Check",
    "ChunkData",
    "ClosedError",
    "ConfigurationError",
    "ConflictError",
    "Container",
    "DatabaseUnavailableError",
    "DimensionMismatchError",
    "Embedder",
    "EmbeddingError",
    "EpisodeRow",
    "ExtractionError",
    "FactCandidate",
    "FactExtractor",
    "FactRow",
    "FilterIds",
    "HealthReport",
    "KnowledgeRow",
    "KnowledgeService",
    "Layer",
    "MemFuse",
    "MemfuseError",
    "Memory",
    "MemoryScope",
    "MessageRow",
    "Method",
    "ModelCallError",
    "NotFoundError",
    "OperationStats",
    "Order",
    "Page",
    "PerformanceMonitor",
    "PipelineError",
    "PoolSettings",
    "Regression",
    "RetrievalStats",
    "Role",
    "SchemaError",
    "SearchResult",
    "SessionRow",
    "Settings",
    "TaskState",
    "TaskStatus",
    "TenancyService",
    "Unit",
    "UserRow",
    "ValidationError",
    "WorkerStats",
    "__version__",
    "load_settings",
]
