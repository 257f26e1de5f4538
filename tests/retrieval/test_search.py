"""``Memory.query`` against a real PostgreSQL and the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import parts
import pytest
from sqlalchemy import text

from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.engines import pooled_driver
from memfuse.errors import ValidationError
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.search import SearchFilters, SearchFound, SearchRepository
from memfuse.retrieval.service import list_depth
from memfuse.types import SearchResult, Unit

DAY = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def turn(name: str, content: str, day: int = 0) -> dict[str, object]:
    return {
        "role": "user",
        "name": name,
        "content": content,
        "created_at": DAY + timedelta(days=day),
    }


ANA_TURNS = [
    turn("Ana", "I booked the flight to Lisbon for May 3rd.", 0),
    turn("Ana", "My sister Joana lives in Porto and teaches piano.", 1),
    turn("Ana", "I started learning to sail last summer.", 2),
]
BEN_TURNS = [
    turn("Ben", "I booked the flight to Lisbon for May 9th.", 0),
    turn("Ben", "My brother lives in Porto and teaches guitar.", 1),
    turn("Ben", "I started learning to surf last summer.", 2),
]


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, embedder="local", search_cache_ttl=60.0) as mf:
        yield mf


async def memories(mf: MemFuse) -> tuple[Memory, Memory]:
    ana = await mf.init("ana", session="trip")
    ben = await mf.init("ben", session="trip")
    await ana.add(ANA_TURNS)
    await ben.add(BEN_TURNS)
    await mf.flush()
    return ana, ben


def texts(results: list[SearchResult]) -> list[str]:
    return [result.content for result in results]


def layers(results: list[SearchResult]) -> set[str]:
    return {result.layer for result in results}


@pytest.mark.model
async def test_every_layer_method_and_unit_returns_only_the_callers_rows(mf: MemFuse) -> None:
    ana, ben = await memories(mf)
    ana_messages = {m.id for m in await ana.list_messages(all_sessions=True)}
    ana_rows = (
        ana_messages
        | {e.id for e in await ana.list_episodes(all_sessions=True)}
        | {f.id for f in await ana.list_facts(all_sessions=True)}
    )
    layer_sets = [("m0",), ("m1",), ("m2",), ("m0", "m1", "m2")]
    method_sets = [("vector",), ("text",), ("vector", "text")]
    for layers, methods, unit in itertools.product(layer_sets, method_sets, ("message", "item")):
        for question in ("Lisbon flight", "who lives in Porto", "learning last summer"):
            results = await ana.query(question, top_k=50, layers=layers, methods=methods, unit=unit)
            assert results, (layers, methods, unit, question)
            for result in results:
                assert result.id in ana_rows, (layers, methods, unit, result)
                assert set(result.message_ids) <= ana_messages
                assert "Ben" not in result.content and "brother" not in result.content
    assert texts(await ben.query("Lisbon flight", top_k=1)) == [BEN_TURNS[0]["content"]]


@pytest.mark.model
async def test_results_carry_layer_lineage_time_and_scope(mf: MemFuse) -> None:
    ana, _ = await memories(mf)
    [best] = await ana.query("When is the Lisbon flight?", top_k=1)
    assert best.layer == "m0" and best.content == ANA_TURNS[0]["content"]
    assert best.message_ids == (best.id,) and best.speaker == "Ana"
    assert best.created_at == DAY and best.session_id == ana.scope.session_id
    assert best.agent_id == ana.scope.agent_id and best.embedded and best.score > 0
    [episode] = await ana.query("Joana teaches piano in Porto", top_k=1, layers=["m1"], unit="item")
    assert episode.layer == "m1", "a day apart, each turn starts an episode of its own"
    assert episode.content == "Ana: My sister Joana lives in Porto and teaches piano."
    facts = await ana.query("Joana teaches piano in Porto", layers=["m2"], unit="item")
    assert facts and all(f.layer == "m2" and len(f.message_ids) == 1 for f in facts)
    items = await ana.query("Joana teaches piano in Porto", top_k=10, unit="item")
    covered: set[uuid.UUID] = set()
    for item in items:
        assert not covered.issuperset(item.message_ids), "rows already covered are dropped"
        covered.update(item.message_ids)
    assert episode.id not in {item.id for item in items}, "its turn ranks above it"


@pytest.mark.model
async def test_facts_are_found_through_their_groups_vector_within_every_filter(
    mf: MemFuse,
) -> None:
    """Facts have no vectors of their own: the M2 vector list ranks the nearest fact groups,
    then their live facts. Scope (user, session, agent) narrows the groups, time the facts."""
    ana, ben = await memories(mf)
    other = await mf.init("ana", session="home")
    await other.add([turn("Ana", "My sister Joana moved from Porto to Braga.", 30)])
    await mf.flush()
    facts = await ana.list_facts(all_sessions=True, include_superseded=True)
    live = {fact.id: fact for fact in facts if fact.valid_to is None}
    assert facts and all(fact.embedded for fact in facts), "every group's vector is stored"

    async def vector_facts(
        session: str | None = None, since: datetime | None = None
    ) -> list[SearchResult]:
        return await ana.query(
            "Where does Joana live?",
            top_k=50,
            layers=["m2"],
            methods=["vector"],
            unit="item",
            session=session,
            since=since,
        )

    found = await vector_facts()
    assert found and {result.id for result in found} <= set(live), "live facts of Ana only"
    assert all(result.embedded for result in found)
    assert {result.session_id for result in found} == {ana.scope.session_id, other.scope.session_id}
    in_trip = await vector_facts(session="trip")
    assert in_trip and {result.session_id for result in in_trip} == {ana.scope.session_id}
    later = await vector_facts(since=DAY + timedelta(days=10))
    assert later and all(live[result.id].valid_from >= DAY + timedelta(days=10) for result in later)
    ben_found = await ben.query(
        "Where does Joana live?", layers=["m2"], methods=["vector"], unit="item"
    )
    assert ben_found and not {result.id for result in ben_found} & {fact.id for fact in facts}


@pytest.mark.model
async def test_a_row_is_found_by_full_text_at_once_and_by_vector_once_embedded(
    database_url: str,
) -> None:
    async with MemFuse(database_url, embedder="local", worker_enabled=False) as mf:
        ana = await mf.init("ana")
        await ana.add([turn("Ana", "The quarterly garden fair moved to Thursday.")])
        found = await ana.query("garden fair")
        assert texts(found) == ["The quarterly garden fair moved to Thursday."]
        assert not found[0].embedded
        assert await ana.query("garden fair", include_unembedded=False) == []
        assert await ana.query("garden fair", methods=["vector"]) == []
    async with MemFuse(database_url, embedder="local") as mf:
        ana = await mf.init("ana")
        await mf.flush()
        [found_by_vector] = await ana.query("flower show", methods=["vector"], layers=["m0"])
        assert found_by_vector.embedded
        assert found_by_vector.content == "The quarterly garden fair moved to Thursday."


@pytest.mark.model
async def test_a_write_invalidates_the_cached_result(mf: MemFuse) -> None:
    ana, ben = await memories(mf)
    first = await ana.query("kayak trip", top_k=3, layers=["m0"])
    hits = mf.search_stats().result_cache_hits
    assert await ana.query("kayak trip", top_k=3, layers=["m0"]) == first
    assert mf.search_stats().result_cache_hits == hits + 1
    await ben.add([turn("Ben", "Ben's kayak trip is on Sunday.")])
    assert await ana.query("kayak trip", top_k=3, layers=["m0"]) == first, "not ana's write"
    await ana.add([turn("Ana", "The kayak trip starts at the harbour.")])
    after = await ana.query("kayak trip", top_k=3, layers=["m0"])
    assert "The kayak trip starts at the harbour." in texts(after)


@pytest.mark.model
async def test_session_agent_and_time_filters_are_exact(mf: MemFuse) -> None:
    trip = await mf.init("ana", session="trip")
    work = await mf.init("ana", agent="coach", session="work")
    await trip.add(ANA_TURNS)
    await work.add([turn("Ana", "The Lisbon office opens on Monday.", 5)])
    await mf.flush()

    def sessions(results: list[SearchResult]) -> set[uuid.UUID | None]:
        return {result.session_id for result in results}

    everything = await trip.query("Lisbon", top_k=20, unit="item")
    assert sessions(everything) == {trip.scope.session_id, work.scope.session_id}
    for unit in ("message", "item"):
        in_work = await trip.query("Lisbon", top_k=20, session="work", unit=unit)
        assert in_work and sessions(in_work) == {work.scope.session_id}
        by_agent = await trip.query("Lisbon", top_k=20, agent="coach", unit=unit)
        assert by_agent and {r.agent_id for r in by_agent} == {work.scope.agent_id}
        first_day = await trip.query("Lisbon", top_k=20, until=DAY + timedelta(hours=1), unit=unit)
        assert first_day and all(r.created_at < DAY + timedelta(hours=1) for r in first_day)
        later = await trip.query("Lisbon", top_k=20, since=DAY + timedelta(days=4), unit=unit)
        assert later and all(r.created_at >= DAY + timedelta(days=4) for r in later)
    assert await trip.query("Lisbon", session="no such session") == []
    assert await trip.query("Lisbon", agent="no such agent") == []


@pytest.mark.model
async def test_max_tokens_fills_a_budget_instead_of_top_k(mf: MemFuse) -> None:
    ana, _ = await memories(mf)
    budget = 25
    results = await ana.query("flight sister sailing", max_tokens=budget)
    assert results and sum(r.token_count for r in results) <= budget
    everything = await ana.query("flight sister sailing", max_tokens=10_000)
    assert len(everything) == 3, "a large budget takes every message that matches"
    assert await ana.query("flight", max_tokens=1) == []


@pytest.mark.model
@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        "?!.,;",
        "'; DROP TABLE memfuse.messages; --",
        "a & b | !c <-> (d",
        '"unterminated quote',
        "🚀🚀🚀",
        "naïve café in Zürich, 東京",
        "Lisbon " * 20_000,
    ],
)
async def test_odd_queries_return_cleanly(mf: MemFuse, query: str) -> None:
    ana, _ = await memories(mf)
    for unit in ("message", "item"):
        results = await ana.query(query, top_k=5, unit=unit)
        assert len(results) <= 5
        assert all(isinstance(r, SearchResult) for r in results)
    assert await ana.list_messages() != [], "the table is still there"


@pytest.mark.model
async def test_queries_without_words_find_nothing(mf: MemFuse) -> None:
    ana, _ = await memories(mf)
    for query in ("", "  ", "?!.,;", "---"):
        assert await ana.query(query) == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": "5"}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_k": 5000}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"layers": ["m9"]}, "layers"),
        ({"layers": []}, "layers"),
        ({"methods": ["bm25"]}, "methods"),
        ({"unit": "chunk"}, "unit"),
        ({"since": datetime(2024, 1, 1)}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"include_unembedded": "yes"}, "include_unembedded"),
        ({"session": 42}, "session"),
    ],
)
async def test_bad_options_are_refused_by_name(
    database_url: str, options: dict[str, object], field: str
) -> None:
    async with MemFuse(database_url) as mf:
        ana = await mf.init("ana")
        with pytest.raises(ValidationError) as caught:
            await ana.query("flight", **options)  # type: ignore[arg-type]
        assert caught.value.field == field


async def test_a_query_that_is_not_text_is_refused(database_url: str) -> None:
    async with MemFuse(database_url) as mf:
        ana = await mf.init("ana")
        with pytest.raises(ValidationError, match="string"):
            await ana.query(None)  # type: ignore[arg-type]


async def test_explain_gives_each_result_its_rank_in_every_list(database_url: str) -> None:
    """``explain=True``: the score is the sum of 1 / (k + rank) over the lists that ranked it."""
    from memfuse.memory import MemFuse

    async with MemFuse(database_url, embedder="none", pipeline_auto=False) as mf:
        memory = await mf.init("alice", session="s")
        await memory.add(
            [
                {"role": "user", "content": "The lighthouse keeper painted the door red."},
                {"role": "user", "content": "Nothing about anything here."},
            ]
        )
        await memory.add_knowledge(["The lighthouse is on a rocky island."])
        await mf.flush()
        results = await memory.query("lighthouse", explain=True, methods=["text"])
        assert {result.layer for result in results} == {"m0", "knowledge"}
        k = mf.settings.search_rrf_k
        for result in results:
            assert result.ranks
            expected = sum(1 / (k + rank) for rank in result.ranks.values())
            assert abs(result.score - expected) < 1e-9
        message = next(result for result in results if result.layer == "m0")
        assert set(message.ranks or {}) <= {"m0_text", "m1_text", "m2_text"}
        assert "m0_text" in (message.ranks or {})
        plain = await memory.query("lighthouse", methods=["text"])
        assert [r.id for r in plain] == [r.id for r in results] and plain[0].ranks is None
        items = await memory.query("lighthouse", explain=True, unit="item", methods=["text"])
        assert all(result.ranks for result in items)


async def test_a_search_is_one_statement_on_a_connection_set_up_once(database_url: str) -> None:
    """A search needs no transaction of its own: after its pooled connection got its session
    settings (custom plans, HNSW's ef_search and iterative scans), each search sends its one
    statement and no ping (the statement shows the connection is alive). Layers not known to
    hold the user's rows are left out of its lists and watched in the same statement; the
    settings outlive the search on that connection."""
    async with MemFuse(
        database_url,
        embedder="none",
        search_cache_ttl=0.0,
        search_ef_search=77,
        pipeline_auto=False,  # nothing else runs statements meanwhile
        pool_size=1,
        max_overflow=0,
    ) as mf:
        ana = await mf.init("ana")
        await ana.add([turn("Ana", "The quarterly garden fair moved to Thursday.")])
        assert texts(await ana.query("garden fair")) == [
            "The quarterly garden fair moved to Thursday."
        ]
        engine = await resolve(mf.container.engine)
        statements: list[str] = []

        def capture(record: asyncpg.connection.LoggedQuery) -> None:
            statements.append(record.query)

        async with pooled_driver(engine) as pooled:  # the pool's one connection
            driver: asyncpg.Connection = pooled.driver_connection
        driver.add_query_logger(capture)
        try:
            assert texts(await ana.query("garden fair Thursday")) == [
                "The quarterly garden fair moved to Thursday."
            ]
            await asyncio.sleep(0)  # asyncpg calls loggers soon after, not during, a query
        finally:
            driver.remove_query_logger(capture)
        assert ";" not in statements, "the pool pinged a search's connection"
        [searched] = statements  # Ana has no episode, fact or knowledge item
        assert searched.lstrip().startswith("WITH query_terms")
        assert not {"m1_text", "m2_text", "knowledge_text"} & set(searched.split())
        assert "m1_vector" not in searched and "AS held" in searched  # watched, not searched
        async with engine.connect() as connection:  # the pool's one connection
            settings = (
                await connection.execute(
                    text(
                        "SELECT current_setting('plan_cache_mode'),"
                        " current_setting('hnsw.ef_search'),"
                        " current_setting('hnsw.iterative_scan')"
                    )
                )
            ).one()
        assert tuple(settings) == ("force_custom_plan", "77", "relaxed_order")


def test_each_list_ranks_five_rows_per_message_asked_for() -> None:
    """A few messages need short lists (at least 50); budgets and items keep their depth."""
    assert list_depth(100, unit="message", fetch=5, budgeted=False) == 50
    assert list_depth(100, unit="message", fetch=15, budgeted=False) == 75
    assert list_depth(100, unit="message", fetch=200, budgeted=False) == 100
    assert list_depth(20, unit="message", fetch=5, budgeted=False) == 20, "never above the setting"
    assert list_depth(100, unit="message", fetch=200, budgeted=True) == 100
    assert list_depth(100, unit="item", fetch=5, budgeted=False) == 100
    assert list_depth(100, unit="item", fetch=300, budgeted=False) == 300


def test_short_searches_rank_shorter_vector_lists() -> None:
    """A filtered HNSW scan costs by the rows it must find: a search for up to 10 messages
    ranks 30 rows by vector (docs/retrieval.md: no loss within 5, 0.004 within 10); longer
    ones, budgets and items keep the depth of every list."""

    def vector_depth(configured: int, fetch: int) -> int:
        return list_depth(configured, unit="message", fetch=fetch, budgeted=False, method="vector")

    fetches = (1, 5, 10, 11, 20, 200)
    assert [vector_depth(100, fetch) for fetch in fetches] == [30, 30, 30, 55, 100, 100]
    assert vector_depth(20, 5) == 20, "never above the setting"
    assert list_depth(100, unit="message", fetch=5, budgeted=True, method="vector") == 100
    assert list_depth(100, unit="item", fetch=5, budgeted=False, method="vector") == 100


@pytest.mark.model
async def test_each_method_ranks_as_many_rows_as_its_depth(database_url: str) -> None:
    """The statement ranks ``vector_candidates`` rows in each vector list and ``candidates``
    in each full-text list (``explain`` gives every row its rank in each list)."""
    async with MemFuse(database_url, embedder="local", pipeline_auto=False) as mf:
        ana = await mf.init("ana")
        await ana.add(
            [turn("Ana", f"Harbour log {n}: the lighthouse lamp was cleaned.") for n in range(12)]
        )
        await mf.flush()  # the worker embeds them
        retrieval = await resolve(mf.container.retrieval_service)
        vector = await retrieval.embed_query("lighthouse lamp")
        engine = await resolve(mf.container.engine)
        async with pooled_driver(engine) as connection:
            found = await SearchRepository(connection, mf.settings.schema).search(
                SearchFilters(user_id=ana.scope.user_id),
                unit="item",
                query_text="lighthouse lamp",
                query_vector=vector,
                layers=["m0"],
                methods=["vector", "text"],
                candidates=9,
                vector_candidates=4,
                rrf_k=60,
                limit=100,
                explain=True,
            )
    rows = found.rows
    deepest = {
        name: max((row.ranks or {}).get(name, 0) for row in rows)
        for name in ("m0_vector", "m0_text")
    }
    assert deepest == {"m0_vector": 4, "m0_text": 9}
    assert all(row.embedded for row in rows)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.model
async def test_the_message_words_index_hands_back_only_the_users_matches(mf: MemFuse) -> None:
    """Once the worker indexed the messages' words, the M0 full-text list reads them through
    ``ix_messages_user_words_gin`` under the user's keys: the index scan itself returns only
    this user's matching rows (Ben shares Ana's words), never a bitmap of all her rows. Other
    users' rows are not among the results, whatever the plan."""
    ana, ben = await memories(mf)  # the real worker embeds and indexes both users' turns
    engine = await resolve(mf.container.engine)
    async with pooled_driver(engine) as connection:
        driver: asyncpg.Connection = connection.driver_connection
        indexed = await driver.fetchval(
            f'SELECT count(*) FROM "{mf.settings.schema}".messages WHERE content_tsv IS NOT NULL'
        )
        assert indexed == len(ANA_TURNS) + len(BEN_TURNS)
        statement = SearchRepository(connection, mf.settings.schema).statement(
            SearchFilters(user_id=ana.scope.user_id),
            unit="message",
            query_text="booked flight Lisbon Porto",
            query_vector=None,
            layers=["m0"],
            methods=["text"],
            candidates=10,
            rrf_k=60,
            limit=10,
        )
        assert statement is not None
        sql, arguments = statement
        found = await driver.fetch(sql, *arguments)
        async with driver.transaction():
            await driver.execute("SET LOCAL enable_seqscan = off")  # six rows: scan otherwise
            plan = await driver.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *arguments)
    assert {row["content"] for row in found} == {ANA_TURNS[0]["content"], ANA_TURNS[1]["content"]}
    text_list = next(
        node
        for node in plan_nodes(plan[0]["Plan"])  # the pool decodes json
        if node.get("Subplan Name") == "CTE m0_text"
    )
    scans = {
        (node["Node Type"], node.get("Index Name")): node.get("Actual Rows")
        for node in plan_nodes(text_list)
        if node.get("Index Name")
    }
    assert scans[("Bitmap Index Scan", "ix_messages_user_words_gin")] == 2  # Ana's, not Ben's
    assert all(name != "ix_messages_user_id_created_at" for _, name in scans)
    bens = await ben.query("booked flight Lisbon Porto", methods=["text"])
    assert set(texts(bens)) == {BEN_TURNS[0]["content"], BEN_TURNS[1]["content"]}


