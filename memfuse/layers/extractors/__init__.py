"""M2 fact extractors: the protocol, an offline extractor and an OpenAI-compatible LLM one.

The LLM extractor needs the ``llm`` extra (httpx); import it from
:mod:`memfuse.layers.extractors.llm`.
"""

from memfuse.layers.extractors.base import FACT_TYPES, FactCandidate, FactExtractor
from memfuse.layers.extractors.offline import OfflineFactExtractor

__all__ = ["FACT_TYPES", "FactCandidate", "FactExtractor", "OfflineFactExtractor"]
