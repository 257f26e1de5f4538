"""The term budget: a full-text list admits the query's uncommon terms rarest first while the
rows ``ANALYZE`` estimates for them add up to at most ``search_term_budget_rows``; the rarest
term always counts. Common terms (here from 20% of a layer's rows) never admit rows and still
order the admitted ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from real_model import memfuse_with_model

from memfuse.config.urls import asyncpg_connect_args
from memfuse.container import resolve
from memfuse.db.engines import pooled_driver
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.memory import MemFuse, Memory
from memfuse.repositories.search import SearchRepository, TermStatistics, _estimated_rows
from memfuse.types import SearchResult

TEXT_ONLY = {"layers": ["m0"], "methods": ["text"]}
TRAMS = 15
FERRIES = 12


def said(content: str) -> dict[str, object]:
    return {"role": "user", "content": content}


ANA_TURNS = [
    *(said(f"Walked the dog before breakfast, day {i}.") for i in range(100)),  # common words
    *(said(f"The tram was late, ride {i}.") for i in range(TRAMS)),
    *(said(f"The ferry left on time, crossing {i}.") for i in range(FERRIES)),
    said("Caramel at the dog park."),
    said("Caramel on the ferry home."),
]
BEN_TURNS = [said(f"Tram tickets for Ben, {i}.") for i in range(5)]


async def memory_of(mf: MemFuse) -> Memory:
    ana = await mf.init("ana", session="diary")
    ben = await mf.init("ben", session="diary")
    await ana.add(ANA_TURNS)
    await ben.add(BEN_TURNS)
    await mf.flush()
    await mf.analyze()
    return ana


@asynccontextmanager
async def loaded_with_budget(
    database_url: str, budget: int
) -> AsyncIterator[tuple[MemFuse, Memory]]:
    """A MemFuse with ``search_term_budget_rows=budget`` (0: none) and Ana's memory loaded."""
    async with MemFuse(
        database_url,
        embedder="none",
        search_cache_ttl=0.0,
        search_common_term_frequency=0.2,
        search_term_budget_rows=budget,
    ) as mf:
        yield mf, await memory_of(mf)


@pytest.fixture
async def budgeted(database_url: str) -> AsyncIterator[tuple[MemFuse, Memory]]:
    async with loaded_with_budget(database_url, FERRIES + 5) as loaded:
        yield loaded


def texts(results: list[SearchResult]) -> list[str]:
    return [result.content for result in results]


async def test_the_statistics_estimate_each_tracked_terms_rows(
    budgeted: tuple[MemFuse, Memory],
) -> None:
    mf, _ = budgeted
    engine = await resolve(mf.container.engine)
    async with pooled_driver(engine) as connection:
        terms = await SearchRepository(connection, mf.settings.schema).term_statistics(0.2, 2000)
    messages = terms["m0"]
    assert "dog" in messages.common_terms and "walk" in messages.common_terms
    # ANALYZE read every row of this small table: the estimates are the counts, all users'.
    assert f"  tram {TRAMS + len(BEN_TURNS)}  " in messages.sized
    assert f"  ferri {FERRIES + 1}  " in messages.sized
    assert "  caramel 2  " in messages.sized


async def test_terms_past_the_budget_admit_no_rows(budgeted: tuple[MemFuse, Memory]) -> None:
    _, ana = budgeted
    results = await ana.query("caramel ferry tram", top_k=100, **TEXT_ONLY)
    found = texts(results)
    # caramel (2 rows) and ferry (13) fit in 17 rows; tram (20) would pass them.
    assert found[0] == "Caramel on the ferry home.", "two of the terms rank it first"
    assert len(found) == 2 + FERRIES
    assert not [text for text in found if "tram" in text]


async def test_the_rarest_term_counts_even_past_the_budget(database_url: str) -> None:
    async with loaded_with_budget(database_url, 1) as (_, ana):
        assert sorted(texts(await ana.query("ferry tram", top_k=100, **TEXT_ONLY))) == sorted(
            text for turn in ANA_TURNS if "ferry" in (text := str(turn["content"]))
        )


async def test_without_a_budget_every_uncommon_term_admits_rows(database_url: str) -> None:
    async with loaded_with_budget(database_url, 0) as (_, ana):
        results = await ana.query("caramel ferry tram", top_k=100, **TEXT_ONLY)
        assert len(results) == 2 + FERRIES + TRAMS, "Ben's trams are not Ana's"


async def test_common_terms_order_the_admitted_rows_without_admitting_any(
    budgeted: tuple[MemFuse, Memory],
) -> None:
    _, ana = budgeted
    results = await ana.query("caramel dog", top_k=100, **TEXT_ONLY)
    assert texts(results) == ["Caramel at the dog park.", "Caramel on the ferry home."]


