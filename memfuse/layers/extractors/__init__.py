"""M2 fact extractors: the protocol, an offline extractor and an OpenAI-compatible LLM one."""

from memfuse.layers.extractors.base import FACT_TYPES, FactCandidate, FactExtractor

__all__ = ["FACT_TYPES", "FactCandidate", "FactExtractor"]
