"""The query-side caches on their own: LRU bounds, TTL, and invalidation by writes."""

from __future__ import annotations

import uuid

import pytest

from memfuse.retrieval.cache import LruCache, ResultCache

ANA = uuid.uuid4()
BEN = uuid.uuid4()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_lru_forgets_the_least_recently_used_entry() -> None:
    cache: LruCache[str] = LruCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")
    assert cache.get("b") is None, "b was the least recently used"
    assert (cache.get("a"), cache.get("c"), len(cache)) == ("A", "C", 2)
    assert (cache.hits, cache.misses) == (3, 1)


def test_an_lru_of_size_zero_keeps_nothing() -> None:
    cache: LruCache[str] = LruCache(0)
    cache.put("a", "A")
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="max_size"):
        LruCache(-1)


def test_a_result_expires_after_its_ttl() -> None:
    clock = Clock()
    cache: ResultCache[str] = ResultCache(10, ttl=30.0, clock=clock)
    cache.put(ANA, "q", "results", cache.generation(ANA))
    clock.now = 29.9
    assert cache.get(ANA, "q") == "results"
    clock.now = 30.0
    assert cache.get(ANA, "q") is None


def test_a_write_by_the_user_invalidates_only_that_users_results() -> None:
    cache: ResultCache[str] = ResultCache(10, ttl=60.0)
    cache.put(ANA, "q", "ana's", cache.generation(ANA))
    cache.put(BEN, "q", "ben's", cache.generation(BEN))
    cache.invalidate(ANA)
    assert cache.get(ANA, "q") is None
    assert cache.get(BEN, "q") == "ben's"


def test_a_result_computed_before_a_write_is_not_stored() -> None:
    cache: ResultCache[str] = ResultCache(10, ttl=60.0)
    generation = cache.generation(ANA)  # the search starts
    cache.invalidate(ANA)  # a write commits while it runs
    cache.put(ANA, "q", "stale", generation)
    assert cache.get(ANA, "q") is None


def test_an_unknown_writer_invalidates_everyone_even_results_in_flight() -> None:
    cache: ResultCache[str] = ResultCache(10, ttl=60.0)
    cache.invalidate(ANA)
    in_flight = cache.generation(ANA)
    cache.put(BEN, "q", "ben's", cache.generation(BEN))
    cache.invalidate()
    cache.put(ANA, "q", "stale", in_flight)
    assert cache.get(ANA, "q") is None and cache.get(BEN, "q") is None


def test_ttl_zero_turns_the_result_cache_off() -> None:
    cache: ResultCache[str] = ResultCache(10, ttl=0.0)
    cache.put(ANA, "q", "results", cache.generation(ANA))
    assert cache.get(ANA, "q") is None
    with pytest.raises(ValueError, match="ttl"):
        ResultCache(10, ttl=-1.0)


def test_write_counters_are_bounded_and_a_fresh_start_refuses_results_in_flight() -> None:
    """A long-running process writes for ever more users: the cache keeps at most
    ``max_users`` counters, then starts afresh, and no result read before that is stored."""
    cache: ResultCache[str] = ResultCache(10, ttl=60.0, max_users=2)
    cache.put(ANA, "q", "ana's", cache.generation(ANA))
    for _ in range(5):
        cache.invalidate(BEN)  # Ben's counter is far ahead of the others
    in_flight = {user: cache.generation(user) for user in (ANA, BEN)}
    cache.invalidate(uuid.uuid4())
    assert cache.users_tracked == 2 and cache.get(ANA, "q") == "ana's"

    cache.invalidate(uuid.uuid4())  # a third writer: past the bound
    assert cache.users_tracked == 1
    assert cache.get(ANA, "q") is None, "every cached result went with the counters"
    for user, generation in in_flight.items():
        cache.put(user, "q", "read before the fresh start", generation)
        assert cache.get(user, "q") is None
    cache.put(ANA, "q", "ana's again", cache.generation(ANA))
    assert cache.get(ANA, "q") == "ana's again"


def test_with_the_cache_off_writes_keep_no_counters() -> None:
    cache: ResultCache[str] = ResultCache(1000, ttl=0.0)
    for _ in range(100):
        cache.invalidate(uuid.uuid4())
    assert cache.users_tracked == 0
    with pytest.raises(ValueError, match="max_users"):
        ResultCache(10, ttl=1.0, max_users=0)