async def test_untracked_terms_always_count(budgeted: tuple[MemFuse, Memory]) -> None:
    """A word too rare for the statistics (in no row when they were taken) holds no rows as
    far as the budget knows: it is admitted beside the rarest tracked term."""
    mf, ana = budgeted
    await ana.add([said("A gondola ride, then the tram.")])
    await mf.flush()
    found = texts(await ana.query("gondola ferry tram", top_k=100, **TEXT_ONLY))
    assert "A gondola ride, then the tram." in found
    assert len(found) == 1 + FERRIES + 1, "gondola, then ferry; tram is past the budget"


async def test_the_budget_keeps_each_user_to_their_rows(budgeted: tuple[MemFuse, Memory]) -> None:
    mf, ana = budgeted
    ben = await mf.init("ben", session="diary")
    ben_texts = texts(await ben.query("tram tickets", top_k=100, **TEXT_ONLY))
    assert len(ben_texts) == len(BEN_TURNS)
    assert all(text.startswith("Tram tickets for Ben") for text in ben_texts)
    ana_texts = texts(await ana.query("tram tickets", top_k=100, **TEXT_ONLY))
    assert not [text for text in ana_texts if "Ben" in text]


@pytest.mark.parametrize(
    "lexeme",
    ["tram", "15", "o'brien", "example.com", "nerve-wrack", "東京タワー", "a\\b"],
)
async def test_an_estimate_is_read_for_exactly_its_own_lexeme(
    database_url: str, lexeme: str
) -> None:
    """Lexemes never hold a space, but may be digits that look like another term's count, or
    hold quotes, dots, dashes, backslashes and any script."""
    others = {"tram": 15, "15": 3, "o'brien": 7, "example.com": 9, "nerve-wrack": 11}
    others |= {"東京タワー": 13, "a\\b": 17, "tramway": 19, "15th": 21}
    statistics = TermStatistics.of((), others)
    connection = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        estimate = await connection.fetchval(
            f"SELECT {_estimated_rows('$2::text')} FROM (SELECT $1::text AS lexeme) AS t",
            lexeme,
            statistics.sized,
        )
        missing = await connection.fetchval(
            f"SELECT {_estimated_rows('$2::text')} FROM (SELECT $1::text AS lexeme) AS t",
            f"{lexeme}{uuid.uuid4().hex[:4]}",
            statistics.sized,
        )
    finally:
        await connection.close()
    assert estimate == others[lexeme]
    assert missing == 0, "an untracked lexeme holds no rows as far as the budget knows"


def test_a_lexeme_with_white_space_is_left_out_of_the_statistics() -> None:
    statistics = TermStatistics.of(["dog", "hot dog"], {"tram": 15, "new york": 4, "ferri": 13})
    assert statistics.common_terms == ("dog",)
    assert statistics.sized == "  tram 15  ferri 13  "


async def test_searches_with_a_budget_beside_writers_the_worker_and_fresh_statistics(
    database_url: str, model: LocalEmbedder
) -> None:
    """Three users write while the real worker and pipeline run and the statistics are
    refreshed under the searches: every search sees its own user's rows only, and afterwards
    each user's own words are found by that user alone, whatever the budget drops."""
    async with memfuse_with_model(
        database_url, model, fact_extractor="none", search_cache_ttl=0.0, search_term_budget_rows=1
    ) as mf:
        memories = [await mf.init(f"user-{n}", session="chat") for n in range(3)]
        words: dict[str, int] = {}
        writing = True

        async def write(owner: int) -> None:
            for n in range(10):
                word = f"w{uuid.uuid4().hex[:10]}"
                await memories[owner].add([said(f"The tram and the ferry, day {n}: {word}.")])
                words[word] = owner

        async def search() -> None:
            while writing:
                for owner, memory in enumerate(memories):
                    found = await memory.query("tram ferry day", top_k=50, **TEXT_ONLY)
                    assert {r.session_id for r in found} <= {memory.scope.session_id}, owner
                await mf.analyze()

        searcher = asyncio.create_task(search())
        await asyncio.gather(*(write(owner) for owner in range(3)))
        writing = False
        await searcher
        await mf.flush()
        await mf.analyze()
        for word, owner in words.items():
            for index, memory in enumerate(memories):
                found = await memory.query(f"tram ferry {word}", top_k=50, **TEXT_ONLY)
                assert any(word in r.content for r in found) == (index == owner), (word, index)
        assert len(words) == 30
