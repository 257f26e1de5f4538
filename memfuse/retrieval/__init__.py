"""Hybrid search over the memory layers, with its caches."""

from memfuse.retrieval.cache import LruCache, ResultCache
from memfuse.retrieval.service import RetrievalService, SearchRequest

__all__ = ["LruCache", "ResultCache", "RetrievalService", "SearchRequest"]