@pytest.mark.model
async def test_a_message_with_a_word_of_the_longest_lexeme_is_indexed_and_found(
    mf: MemFuse,
) -> None:
    """A lexeme may hold 2046 bytes, and the words' index must take one that long (a user's
    key that lengthened it would fail the worker's write: such words are their own keys). The
    real worker indexes the message without error, and a search finds it by its short words
    and by the long one, for its user only."""
    long_word = "f" * 2040  # a hex dump, say: one token
    ana = await mf.init("ana", session="dump")
    ben = await mf.init("ben", session="dump")
    content = f"the checksum was {long_word} on the backup tape"
    await ana.add([{"role": "user", "content": content}])
    await ben.add([{"role": "user", "content": f"my checksum is {long_word} too"}])
    await mf.flush()  # the worker embeds and indexes both messages
    async with parts.db(mf) as db:
        unindexed = await db.scalar(
            text(f'SELECT count(*) FROM "{mf.settings.schema}".messages WHERE content_tsv IS NULL')
        )
    assert unindexed == 0
    for query in ("backup tape", long_word):
        found = await ana.query(query, methods=["text"])
        assert texts(found) == [content], query


async def test_layers_without_the_users_rows_are_left_out_and_watched(
    database_url: str,
) -> None:
    """A search leaves out the layers where the user has no rows (planning their lists cost
    more than checking them) and its statement checks them again, so an item another process
    writes meanwhile is found by the next search, with no cache to expire. When nothing else
    matches, so that no row carries the check's answer, a probe asks."""
    async with (
        MemFuse(database_url, embedder="none", pipeline_auto=False) as mf,
        MemFuse(database_url, embedder="none", pipeline_auto=False) as other_process,
    ):
        ana = await mf.init("ana", session="trip")
        await ana.add([turn("Ana", "The lighthouse keeper painted the door red.")])
        skipped = mf.search_stats().layers_skipped
        assert layers(await ana.query("lighthouse door", methods=["text"])) == {"m0"}
        assert mf.search_stats().layers_skipped == skipped + 3  # M1, M2, knowledge
        ana_elsewhere = await other_process.init("ana", session="trip")
        await ana_elsewhere.add_knowledge(["The lighthouse stands on a rocky island."])
        found = await ana.query("lighthouse island", methods=["text"])
        assert layers(found) == {"m0", "knowledge"}
        assert mf.search_stats().layers_skipped == skipped + 5  # M1 and M2 only, this time
        ben = await mf.init("ben", session="trip")
        await ben.add([turn("Ben", "The lighthouse on my street is a cafe now.")])
        assert layers(await ben.query("lighthouse island", methods=["text"])) == {"m0"}
        carl = await mf.init("carl", session="trip")
        await carl.add([turn("Carl", "We met at the harbour.")])
        assert await carl.query("sailing boat", methods=["text"]) == []
        carl_elsewhere = await other_process.init("carl", session="trip")
        await carl_elsewhere.add_knowledge(["Carl's sailing boat is called Wave."])
        found = await carl.query("sailing boat name", methods=["text"])  # no message matches
        assert texts(found) == ["Carl's sailing boat is called Wave."]


