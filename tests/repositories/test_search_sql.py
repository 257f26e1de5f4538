"""The search statement is built once per shape of options; values are only its arguments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from memfuse.repositories.search import SearchFilters, search_sql


def sql_for(filters: SearchFilters) -> tuple[str, tuple[str, ...]] | None:
    return search_sql(
        "memfuse",
        filters.shape(),
        unit="message",
        layers=("m0", "m1", "m2", "knowledge"),
        methods=("vector", "text"),
        vector=True,
        bounded=True,
        explain=False,
    )


def test_filters_of_one_shape_share_one_statement() -> None:
    ana, ben = uuid.uuid4(), uuid.uuid4()
    first = SearchFilters(
        user_id=ana, session_id=uuid.uuid4(), since=datetime(2024, 1, 1, tzinfo=UTC)
    )
    second = SearchFilters(
        user_id=ben, session_id=uuid.uuid4(), since=datetime(2025, 6, 1, tzinfo=UTC)
    )
    assert first.shape() == second.shape()
    assert sql_for(first) is sql_for(second)  # the cached statement itself
    assert first.parameters() != second.parameters()


def test_each_filter_that_is_set_changes_the_statement() -> None:
    user = uuid.uuid4()
    plain = sql_for(SearchFilters(user_id=user))
    assert plain is not None
    for narrowed in (
        SearchFilters(user_id=user, agent_id=uuid.uuid4()),
        SearchFilters(user_id=user, session_id=uuid.uuid4()),
        SearchFilters(user_id=user, until=datetime(2024, 1, 1, tzinfo=UTC)),
        SearchFilters(user_id=user, embedded_only=True),
        SearchFilters(user_id=user, knowledge_namespace=("prefs",)),
    ):
        statement = sql_for(narrowed)
        assert statement is not None and statement[0] != plain[0]
        assert set(narrowed.parameters()) <= set(statement[1])
    assert sql_for(SearchFilters(user_id=user, knowledge_namespace=("a", "b"))) != sql_for(
        SearchFilters(user_id=user, knowledge_namespace=("a",))
    )
