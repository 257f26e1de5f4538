"""``MemFuseStore``: LangGraph's ``BaseStore`` over memfuse's knowledge items (the ``langgraph``
extra).

An item is a row of ``knowledge``: ``namespace`` and ``key`` address it (one live item per user,
namespace and key), ``value`` is the JSON as put, and its text (the value's ``index`` fields,
the whole value by default) is embedded by memfuse's worker and full-text indexed, so
``search(query=...)`` ranks by meaning and by words (memfuse's fused search over the knowledge
layer; scores are fused reciprocal-rank scores, not cosine similarities). A new item is found
by its words at once and by its meaning once embedded (``MemFuse.flush()`` waits for that).
``index=False`` items are neither embedded nor indexed: ``get``, filters and listing find them.

Tenancy: every item belongs to a memfuse user. Either the store is bound to one user
(``user="alice"``), or it reads the user from a namespace position (``user_label=1`` for
LangMem's ``("memories", "{user_id}")``): one store then serves many users, and each
namespace names its own. A store never returns rows of a user its namespace does not name.

TTL (``ttl`` in minutes, LangGraph's unit): an expired item is hidden from every read at once
and deleted by :meth:`MemFuseStore.sweep_ttl` or the sweeper task
(:meth:`MemFuseStore.start_ttl_sweeper`); reads refresh it when asked (``refresh_ttl``).

The async methods are native. The sync ones (``get``, ``put``, ...) hand the work to the event
loop the store's ``MemFuse`` runs on; call them from another thread (LangGraph runs sync nodes
in threads), never from that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from memfuse.errors import ConflictError, MemfuseError, NotFoundError, ValidationError
from memfuse.memory import MemFuse
from memfuse.retrieval.cache import LruCache
from memfuse.types import KnowledgeRow, Page

logger = logging.getLogger(__name__)

WHOLE_VALUE = "$"
MINUTE = 60.0
USER_IDS_CACHED = 10_000
"""Namespace users whose memfuse ids a store keeps (the least recently used go first)."""


class MemFuseStore(BaseStore):
    """A LangGraph store whose items are memfuse knowledge items of one or many users."""

    supports_ttl = True

    def __init__(
        self,
        memfuse: MemFuse,
        *,
        user: str | None = None,
        user_label: int | None = None,
        index_fields: Sequence[str] | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        """``memfuse`` must be started (or be started before the first call). Give ``user``
        (every item is that user's) or ``user_label`` (the namespace label at that position
        names the user). ``index_fields``: the value paths whose text is embedded by default
        (LangGraph's ``IndexConfig["fields"]``; the whole value when None)."""
        if (user is None) == (user_label is None):
            raise ValidationError("give user or user_label, not both", field="user")
        if user_label is not None and (isinstance(user_label, bool) or user_label < 0):
            raise ValidationError("must be a namespace position (0 or more)", field="user_label")
        self.memfuse = memfuse
        self.user = user
        self.user_label = user_label
        self.index_fields = tuple(index_fields) if index_fields else (WHOLE_VALUE,)
        self.ttl_config = ttl
        # Bounded: a store whose namespaces name users may see millions of them over its life.
        self._user_ids: LruCache[uuid.UUID] = LruCache(USER_IDS_CACHED)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- BaseStore --

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Each result at its operation's position. As LangGraph's own stores do, the reads
        of a batch see the store as it was before the batch: its puts are applied after them,
        in order (the last put of a key wins)."""
        self._loop = asyncio.get_running_loop()
        operations = list(ops)
        results: list[Result] = [None] * len(operations)
        for position, op in enumerate(operations):
            if not isinstance(op, PutOp):
                results[position] = await self._run(op)
        for op in operations:
            if isinstance(op, PutOp):
                await self._put(op)
        return results

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`abatch` from another thread, on the loop the store runs on."""
        loop = self._loop  # set by the first async call
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            raise MemfuseError(
                "MemFuseStore's sync methods run on its event loop from another thread; in "
                "async code use the a-methods (aget, aput, asearch, ...)"
            )
        return asyncio.run_coroutine_threadsafe(self.abatch(list(ops)), loop).result()

    async def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return await self._get(op)
        if isinstance(op, SearchOp):
            return await self._search(op)
        if isinstance(op, ListNamespacesOp):
            return await self._list_namespaces(op)
        raise ValidationError(f"unknown operation {type(op).__name__}", field="op")

    # -- Operations --

    async def _get(self, op: GetOp) -> Item | None:
        user_id = await self._user_id(op.namespace, create=False)
        if user_id is None:
            return None
        row = await self.memfuse.knowledge.get_by_key(user_id, op.namespace, op.key)
        if row is None:
            return None
        if op.refresh_ttl and row.ttl_seconds is not None:
            await self.memfuse.knowledge.refresh_ttl(user_id, [row.id])
        return _item(row)

    async def _put(self, op: PutOp) -> None:
        if op.value is None:
            user_id = await self._user_id(op.namespace, create=False)
            if user_id is not None:
                await self.memfuse.knowledge.delete_by_key(user_id, op.namespace, op.key)
            return
        content, indexed = self._text(op.value, op.index)
        item: dict[str, Any] = {
            "content": content,
            "namespace": list(op.namespace),
            "key": op.key,
            "value": dict(op.value),
            "indexed": indexed,
        }
        if op.ttl is not None:
            item["ttl_seconds"] = op.ttl * MINUTE
        for attempt in range(2):
            user_id = await self._user_id(op.namespace, create=True)
            assert user_id is not None  # created when missing
            try:
                await self.memfuse.knowledge.add(user_id, [item])
                return
            except NotFoundError:
                if attempt:
                    raise
                self._user_ids.clear()  # the user was deleted meanwhile: create it again

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        user_id = await self._user_id(op.namespace_prefix, create=False, prefix=True)
        if user_id is None or op.limit <= 0:
            return []
        knowledge = self.memfuse.knowledge
        found: list[SearchItem] = []
        expiring: list[uuid.UUID] = []  # items with a TTL, which a read may refresh
        seen: set[uuid.UUID] = set()
        offset = op.offset
        if op.query and any(character.isalnum() for character in op.query):
            results = await self.memfuse.search(
                user_id,
                op.query,
                min(op.offset + op.limit, 1000),
                layers=["knowledge"],
                unit="item",
                knowledge_namespace=op.namespace_prefix,
                knowledge_filter=op.filter,
            )
            rows = await knowledge.get_many(user_id, [result.id for result in results])
            for result in results[op.offset :]:
                row = rows.get(result.id)
                if row is not None:
                    found.append(_search_item(row, result.score))
                    seen.add(row.id)
                    if row.ttl_seconds is not None:
                        expiring.append(row.id)
            offset = 0 if results else op.offset
        if len(found) < op.limit:  # without a query, or items the query did not rank
            page = Page(limit=op.limit - len(found) + len(seen), offset=offset, newest_first=True)
            listed = await knowledge.list_live(
                user_id,
                page,
                namespace_prefix=op.namespace_prefix,
                value_filter=op.filter,
                by_update=True,
            )
            for row in listed:
                if row.id not in seen and len(found) < op.limit:
                    found.append(_search_item(row, None))
                    seen.add(row.id)
                    if row.ttl_seconds is not None:
                        expiring.append(row.id)
        if op.refresh_ttl and expiring:
            await knowledge.refresh_ttl(user_id, expiring)
        return found

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        user_id = await self._user_id(_user_path(op.match_conditions), create=False, prefix=True)
        if user_id is None:
            return []
        namespaces = await self.memfuse.knowledge.namespaces(user_id)
        matching = [
            namespace
            for namespace in namespaces
            if all(_matches(condition, namespace) for condition in op.match_conditions or ())
        ]
        if op.max_depth is not None:
            matching = [namespace[: op.max_depth] for namespace in matching]
        return sorted(set(matching))[op.offset : op.offset + op.limit]

    # -- TTL --

    async def sweep_ttl(self) -> int:
        """Delete expired items now (every user's); how many."""
        return await self.memfuse.knowledge.sweep_expired()

    async def start_ttl_sweeper(
        self, sweep_interval_minutes: int | None = None
    ) -> asyncio.Task[None]:
        """Sweep expired items every ``sweep_interval_minutes`` (the TTL config's, else 5)."""
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        interval = sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes")
        seconds = (interval or 5) * MINUTE

        async def sweep_forever() -> None:
            while True:
                try:
                    await self.sweep_ttl()
                except Exception:  # the database away, a lost connection: next round retries
                    logger.warning("MemFuseStore's TTL sweep failed; retrying", exc_info=True)
                await asyncio.sleep(seconds)

        self._sweeper = asyncio.create_task(sweep_forever(), name="memfuse-store-ttl-sweeper")
        return self._sweeper

    async def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (LangGraph's signature)
        """Stop the sweeper; whether it stopped within ``timeout``."""
        task, self._sweeper = self._sweeper, None
        if task is None:
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return task.done()

    # -- Helpers --

    async def _user_id(
        self, namespace: Sequence[str], *, create: bool, prefix: bool = False
    ) -> uuid.UUID | None:
        """The memfuse user a namespace belongs to (created for writes); ``None`` if absent."""
        name = self._user_name(namespace, prefix=prefix)
        cached = self._user_ids.get(name)
        if cached is not None:
            return cached
        tenancy = self.memfuse.tenancy
        user = await tenancy.find_user(name)
        if user is None and create:
            try:
                user = await tenancy.create_user(name)
            except ConflictError:
                user = await tenancy.find_user(name)
        if user is None:
            return None
        self._user_ids.put(name, user.id)
        return user.id

    def _user_name(self, namespace: Sequence[str], *, prefix: bool) -> str:
        if self.user is not None:
            return self.user
        position = self.user_label
        assert position is not None
        label = namespace[position] if len(namespace) > position else None
        if label is None or label == "*":
            what = "a namespace prefix" if prefix else "a namespace"
            raise ValidationError(
                f"{what} must name the user at position {position} (this store reads the "
                f"user from it), got {tuple(namespace)!r}",
                field="namespace",
            )
        return label

    def _text(
        self, value: Mapping[str, Any], index: Sequence[str] | bool | None
    ) -> tuple[str, bool]:
        """The text embedded for a value, and whether the item is indexed at all."""
        whole = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if index is False:
            return whole, False
        fields = self.index_fields if index is None or index is True else tuple(index)
        texts: list[str] = []
        for field in fields:
            if field == WHOLE_VALUE:
                texts.append(whole)
            else:
                texts.extend(get_text_at_path(value, tokenize_path(field)))
        text = "\n".join(part for part in texts if part and part.strip())
        return (text, True) if text else (whole, False)


def _item(row: KnowledgeRow) -> Item:
    return Item(
        value=row.value if isinstance(row.value, dict) else {},
        key=row.key or str(row.id),
        namespace=row.namespace,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _search_item(row: KnowledgeRow, score: float | None) -> SearchItem:
    return SearchItem(
        namespace=row.namespace,
        key=row.key or str(row.id),
        value=row.value if isinstance(row.value, dict) else {},
        created_at=row.created_at,
        updated_at=row.updated_at,
        score=score,
    )


def _user_path(conditions: Sequence[MatchCondition] | None) -> tuple[str, ...]:
    """The labels a listing's prefix conditions pin down (``*`` where they do not)."""
    path: list[str] = []
    for condition in conditions or ():
        if condition.match_type != "prefix":
            continue
        for position, label in enumerate(condition.path):
            if position >= len(path):
                path.append(label)
            elif path[position] == "*":
                path[position] = label
    return tuple(path)


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    labels = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    if not path:
        return True
    return all(wanted in ("*", label) for wanted, label in zip(path, labels, strict=True))