@pytest.mark.parametrize("unit", ["message", "item"])
async def test_a_search_watching_layers_says_which_hold_the_users_rows(
    database_url: str, unit: Unit
) -> None:
    """``watch``: the statement searches its layers and says which watched layers hold rows
    of the searching user (Ben's knowledge does not count for Ana), with or without
    ``explain``; when no row comes back, nothing carries the answer."""
    async with MemFuse(database_url, embedder="none", pipeline_auto=False) as mf:
        ana = await mf.init("ana", session="trip")
        ben = await mf.init("ben", session="trip")
        await ana.add([turn("Ana", "The lighthouse keeper painted the door red.")])
        await ben.add_knowledge(["Ben keeps bees."])
        engine = await resolve(mf.container.engine)

        async def search(query: str, *, explain: bool = False) -> SearchFound:
            async with pooled_driver(engine) as connection:
                return await SearchRepository(connection, mf.settings.schema).search(
                    SearchFilters(user_id=ana.scope.user_id),
                    unit=unit,
                    query_text=query,
                    query_vector=None,
                    layers=["m0"],
                    methods=["text"],
                    candidates=10,
                    rrf_k=60,
                    limit=10,
                    explain=explain,
                    watch=["m1", "m2", "knowledge"],
                )

        found = await search("lighthouse door")
        assert [row.content for row in found.rows] == [
            "The lighthouse keeper painted the door red."
        ]
        assert found.held == frozenset()
        await ana.add_knowledge(["Ana's lighthouse stands on a rocky island."])
        found = await search("lighthouse door", explain=True)
        assert found.held == frozenset({"knowledge"}) and found.rows[0].ranks
        assert {row.layer for row in found.rows} == {"m0"}  # watched, not searched
        assert await search("bees") == SearchFound([], None)


