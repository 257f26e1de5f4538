"""Hybrid search SQL: ranked lists per layer and method, fused by reciprocal rank in one query.

Every list is a materialized CTE of one table (messages = M0, episodes = M1, facts = M2,
knowledge) and one method: vector KNN on the HNSW index (``embedding <=> :query_vector``) or
full text over the ``content_tsv`` column (a message not indexed yet is read on the fly).
Each is bound to ``user_id`` first, then the optional agent, session and time filters.
Reciprocal rank fusion gives an item ``1 / (rrf_k + rank)`` per list that ranked it.

Full text ranks by all of the query's terms: ``websearch_to_tsquery`` parses the query (quoted
phrases stay phrases) and its ``&`` become ``|``; rows with more (and rarer-in-them) terms rank
higher. Questions rarely have every term in one turn: an AND query finds a turn for about one
LoCoMo question in ten (docs/retrieval.md). Which rows a list ranks is bounded by the
common-terms rule and the term budget (:func:`_query_terms`), both from the statistics
``ANALYZE`` keeps (:class:`TermStatistics`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.pool import PoolProxiedConnection

from memfuse.config.urls import ASYNCPG_DIALECT
from memfuse.db.models import (
    MESSAGE_TSVECTOR,
    TEXT_SEARCH_CONFIG,
    message_user_words,
    user_word,
)
from memfuse.db.value_filter import value_filter_sql
from memfuse.monitor.engine_hooks import QUERY_OPERATION
from memfuse.monitor.performance import PerformanceMonitor
from memfuse.types import Layer, Method, Unit

LAYER_TABLES: Final[dict[Layer, str]] = {
    "m0": "messages",
    "m1": "episodes",
    "m2": "facts",
    "knowledge": "knowledge",
}
_LINEAGE: Final[dict[Layer, str]] = {
    "m0": "ARRAY[id]",
    "m1": "message_ids",
    "m2": "message_ids",
    "knowledge": "ARRAY[]::uuid[]",
}
_TIME_FROM: Final[dict[Layer, str]] = {
    "m0": "created_at",
    "m1": "ended_at",
    "m2": "valid_from",
    "knowledge": "created_at",
}
_TIME_UNTIL: Final[dict[Layer, str]] = {
    "m0": "created_at",
    "m1": "started_at",
    "m2": "valid_from",
    "knowledge": "created_at",
}
USER_LEVEL: Final[frozenset[Layer]] = frozenset({"knowledge"})
"""Layers that belong to the user, not to an agent or a session: the agent and session filters
do not narrow them (a stated fact about the user holds in every session)."""

TEXT_RANK = "ts_rank(content_tsv, q.query, 1)"
"""How full-text matches are ordered within their list: ``ts_rank`` with its length
normalization 1 (rank / (1 + log(length))). On the LoCoMo development split it gave recall@1000
0.806 where ``ts_rank_cd`` gave 0.794 (docs/retrieval.md)."""

_QUOTED = r"'''' || replace(replace({value}, E'\\', E'\\\\'), '''', '''''') || ''''"
"""A lexeme (``{value}``, SQL text) as a tsquery operand, taken as it is (not parsed or stemmed
again): quoted, with its quotes and backslashes doubled."""
_QUOTED_LEXEME = _QUOTED.format(value="lexeme")


def _query_terms(schema: str, layers: Sequence[Layer], *, bounded: bool) -> str:
    """The CTE ``query_terms`` for the full-text lists of ``layers``: one row with the query as
    a tsquery (``query``, its terms OR'ed: what ranking reads), when ``bounded`` each layer's
    match (``{layer}_match``), and with M0 its match as the user's word keys (``m0_words``,
    :func:`_message_text_list`).

    A layer's match says which rows its full-text list ranks: rows with any of the query's
    admitted terms; when none is admitted (every term is common), rows with all of them.
    ``:{layer}_common`` holds the layer's common terms and ``:{layer}_sized`` the rows
    ``ANALYZE`` estimates for its other tracked terms (:class:`TermStatistics`).

    - Common terms are never admitted: ranking still reads every term, so they order the rows
      other terms admit without making each row that has one of them a candidate
      (Elasticsearch's "common terms" rule).
    - The other terms are admitted rarest first while their estimated rows, added up, stay
      within ``:term_budget``; a term no rarer term with rows comes before always is, so the
      rarest term and every term too rare to be tracked always count. A question of many
      mid-frequency terms ranks the rows of its rarest ones, not thousands of rows.

    Not ``bounded`` (no statistics known), a list matches the plain OR of the terms. Every
    layer's match comes from one pass over the terms in this one CTE: a subquery per layer
    cost the planner more than the matching.
    """
    parsed = f"""SELECT NULLIF(
            replace(websearch_to_tsquery('{TEXT_SEARCH_CONFIG}', :query_text)::text, ' & ', ' | '),
            ''
        )::tsquery AS query,
        tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', :query_text)) AS lexemes"""
    key = _QUOTED.format(value=user_word(schema, "lexeme", "CAST(:user_id AS uuid)"))
    words = "m0" in layers
    if not bounded and not words:
        return f"""query_terms AS (
    {parsed}
)"""
    if not bounded:
        return f"""query_terms AS (
    SELECT q.query, t.m0_words
    FROM ({parsed}) AS q
    CROSS JOIN LATERAL (
        SELECT string_agg({key}, ' | ')::tsquery AS m0_words
        FROM unnest(q.lexemes) AS lexeme
    ) AS t
)"""
    every = f"string_agg({_QUOTED_LEXEME}, ' & ')::tsquery AS every"
    columns = [(layer, _QUOTED_LEXEME, f"{layer}_rare") for layer in layers]
    matches = [f"coalesce(t.{layer}_rare, t.every) AS {layer}_match" for layer in layers]
    if words:
        every += f", string_agg({key}, ' & ')::tsquery AS every_words"
        columns.append(("m0", key, "m0_rare_words"))
        matches.append("coalesce(t.m0_rare_words, t.every_words) AS m0_words")
    admitted = "".join(
        f""",
        (string_agg({quoted}, ' | ') FILTER (
            WHERE {layer}_rows IS NOT NULL
              AND ({layer}_running <= :term_budget OR {layer}_running = {layer}_rows)
        ))::tsquery AS {name}"""
        for layer, quoted, name in columns
    )
    sized = ", ".join(
        f"""CASE WHEN lexeme = ANY (string_to_array(CAST(:{layer}_common AS text), ' '))
                THEN NULL ELSE {_estimated_rows(f"CAST(:{layer}_sized AS text)")} END
                AS {layer}_rows"""
        for layer in layers
    )
    running = ", ".join(
        f"""{layer}_rows,
                sum({layer}_rows) OVER (ORDER BY {layer}_rows, lexeme ROWS UNBOUNDED PRECEDING)
                AS {layer}_running"""
        for layer in layers
    )
    # OFFSET 0 keeps the sizes a subquery of their own: pulled up, each reference to a size
    # (the window's order, its sum, the filter) would look it up again.
    return f"""query_terms AS (
    SELECT q.query, {", ".join(matches)}
    FROM ({parsed}) AS q
    CROSS JOIN LATERAL (
        SELECT {every}{admitted}
        FROM (
            SELECT lexeme, {running}
            FROM (
                SELECT lexeme, {sized}
                FROM unnest(q.lexemes) AS lexeme
                OFFSET 0
            ) AS sized
        ) AS running
    ) AS t
)"""


def _estimated_rows(sized: str) -> str:
    """SQL: the rows ``sized`` (:attr:`TermStatistics.sized`, SQL text) gives ``lexeme``, 0 when
    it holds none. Its entries are two spaces apart and a lexeme never holds a space, so
    ``'  ' || lexeme || ' '`` finds exactly that lexeme's entry."""
    found = f"nullif(strpos({sized}, '  ' || lexeme || ' '), 0)"
    start = f"{found} + length(lexeme) + 3"
    return f"coalesce(split_part(substr({sized}, {start}, 24), ' ', 1)::bigint, 0)"


def _message_text_list(
    filters: SearchFilters, table: str, source: str, schema: str, match: str, *, bounded: bool
) -> str:
    """The M0 full-text rows: the indexed rows with the query's words, found by their user's
    word keys (``q.m0_words`` on ``ix_messages_user_words_gin``: a GIN scan of this user's
    posting lists only), and the rows not indexed yet, their words read on the fly (few:
    ``ix_messages_text_unindexed`` finds them by user; the embedding worker indexes a message
    when it stores its vector).

    The first part repeats its index's predicate (``content_tsv IS NOT NULL``) so the planner
    can use it, and keeps the user condition as a filter only: as an index condition the
    planner ANDs a bitmap of all the user's rows into the scan, which cost more than the list.
    When ``bounded``, ``m0_words`` holds the terms of ``match``; otherwise ``match`` is the
    parsed query (phrases, negations) and also filters the rows the keys found.
    """
    exact = "" if bounded else f" AND content_tsv @@ {match}"
    unindexed_rank = TEXT_RANK.replace("content_tsv", MESSAGE_TSVECTOR)
    return f"""SELECT * FROM (
    SELECT id, ARRAY[id] AS message_ids, {TEXT_RANK} AS rank
    FROM {table}, {source}
    WHERE {filters.where("m0", "t", schema, user_index=False)}
      AND {message_user_words(schema)} @@ q.m0_words AND content_tsv IS NOT NULL{exact}
    UNION ALL
    SELECT id, ARRAY[id] AS message_ids, {unindexed_rank} AS rank
    FROM {table}, {source}
    WHERE {filters.where("m0", "t", schema)} AND content_tsv IS NULL
      AND {MESSAGE_TSVECTOR} @@ {match}
    ) AS found"""


_TRACKED_TERMS = """SELECT s.tablename, c.reltuples, u.element, u.frequency
FROM pg_stats AS s
JOIN pg_class AS c ON c.oid = format('%I.%I', s.schemaname, s.tablename)::regclass,
     unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS u(element, frequency)
WHERE s.schemaname = :schema AND s.tablename = ANY (:tables) AND s.attname = 'content_tsv'
  AND u.element IS NOT NULL"""


@dataclass(frozen=True, slots=True)
class TermStatistics:
    """What ``ANALYZE`` says of one layer's full-text terms, as the search statement reads it.

    ``ANALYZE`` tracks a table's most common lexemes (``pg_stats.most_common_elems``, about a
    thousand) with the share of rows holding each; the estimates are for the whole table, all
    users together. A lexeme it does not track is rarer than every one it does.
    """

    common: str = ""
    """The common terms, space-separated (lexemes never hold a space): one text, not an
    array, since encoding a thousand-element array per search cost more than its rows."""
    sized: str = ""
    """Every other tracked term with its estimated rows, as ``'  lexeme rows  lexeme rows  '``
    (:func:`_estimated_rows` reads it)."""

    @classmethod
    def of(cls, common: Sequence[str], sized: Mapping[str, int]) -> TermStatistics:
        """From the common terms and the others' rows. A lexeme with white space (only a
        hand-written tsvector holds one, never ``to_tsvector``) is left out: it could not be
        told from its neighbours in the texts."""
        pairs = "".join(f"  {term} {rows}" for term, rows in sized.items() if _one_word(term))
        return cls(" ".join(filter(_one_word, common)), f"{pairs}  " if pairs else "")

    @property
    def common_terms(self) -> tuple[str, ...]:
        """The common terms, one by one."""
        return tuple(self.common.split())


def _one_word(lexeme: str) -> bool:
    return bool(lexeme) and not any(character.isspace() for character in lexeme)


_SEARCH_SETTINGS = (
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', false), "
    "set_config('hnsw.ef_search', $1, false), "
    "set_config('hnsw.iterative_scan', 'relaxed_order', false)"
)
_SETTINGS_APPLIED = "memfuse.search_ef_search"
"""Key in a pooled connection's ``info``: the ``ef_search`` its session settings were set to."""


_RANKS = ", jsonb_object_agg(list, r) AS ranks"
"""With ``explain``: each fused row's rank in every list that ranked it."""


@functools.lru_cache(maxsize=256)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its ``:name`` parameters as asyncpg's ``$n``, and the names in ``$n``
    order: what SQLAlchemy's asyncpg dialect sends for ``text(sql)``, worked out once per
    distinct statement (the options a search uses)."""
    compiled = text(sql).compile(dialect=ASYNCPG_DIALECT)
    return compiled.string, tuple(compiled.positiontup or ())


def fact_group_embedded(alias: str, schema: str) -> str:
    """SQL: the fact ``alias`` is embedded (its group's vector is stored; a fact has none of
    its own, see :class:`~memfuse.db.models.FactGroup`)."""
    return (
        f'EXISTS (SELECT 1 FROM "{schema}".fact_groups AS fg '
        f"WHERE fg.session_id = {alias}.session_id AND fg.group_no = {alias}.group_no)"
    )


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Who and what a search may see: always one user, optionally narrower."""

    user_id: uuid.UUID
    agent_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    embedded_only: bool = False
    knowledge_namespace: tuple[str, ...] = ()
    """Knowledge items under this namespace prefix only."""
    knowledge_filter: str | None = None
    """Knowledge items whose value matches these conditions (JSON of a
    :func:`~memfuse.db.value_filter.value_filter_sql` filter)."""

    def where(self, layer: Layer, alias: str, schema: str, *, user_index: bool = True) -> str:
        """SQL conditions for rows of ``layer`` (columns prefixed with ``alias.``).

        Not ``user_index``: the user condition is written so that the planner cannot make an
        index scan of it (it filters the rows another index found, which also bounds them to
        the user: :func:`~memfuse.db.models.message_user_words`).
        """
        p = f"{alias}."
        user = f"{p}user_id = :user_id"
        conditions = [user if user_index else f"({user}) IS TRUE"]
        if self.agent_id is not None and layer not in USER_LEVEL:
            conditions.append(f"{p}agent_id = :agent_id")
        if self.session_id is not None and layer not in USER_LEVEL:
            conditions.append(f"{p}session_id = :session_id")
        if self.since is not None:
            conditions.append(f"{p}{_TIME_FROM[layer]} >= :since")
        if self.until is not None:
            conditions.append(f"{p}{_TIME_UNTIL[layer]} < :until")
        if self.embedded_only:
            conditions.append(
                fact_group_embedded(alias, schema) if layer == "m2" else f"{p}embedding IS NOT NULL"
            )
        if layer == "m2":
            conditions.append(f"{p}valid_to IS NULL")
        if layer == "knowledge":
            conditions.append(f"({p}expires_at IS NULL OR {p}expires_at > now())")
            if self.knowledge_namespace:
                depth = len(self.knowledge_namespace)
                conditions.append(f"{p}namespace[1:{depth}] = CAST(:knowledge_namespace AS text[])")
            if self.knowledge_filter is not None:
                conditions.append(self._value_filter(f"{p}value")[0])
        return " AND ".join(conditions)

    def shape(self) -> SearchFilters:
        """These filters with every value but the ones that change the SQL replaced by one
        stand-in: the key of :func:`search_sql`'s cache. The knowledge filter stays as it is
        (its structure is SQL)."""
        return SearchFilters(
            user_id=_SHAPE_ID,
            agent_id=None if self.agent_id is None else _SHAPE_ID,
            session_id=None if self.session_id is None else _SHAPE_ID,
            since=None if self.since is None else _SHAPE_TIME,
            until=None if self.until is None else _SHAPE_TIME,
            embedded_only=self.embedded_only,
            knowledge_namespace=("",) * len(self.knowledge_namespace),
            knowledge_filter=self.knowledge_filter,
        )

    def _value_filter(self, column: str) -> tuple[str, dict[str, Any]]:
        return value_filter_sql(
            json.loads(self.knowledge_filter or "{}"), column=column, prefix="knowledge_filter"
        )

    def parameters(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "since": self.since,
            "until": self.until,
        }
        if self.knowledge_namespace:
            values["knowledge_namespace"] = list(self.knowledge_namespace)
        if self.knowledge_filter is not None:
            values.update(self._value_filter("value")[1])
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ScoredRow:
    """One fused result as the database returns it."""

    layer: Layer
    id: uuid.UUID
    score: float
    content: str
    session_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    occurred_at: datetime
    message_ids: tuple[uuid.UUID, ...]
    token_count: int | None
    speaker: str | None
    embedded: bool
    role: str | None
    ranks: dict[str, int] | None = None
    """With ``explain``: the item's rank in each list that ranked it (``"m0_vector": 3``)."""


@dataclass(frozen=True, slots=True)
class SearchFound:
    """What one search statement found: its rows and, for the layers it was asked to watch,
    which of them hold rows of the user (``None`` when no row came back to say it)."""

    rows: list[ScoredRow]
    held: frozenset[Layer] | None = None


_NO_STATISTICS = TermStatistics()
_UNBOUNDED = 2**62
"""``term_budget`` when there is none: more rows than a table holds."""

_SCORED_COLUMNS = 12
"""The columns of :class:`ScoredRow` that every fused select lists first, in its order."""


class SearchRepository:
    """Runs the fused search of one user's memory in one statement.

    It works on a pooled connection's asyncpg connection directly
    (:func:`~memfuse.db.engines.pooled_driver`): a search is one read-only statement, and
    SQLAlchemy's session and execution layer around it cost about 2 ms of client time per
    search, a fifth of the whole at 10k rows (docs/benchmarks.md). Each statement is timed as
    ``db_query`` here, as the engine's hooks time the statements they see.
    """

    def __init__(
        self,
        connection: PoolProxiedConnection,
        schema: str,
        monitor: PerformanceMonitor | None = None,
    ) -> None:
        self.connection = connection
        self.schema = schema
        self._monitor = monitor

    async def _fetch(self, sql: str, *arguments: Any) -> list[Any]:
        driver: Any = self.connection.driver_connection  # an asyncpg connection
        timer = (
            self._monitor.track_operation(QUERY_OPERATION)
            if self._monitor is not None
            else contextlib.nullcontext()
        )
        with timer:
            rows: list[Any] = await driver.fetch(sql, *arguments)
        return rows

    async def analyze(self) -> None:
        """Refresh the planner statistics of the layers' tables (``ANALYZE``): the full-text
        lists read which terms are common from them."""
        quoted = self.schema.replace('"', '""')
        for table in LAYER_TABLES.values():
            await self._fetch(f'ANALYZE "{quoted}".{table}')

    async def layers_with_rows(
        self, user_id: uuid.UUID, layers: Sequence[Layer]
    ) -> frozenset[Layer]:
        """Which of ``layers`` hold at least one row of the user (one statement of index
        probes, ``user_id`` leads an index of every layer's table)."""
        if not layers:
            return frozenset()
        quoted = self.schema.replace('"', '""')
        probes = ", ".join(
            f'EXISTS (SELECT 1 FROM "{quoted}".{LAYER_TABLES[layer]} WHERE user_id = $1)'
            for layer in layers
        )
        found = await self._fetch(f"SELECT {probes}", user_id)
        return frozenset(layer for layer, held in zip(layers, found[0], strict=True) if held)

    async def term_statistics(self, frequency: float, rows: int) -> dict[Layer, TermStatistics]:
        """Each layer's :class:`TermStatistics`, from the statistics ``ANALYZE`` keeps
        (``pg_stats.most_common_elems`` and the table's row estimate); a term is common in at
        least ``frequency`` of the rows or in at least ``rows`` rows. Empty before the first
        ``ANALYZE``."""
        sql, names = positional(_TRACKED_TERMS)
        values = {"schema": self.schema, "tables": list(LAYER_TABLES.values())}
        common: dict[str, list[str]] = {}
        sized: dict[str, dict[str, int]] = {}
        for row in await self._fetch(sql, *(values[name] for name in names)):
            estimate = round(row["frequency"] * max(row["reltuples"], 0.0))
            if row["frequency"] >= frequency or estimate >= rows:
                common.setdefault(row["tablename"], []).append(row["element"])
            else:
                sized.setdefault(row["tablename"], {})[row["element"]] = estimate
        return {
            layer: TermStatistics.of(common.get(table, ()), sized.get(table, {}))
            for layer, table in LAYER_TABLES.items()
        }

    async def tune(self, ef_search: int) -> None:
        """Set up the connection for searching, once per pooled connection (again only if
        ``ef_search`` differs). A search is one statement outside any transaction (a snapshot
        of its own: no BEGIN, no ROLLBACK). The session settings are:

        - always a custom plan: asyncpg prepares the statement once per connection, and after
          five runs PostgreSQL may switch to a generic plan that knows neither the user nor the
          query's terms; on LoCoMo that made searches 2.5 times slower (docs/retrieval.md).
          The setting applies to every statement on memfuse's pooled connections; planning a
          small statement costs tens of microseconds;
        - HNSW's ``ef_search`` and iterative scans, so a user-filtered KNN does not starve.
        """
        info = self.connection.info
        if info.get(_SETTINGS_APPLIED) != ef_search:
            await self._fetch(_SEARCH_SETTINGS, str(ef_search))
            info[_SETTINGS_APPLIED] = ef_search

    def statement(
        self,
        filters: SearchFilters,
        *,
        unit: Unit,
        query_text: str,
        query_vector: Sequence[float] | None,
        layers: Sequence[Layer],
        methods: Sequence[Method],
        candidates: int,
        rrf_k: int,
        limit: int,
        vector_candidates: int | None = None,
        terms: Mapping[Layer, TermStatistics] | None = None,
        term_budget: int | None = None,
        explain: bool = False,
        watch: Sequence[Layer] = (),
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The search's SQL (asyncpg's ``$n`` placeholders) and its arguments; ``None`` when
        no list is left to rank. :meth:`search` says what it finds."""
        if "text" not in methods:
            terms = None
        sql = search_sql(
            self.schema,
            filters.shape(),
            unit=unit,
            layers=tuple(layers),
            methods=tuple(methods),
            vector=query_vector is not None,
            bounded=terms is not None,
            explain=explain,
            watch=tuple(watch),
        )
        if sql is None:
            return None
        parameters: dict[str, Any] = {
            **filters.parameters(),
            "query_text": query_text,
            "candidates": candidates,
            "vector_candidates": candidates if vector_candidates is None else vector_candidates,
            "rrf_k": rrf_k,
            "limit": limit,
        }
        if terms is not None:
            for layer in layers:
                statistics = terms.get(layer, _NO_STATISTICS)
                parameters[f"{layer}_common"] = statistics.common
                parameters[f"{layer}_sized"] = statistics.sized
            parameters["term_budget"] = _UNBOUNDED if term_budget is None else term_budget
        if query_vector is not None:
            parameters["query_vector"] = list(query_vector)
        return sql[0], tuple(parameters[name] for name in sql[1])

    async def search(
        self,
        filters: SearchFilters,
        *,
        unit: Unit,
        query_text: str,
        query_vector: Sequence[float] | None,
        layers: Sequence[Layer],
        methods: Sequence[Method],
        candidates: int,
        rrf_k: int,
        limit: int,
        vector_candidates: int | None = None,
        terms: Mapping[Layer, TermStatistics] | None = None,
        term_budget: int | None = None,
        explain: bool = False,
        watch: Sequence[Layer] = (),
    ) -> SearchFound:
        """The best ``limit`` results of the fused lists, best first.

        ``unit="message"``: messages, ranked by every list; a list ranking an episode or a fact
        ranks the messages of its lineage (each message takes its best rank in each list).
        ``unit="item"``: the rows of the searched layers themselves.
        ``terms``: per layer, which terms only order the rows other terms find and how many
        rows the others hold; ``None`` ranks every row with any term. ``term_budget``: the
        rows of rarer terms after which an uncommon term no longer admits rows (``None``:
        no bound; :func:`_query_terms`). Each full-text list ranks ``candidates`` rows, each
        vector list ``vector_candidates`` (``candidates`` if ``None``).
        ``watch``: layers left out of the search; every row also says which of them hold rows
        of the user (``SearchFound.held``), read in the statement's own snapshot, so a caller
        learns of a layer's first rows without a round trip of its own.
        """
        statement = self.statement(
            filters,
            unit=unit,
            query_text=query_text,
            query_vector=query_vector,
            layers=layers,
            methods=methods,
            candidates=candidates,
            rrf_k=rrf_k,
            limit=limit,
            vector_candidates=vector_candidates,
            terms=terms,
            term_budget=term_budget,
            explain=explain,
            watch=watch,
        )
        if statement is None:
            return SearchFound([])
        found = await self._fetch(statement[0], *statement[1])
        rows = [_scored(row, explain=explain) for row in found]
        if not watch or not found:
            return SearchFound(rows)
        return SearchFound(rows, frozenset(found[0]["held"]))


def _scored(row: Any, *, explain: bool) -> ScoredRow:
    """A fused row as a :class:`ScoredRow` (its first columns, then ``ranks`` when explained)."""
    (
        layer,
        id_,
        score,
        content,
        session_id,
        agent_id,
        occurred_at,
        message_ids,
        token_count,
        speaker,
        embedded,
        role,
    ) = row[:_SCORED_COLUMNS]
    return ScoredRow(
        layer,
        id_,
        float(score),
        content,
        session_id,
        agent_id,
        occurred_at,
        tuple(message_ids),
        token_count,
        speaker,
        embedded,
        role,
        dict(row["ranks"]) if explain else None,
    )


_SHAPE_ID = uuid.UUID(int=0)
_SHAPE_TIME = datetime(2000, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=256)
def search_sql(
    schema: str,
    shape: SearchFilters,
    *,
    unit: Unit,
    layers: tuple[Layer, ...],
    methods: tuple[Method, ...],
    vector: bool,
    bounded: bool,
    explain: bool,
    watch: tuple[Layer, ...] = (),
) -> tuple[str, tuple[str, ...]] | None:
    """The search statement for these options (asyncpg's ``$n`` placeholders) and its
    parameters' names in ``$n`` order; ``None`` when no list is left to rank. With ``watch``,
    each row's last column ``held`` names the watched layers holding rows of the user.

    It depends on which filters are set, not on their values (``SearchFilters.shape``), so a
    process builds each distinct statement once.
    """
    builder = _SearchSql(schema)
    ctes, ranked = builder.lists(shape, vector, layers, methods, bounded=bounded)
    if not ranked:
        return None
    held = builder.held(watch)
    fused = (
        builder.messages(shape, knowledge="knowledge" in layers, explain=explain, held=held)
        if unit == "message"
        else builder.items(explain=explain, held=held)
    )
    return positional(f"""
WITH {_query_terms(schema, layers if "text" in methods else (), bounded=bounded)},
{", ".join(ctes)},
ranked AS (
    {" UNION ALL ".join(ranked)}
),
{fused}""")


class _SearchSql:
    """The parts of the search statement, in one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def held(self, watch: Sequence[Layer]) -> str:
        """The column that names which of the ``watch`` layers hold rows of the user (index
        probes on ``user_id``, evaluated once per statement), or nothing."""
        if not watch:
            return ""
        probes = ", ".join(
            f'CASE WHEN EXISTS (SELECT 1 FROM "{self.schema}".{LAYER_TABLES[layer]} '
            f"WHERE user_id = :user_id) THEN '{layer}' END"
            for layer in watch
        )
        return f",\n       array_remove(ARRAY[{probes}], NULL) AS held"

    def messages(self, filters: SearchFilters, *, knowledge: bool, explain: bool, held: str) -> str:
        """Messages ranked by every list; with ``knowledge``, knowledge items beside them (they
        have no messages to rank), each scored by its own lists.

        Every list counts once, knowledge lists too. A knowledge item is ranked by its own
        layer only, so with few items one tops its vector list whatever the query (a layer of
        one item ranks it first); weighting its lists up made such an item outrank relevant
        messages (docs/retrieval.md).
        """
        ranks, message_ranks, ks_ranks, fused_ranks = (
            (_RANKS, ", scored.ranks", ", ks.ranks", ", ranks") if explain else ("", "", "", "")
        )
        messages = f"""SELECT 'm0' AS layer, m.id, scored.score, m.content, m.session_id,
       m.agent_id, m.created_at AS occurred_at, ARRAY[m.id] AS message_ids, m.token_count,
       m.name AS speaker, m.embedding IS NOT NULL AS embedded, m.role{message_ranks}"""
        scored = f"""per_message AS (
    SELECT message_id, list, min(r) AS r
    FROM ranked CROSS JOIN LATERAL unnest(ranked.message_ids) AS message_id
    GROUP BY message_id, list
),
scored AS (
    SELECT message_id, sum(1.0 / (:rrf_k + r)) AS score{ranks} FROM per_message
    GROUP BY message_id
)"""
        source = f"""FROM scored JOIN "{self.schema}".messages AS m ON m.id = scored.message_id
WHERE {filters.where("m0", "m", self.schema)}"""
        if not knowledge:
            return f"""{scored}
{messages}{held}
{source}
ORDER BY scored.score DESC, m.created_at, m.seq
LIMIT :limit"""
        return f"""{scored},
knowledge_scored AS (
    SELECT id, sum(1.0 / (:rrf_k + r)) AS score{ranks}
    FROM ranked WHERE layer = 'knowledge' GROUP BY id
),
fused AS (
    {messages}, m.seq
    {source}
    UNION ALL
    SELECT 'knowledge', k.id, ks.score, k.content, NULL::uuid, NULL::uuid, k.created_at,
           ARRAY[]::uuid[], NULL::integer, NULL::text, k.embedding IS NOT NULL,
           NULL::text{ks_ranks}, 0::bigint
    FROM knowledge_scored AS ks JOIN "{self.schema}".knowledge AS k ON k.id = ks.id
)
SELECT layer, id, score, content, session_id, agent_id, occurred_at, message_ids, token_count,
       speaker, embedded, role{fused_ranks}{held}
FROM fused
ORDER BY score DESC, occurred_at, seq, id
LIMIT :limit"""

    def items(self, *, explain: bool, held: str) -> str:
        s = self.schema
        ranks = _RANKS if explain else ""
        selected_ranks = ",\n       scored.ranks" if explain else ""
        return f"""scored AS (
    SELECT layer, id, sum(1.0 / (:rrf_k + r)) AS score{ranks}
    FROM ranked GROUP BY layer, id
    ORDER BY score DESC, layer, id
    LIMIT :limit
)
SELECT scored.layer, scored.id, scored.score,
       coalesce(m.content, e.content, f.content, k.content) AS content,
       coalesce(m.session_id, e.session_id, f.session_id) AS session_id,
       coalesce(m.agent_id, e.agent_id, f.agent_id) AS agent_id,
       coalesce(m.created_at, e.started_at, f.valid_from, k.created_at) AS occurred_at,
       CASE scored.layer WHEN 'm0' THEN ARRAY[m.id] WHEN 'm1' THEN e.message_ids
            WHEN 'm2' THEN f.message_ids ELSE ARRAY[]::uuid[] END AS message_ids,
       coalesce(m.token_count, e.token_count) AS token_count,
       m.name AS speaker,
       CASE scored.layer WHEN 'm2' THEN {fact_group_embedded("f", s)}
            ELSE coalesce(m.embedding, e.embedding, k.embedding) IS NOT NULL END AS embedded,
       m.role{selected_ranks}{held}
FROM scored
LEFT JOIN "{s}".messages AS m ON scored.layer = 'm0' AND m.id = scored.id
LEFT JOIN "{s}".episodes AS e ON scored.layer = 'm1' AND e.id = scored.id
LEFT JOIN "{s}".facts AS f ON scored.layer = 'm2' AND f.id = scored.id
LEFT JOIN "{s}".knowledge AS k ON scored.layer = 'knowledge' AND k.id = scored.id
ORDER BY scored.score DESC, scored.layer, scored.id"""

    def fact_vector_list(self, filters: SearchFilters) -> str:
        """The M2 vector list: the nearest fact groups (one vector each, on their HNSW index),
        then their live facts, each at its group's distance.

        The groups are narrowed by user, agent and session inside the index scan; the facts'
        own conditions (live, time) apply to the facts of the nearest groups.
        """
        s = self.schema
        group_where = ["g.user_id = :user_id"]
        if filters.agent_id is not None:
            group_where.append("g.agent_id = :agent_id")
        if filters.session_id is not None:
            group_where.append("g.session_id = :session_id")
        fact_where = replace(filters, embedded_only=False).where("m2", "t", s)
        return f"""m2_vector AS MATERIALIZED (
    SELECT t.id, t.message_ids, nearest.distance
    FROM (
        SELECT g.session_id, g.group_no, g.embedding <=> :query_vector AS distance
        FROM "{s}".fact_groups AS g
        WHERE {" AND ".join(group_where)}
        ORDER BY distance
        LIMIT :vector_candidates
    ) AS nearest
    JOIN "{s}".facts AS t
      ON t.session_id = nearest.session_id AND t.group_no = nearest.group_no
    WHERE {fact_where}
    ORDER BY nearest.distance, t.id
    LIMIT :vector_candidates
)"""

    def lists(
        self,
        filters: SearchFilters,
        vector: bool,
        layers: Sequence[Layer],
        methods: Sequence[Method],
        *,
        bounded: bool,
    ) -> tuple[list[str], list[str]]:
        """The CTE of each list and its ranked rows ``(list, layer, id, message_ids, r)``."""
        ctes: list[str] = []
        ranked: list[str] = []
        for layer in layers:
            table = f'"{self.schema}".{LAYER_TABLES[layer]} AS t'
            where = filters.where(layer, "t", self.schema)
            lineage = _LINEAGE[layer]
            if "vector" in methods and vector:
                name = f"{layer}_vector"
                if layer == "m2":
                    ctes.append(self.fact_vector_list(filters))
                else:
                    ctes.append(f"""{name} AS MATERIALIZED (
    SELECT id, {lineage} AS message_ids, embedding <=> :query_vector AS distance
    FROM {table}
    WHERE {where} AND embedding IS NOT NULL
    ORDER BY distance
    LIMIT :vector_candidates
)""")
                ranked.append(
                    f"SELECT '{name}' AS list, '{layer}' AS layer, id, message_ids, "
                    f"row_number() OVER (ORDER BY distance, id) AS r FROM {name}"
                )
            if "text" in methods:
                name = f"{layer}_text"
                match = f"q.{layer}_match" if bounded else "q.query"
                source = "query_terms AS q"
                if layer == "m0":
                    found = _message_text_list(
                        filters, table, source, self.schema, match, bounded=bounded
                    )
                else:
                    found = f"""SELECT id, {lineage} AS message_ids, {TEXT_RANK} AS rank
    FROM {table}, {source}
    WHERE {where} AND content_tsv @@ {match}"""
                ctes.append(f"""{name} AS MATERIALIZED (
    {found}
    ORDER BY rank DESC, id
    LIMIT :candidates
)""")
                ranked.append(
                    f"SELECT '{name}' AS list, '{layer}' AS layer, id, message_ids, "
                    f"row_number() OVER (ORDER BY rank DESC, id) AS r FROM {name}"
                )
        return ctes, ranked
