"""The full-text lists' plan: common terms order rows, uncommon terms find them.

A term is common when PostgreSQL's statistics (``ANALYZE``) put it in at least
``search_common_term_frequency`` of a layer's rows; these tests use 0.2 so that a small table
shows the rule. Without statistics every term is uncommon and a row with any term matches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from memfuse.memory import MemFuse, Memory
from memfuse.types import SearchResult

COFFEE_ROWS = 40
TEXT_ONLY = {"layers": ["m0"], "methods": ["text"]}


def said(content: str) -> dict[str, object]:
    return {"role": "user", "content": content}


ANA_TURNS = [
    *(said(f"Coffee with milk again, cup number {i}.") for i in range(COFFEE_ROWS)),
    said("Coffee in Porto tasted of caramel."),
    said("The tram in Porto was late."),
    said("Coffee with milk in the morning, a habit."),
    said("東京タワー was lit up in orange."),
    said("Same words twice."),
    said("Same words twice."),
]
BEN_TURNS = [
    *(said(f"Guitar practice, lesson number {i}.") for i in range(COFFEE_ROWS)),
    said("Coffee in Porto with my brother."),
    said("Bought new strings for the ukulele."),
]


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(
        database_url, embedder="none", search_cache_ttl=0.0, search_common_term_frequency=0.2
    ) as mf:
        yield mf


async def loaded(mf: MemFuse, *, analyze: bool = True) -> tuple[Memory, Memory]:
    ana = await mf.init("ana", session="diary")
    ben = await mf.init("ben", session="diary")
    await ana.add(ANA_TURNS)
    await ben.add(BEN_TURNS)
    await mf.flush()
    if analyze:
        await mf.analyze()
    return ana, ben


def texts(results: list[SearchResult]) -> list[str]:
    return [result.content for result in results]


async def test_an_uncommon_term_finds_the_rows_and_common_ones_order_them(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    results = await ana.query("coffee in Porto", top_k=50, **TEXT_ONLY)
    assert texts(results) == [
        "Coffee in Porto tasted of caramel.",  # both terms rank it first
        "The tram in Porto was late.",
    ], "forty rows with only the common 'coffee' are not candidates"


async def test_a_term_in_enough_rows_is_common_whatever_its_share(database_url: str) -> None:
    """In a large table 1% is many rows: ``search_common_term_rows`` bounds the lists too."""
    async with MemFuse(
        database_url,
        embedder="none",
        search_cache_ttl=0.0,
        search_common_term_frequency=1.0,  # no term is in every row: only the count decides
        search_common_term_rows=30,
    ) as mf:
        ana, _ = await loaded(mf)
        results = await ana.query("coffee in Porto", top_k=50, **TEXT_ONLY)
        assert texts(results) == [
            "Coffee in Porto tasted of caramel.",
            "The tram in Porto was late.",
        ]


async def test_without_statistics_any_term_matches(mf: MemFuse) -> None:
    ana, _ = await loaded(mf, analyze=False)
    results = await ana.query("coffee in Porto", top_k=50, **TEXT_ONLY)
    assert texts(results)[0] == "Coffee in Porto tasted of caramel."
    assert len(results) == COFFEE_ROWS + 3, "every row with coffee or Porto, as a plain OR"


async def test_a_query_of_common_terms_only_needs_all_of_them(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    results = await ana.query("coffee morning milk", top_k=50, **TEXT_ONLY)
    assert texts(results) == ["Coffee with milk in the morning, a habit."]
    every_common = await ana.query("coffee milk", top_k=50, **TEXT_ONLY)
    assert len(every_common) == COFFEE_ROWS + 1


async def test_a_query_of_uncommon_terms_only_matches_any_of_them(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    results = await ana.query("caramel tram", top_k=50, **TEXT_ONLY)
    assert sorted(texts(results)) == [
        "Coffee in Porto tasted of caramel.",
        "The tram in Porto was late.",
    ]


async def test_common_terms_are_matched_as_stored_not_parsed_again(mf: MemFuse) -> None:
    """'nerve-wracking' is stored as 'nerve-wrack', 'nerv' and 'wrack': requiring all of the
    query's common terms must require those lexemes, not a re-parsed 'nerve'."""
    await loaded(mf)
    exams = await mf.init("ana", session="exams")
    await exams.add([said(f"A nerve-wracking exam, day {i}.") for i in range(30)])
    await mf.flush()
    await mf.analyze()
    results = await exams.query("nerve-wracking exam", top_k=50, **TEXT_ONLY)
    assert len(results) == 30
    assert all("nerve-wracking" in text for text in texts(results))


async def test_stop_words_only_find_nothing(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    assert await ana.query("the of and was in", top_k=10, **TEXT_ONLY) == []


async def test_non_latin_and_very_long_queries(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    assert texts(await ana.query("東京タワー", top_k=5, **TEXT_ONLY)) == [
        "東京タワー was lit up in orange."
    ]
    long_query = "caramel " + " ".join(f"word{i}" for i in range(600))  # cut at 4000 chars
    results = await ana.query(long_query, top_k=5, **TEXT_ONLY)
    assert texts(results) == ["Coffee in Porto tasted of caramel."]


async def test_ties_come_back_in_a_stable_order(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    first = await ana.query("same words twice", top_k=5, **TEXT_ONLY)
    assert texts(first) == ["Same words twice.", "Same words twice."]
    for _ in range(3):
        again = await ana.query("same words twice", top_k=5, **TEXT_ONLY)
        assert [r.id for r in again] == [r.id for r in first]


async def test_no_plan_reaches_another_users_rows(mf: MemFuse) -> None:
    ana, ben = await loaded(mf)
    ben_ids = {message.id for message in await ben.list_messages(limit=1000)}
    for query in ("coffee in Porto", "guitar lesson", "ukulele strings", "coffee milk"):
        for options in ({}, TEXT_ONLY, {"unit": "item"}, {"max_tokens": 500}):
            results = await ana.query(query, top_k=50, **options)  # type: ignore[arg-type]
            assert not ben_ids & {i for r in results for i in r.message_ids}
    assert await ana.query("ukulele strings", top_k=5) == [], "only Ben has these words"


async def test_filters_and_budgets_hold_under_the_plan(mf: MemFuse) -> None:
    ana, _ = await loaded(mf)
    trip = await mf.init("ana", session="trip")
    await trip.add([said("Coffee in Porto again, at the station.")])
    await mf.flush()
    await mf.analyze()
    in_trip = await trip.query("coffee Porto", top_k=10, session="trip", **TEXT_ONLY)
    assert texts(in_trip) == ["Coffee in Porto again, at the station."]
    budget = await ana.query("coffee Porto", max_tokens=12, **TEXT_ONLY)
    assert sum(r.token_count for r in budget) <= 12
    assert budget, "at least one short row fits"


async def test_the_setting_is_checked(database_url: str) -> None:
    from memfuse.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="search_common_term_frequency"):
        MemFuse(database_url, search_common_term_frequency=1.5)
    with pytest.raises(ConfigurationError, match="search_common_term_rows"):
        MemFuse(database_url, search_common_term_rows=0)