async def test_searches_beyond_the_pools_size_wait_for_its_connections(
    database_url: str,
) -> None:
    """More concurrent searches than the pool holds wait for its connections instead of
    opening overflow ones, which the pool closes as they come back (each a new server
    process and session set-up): every search still answers, for its user only."""
    async with MemFuse(
        database_url,
        embedder="none",
        pipeline_auto=False,
        search_cache_ttl=0.0,
        pool_size=2,
        max_overflow=10,
    ) as mf:
        ana = await mf.init("ana", session="harbour")
        ben = await mf.init("ben", session="harbour")
        await ana.add(
            [turn("Ana", f"Harbour log {n}: the lighthouse lamp was cleaned.") for n in range(3)]
        )
        await ben.add([turn("Ben", "The lighthouse lamp in my town is broken.")])
        registry = mf.container.engine_registry()
        [before] = registry.stats().values()
        found = await asyncio.gather(
            *(ana.query(f"lighthouse lamp {n}", methods=["text"]) for n in range(40))
        )
        [after] = registry.stats().values()
    assert all(len(results) == 3 for results in found)
    assert all(text.startswith("Harbour log") for results in found for text in texts(results))
    assert after.connections_opened - before.connections_opened <= 2  # the pool's own two


async def test_a_search_on_a_connection_that_went_away_runs_again(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Searches skip the pool's ping: when the pooled connection's server process is gone,
    the search's first statement fails, the connection is dropped and the search runs once
    more on a fresh one, and the caller only sees the results."""
    async with MemFuse(
        database_url,
        embedder="none",
        pipeline_auto=False,
        search_cache_ttl=0.0,
        pool_size=1,
        max_overflow=0,
    ) as mf:
        ana = await mf.init("ana", session="trip")
        await ana.add([turn("Ana", "The quarterly garden fair moved to Thursday.")])
        assert texts(await ana.query("garden fair")) == [
            "The quarterly garden fair moved to Thursday."
        ]
        engine = await resolve(mf.container.engine)
        async with pooled_driver(engine) as pooled:  # the pool's one connection
            old_pid = await pooled.driver_connection.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(**asyncpg_connect_args(database_url))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        with caplog.at_level(logging.INFO, logger="memfuse.retrieval.service"):
            assert texts(await ana.query("garden fair Thursday")) == [
                "The quarterly garden fair moved to Thursday."
            ]
        assert "search connection went away" in caplog.text  # the unpinged try failed
        async with pooled_driver(engine) as pooled:
            assert await pooled.driver_connection.fetchval("SELECT pg_backend_pid()") != old_pid


@pytest.mark.model
async def test_episodes_the_pipeline_writes_after_a_search_are_found_by_the_next(
    mf: MemFuse,
) -> None:
    """With the real worker and pipeline running: a search right after ``add()`` may find no
    episode yet (the layer is left out); once the pipeline wrote Carol's episode, the next
    search sees M1 hold her rows and ranks it. Ben's episodes never reach Ana's results."""
    ana, ben = await memories(mf)  # flush(): the pipeline built both users' episodes
    ana_episodes = await ana.list_episodes()
    assert ana_episodes
    carol = await mf.init("carol", session="trip")
    await carol.add([turn("Carol", "I booked a ferry to Madeira for June.")])
    # None yet, or already the episode: the pipeline runs beside the caller.
    early = await carol.query("ferry Madeira", layers=["m1"], unit="item")
    assert all(result.layer == "m1" for result in early)
    await mf.flush()
    late = await carol.query("ferry Madeira", layers=["m1"], unit="item")
    assert [result.layer for result in late] == ["m1"] and "Madeira" in late[0].content
    items = await ana.query("flight Lisbon", layers=["m1"], unit="item")
    assert {result.id for result in items} <= {episode.id for episode in ana_episodes}
    assert items and not {result.id for result in items} & {e.id for e in await ben.list_episodes()}
