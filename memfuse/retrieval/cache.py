"""The two query-side caches: query embeddings (LRU) and search results (LRU with a TTL).

Results are cached per user with that user's *generation*, a counter every write by the user
bumps (``Memory`` writes, the pipeline storing M1/M2 rows; the embedding worker, which does not
know users, bumps every generation). A cached result is served only while its generation is
current, so a write invalidates it at once in this process. Other processes' writes are not
seen: there a result can be up to ``ttl`` seconds old.

Generations only ever grow, and the counters are bounded: at most ``max_users`` users are
tracked (none when nothing is cached); past that the cache starts afresh, and the shared epoch
jumps past every generation handed out, so a search that read one before cannot store its
result. A long-running process writing for millions of users keeps a bounded cache.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: V) -> None:
        if self.max_size == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


MAX_USERS_TRACKED = 100_000
"""Users whose write counters a result cache keeps before it starts afresh (15 MB of
ids and counters, measured with tracemalloc)."""


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    generation: int
    expires: float


class ResultCache(Generic[V]):
    """Search results by (user, query, options), dropped by TTL or by any write of the user."""

    def __init__(
        self,
        max_size: int,
        ttl: float,
        *,
        max_users: int = MAX_USERS_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0, got {ttl}")
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self.ttl = ttl
        self.max_users = max_users
        self._entries: LruCache[_Entry[V]] = LruCache(max_size if ttl > 0 else 0)
        self._generations: dict[uuid.UUID, int] = {}
        self._epoch = 0
        self._clock = clock

    @property
    def users_tracked(self) -> int:
        """How many users' write counters are kept (at most ``max_users``)."""
        return len(self._generations)

    def generation(self, user_id: uuid.UUID) -> int:
        """The user's current generation; read it *before* computing a result to cache."""
        return self._epoch + self._generations.get(user_id, 0)

    def get(self, user_id: uuid.UUID, key: Hashable) -> V | None:
        entry = self._entries.get((user_id, key))
        if entry is None:
            return None
        if entry.generation != self.generation(user_id) or entry.expires <= self._clock():
            self._entries.pop((user_id, key))
            return None
        return entry.value

    def put(self, user_id: uuid.UUID, key: Hashable, value: V, generation: int) -> None:
        """Store ``value`` computed at ``generation``; a stale one is not stored."""
        if generation == self.generation(user_id):
            self._entries.put((user_id, key), _Entry(value, generation, self._clock() + self.ttl))

    def invalidate(self, user_id: uuid.UUID | None = None) -> None:
        """A write by ``user_id`` (``None``: by someone unknown) makes cached results stale."""
        if user_id is None:
            self._epoch += 1
            self._entries.clear()
            return
        if self._entries.max_size == 0:
            return  # nothing is ever cached, so nothing goes stale: no counter to keep
        if user_id not in self._generations and len(self._generations) >= self.max_users:
            self._start_afresh()
        self._generations[user_id] = self._generations.get(user_id, 0) + 1

    def _start_afresh(self) -> None:
        """Forget every user's counter and every cached result. The epoch jumps past every
        generation handed out so far: a search that read one before stores nothing."""
        self._epoch += max(self._generations.values(), default=0) + 1
        self._generations.clear()
        self._entries.clear()
