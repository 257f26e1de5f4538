"""The shared input rules (memfuse.validation) on their own, and where the library applies them:
names (tenancy), messages (M0) and queries (SearchRequest.build). No database needed."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest

from memfuse.errors import MemfuseError, ValidationError
from memfuse.retrieval.service import SearchRequest
from memfuse.services import tenancy
from memfuse.validation import (
    MAX_METADATA_DEPTH,
    MAX_NAME_LENGTH,
    MAX_PAGE_LIMIT,
    MAX_PAGE_OFFSET,
    MAX_STORED_TIME,
    MIN_STORED_TIME,
    check_flag,
    check_metadata,
    check_page,
    check_text,
    name_problem,
    new_ids,
    parse_message_id,
    preview,
    storable_text,
    stored_timestamp,
    text_problem,
    time_bound,
    validate_filter_name,
    validate_messages,
    validate_name,
)


def test_one_name_rule_serves_tenancy() -> None:
    assert tenancy.validate_name is validate_name


@pytest.mark.parametrize(
    "value",
    ["plain", "tabs\tand\nnewlines", "\x01\x1f\x7f controls", "😀 emoji", "東京", "\ufffd"],
)
def test_text_postgresql_can_store_is_accepted(value: str) -> None:
    assert text_problem(value) is None
    assert check_text(value, field="content") == value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("a\x00b", "NUL"),
        ("\ud800", "U+D800"),
        ("ok \udfff", "U+DFFF"),
        ("\ud83d\ude00", "surrogate"),  # a pair's halves as two code points still cannot encode
    ],
)
def test_text_postgresql_cannot_store_is_refused(value: str, says: str) -> None:
    problem = text_problem(value)
    assert problem is not None and says in problem
    with pytest.raises(ValidationError, match=re.escape(says)) as raised:
        check_text(value, field="query", index=3)
    assert (raised.value.field, raised.value.index) == ("query", 3)


def test_the_quick_text_check_agrees_with_the_rule_on_random_text() -> None:
    # ASCII text skips the regular expression; the rule is "no NUL, no lone surrogate".
    rule = re.compile("[\x00\ud800-\udfff]")
    alphabet = ["a", " ", "\x00", "\x7f", "é", "東", "\ud800", "\udfff", "😀", "\ufffd"]
    rng = random.Random(7)
    for _ in range(5000):
        value = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        assert storable_text(value) is (rule.search(value) is None), repr(value)
        assert (text_problem(value) is None) is storable_text(value)


def test_a_surrogate_in_a_name_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="surrogate") as raised:
        validate_name("session", "chat \ud800")
    assert raised.value.field == "session"
    assert str(raised.value).startswith("field 'session': ")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "must be a string, got NoneType"),
        (7, "must be a string, got int"),
        ("", "must not be empty"),
        (" \t", "must not be empty"),
        ("x" * (MAX_NAME_LENGTH + 1), f"longer than {MAX_NAME_LENGTH} characters"),
        ("a\x00b", "must not contain NUL bytes"),
    ],
)
def test_bad_names(value: object, says: str) -> None:
    problem = name_problem(value)
    assert problem is not None and problem.startswith(says)
    with pytest.raises(ValidationError, match=says):
        validate_name("user", value)


def test_a_good_name_is_returned() -> None:
    assert validate_name("agent", "x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH


# --- metadata -------------------------------------------------------------------------------


def deep(levels: int, kind: str = "mixed") -> dict[str, Any]:
    """A dict ``levels`` containers deep (the top one included)."""
    value: Any = 1
    for level in range(levels - 1):
        as_list = kind == "list" or (kind == "mixed" and level % 2 == 0)
        value = [value] if as_list else {"k": value}
    return {"top": value}


@pytest.mark.parametrize("kind", ["list", "dict", "mixed"])
def test_metadata_nested_thousands_deep_is_refused_without_recursion(kind: str) -> None:
    with pytest.raises(ValidationError, match=f"more than {MAX_METADATA_DEPTH} levels"):
        check_metadata(deep(5000, kind), index=2)
    with pytest.raises(ValidationError):
        check_metadata(deep(200_000, kind))


def test_metadata_depth_limit_is_exact() -> None:
    assert check_metadata(deep(MAX_METADATA_DEPTH)) == deep(MAX_METADATA_DEPTH)
    with pytest.raises(ValidationError) as raised:
        check_metadata(deep(MAX_METADATA_DEPTH + 1), index=4)
    assert (raised.value.index, raised.value.field) == (4, "metadata")


def test_metadata_text_errors_say_where() -> None:
    with pytest.raises(ValidationError, match=r"value at \['a'\]\[1\] contains a lone") as raised:
        check_metadata({"a": ["fine", "\ud800"]})
    assert raised.value.field == "metadata"
    with pytest.raises(ValidationError, match=r"key 'b\\x00' at \['a'\] must not contain NUL"):
        check_metadata({"a": {"b\x00": 1}})


@pytest.mark.parametrize(
    "metadata",
    [
        {"n": float("nan")},
        {"n": float("inf")},
        {"s": {1, 2}},
        {"o": object()},
        {(1, 2): "tuple key"},
        {"huge": 10**5000},
    ],
)
def test_metadata_that_is_not_json_is_refused(metadata: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError, match="JSON-serializable"):
        check_metadata(metadata)


def test_metadata_is_returned_as_stored() -> None:
    assert check_metadata(None) == {}
    assert check_metadata({"t": (1, 2), 3: None, "e": "😀"}) == {"t": [1, 2], "3": None, "e": "😀"}
    with pytest.raises(ValidationError, match="must be a dict"):
        check_metadata(["not", "a", "dict"])


# --- timestamps -----------------------------------------------------------------------------


def offset(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=offset(5)),  # UTC would be year 0
        datetime(9999, 12, 31, 23, tzinfo=offset(-5)),  # UTC would be year 10000
        datetime(1, 1, 1, tzinfo=UTC),  # -infinity to asyncpg
        datetime.max.replace(tzinfo=UTC),  # infinity to asyncpg
        MIN_STORED_TIME - timedelta(microseconds=1),
        MAX_STORED_TIME + timedelta(microseconds=1),
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:00:00-05:00",
    ],
)
def test_stored_times_outside_the_range_are_refused(value: object) -> None:
    with pytest.raises(ValidationError) as raised:
        stored_timestamp(value, field="created_at", index=0)
    assert raised.value.field == "created_at"


def test_stored_times_at_the_ends_of_the_range_are_accepted() -> None:
    assert stored_timestamp(MIN_STORED_TIME, field="t") == MIN_STORED_TIME
    assert stored_timestamp(MAX_STORED_TIME, field="t") == MAX_STORED_TIME
    east = MAX_STORED_TIME.astimezone(offset(14))  # year 10000 in local time is no datetime
    assert stored_timestamp(east, field="t") == MAX_STORED_TIME
    assert stored_timestamp("2023-05-08T13:56:00+02:00", field="t") == datetime(
        2023, 5, 8, 11, 56, tzinfo=UTC
    )


class BrokenZone(tzinfo):
    """A time zone whose offset is out of range: Python raises ValueError when asked."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "broken"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (datetime(2024, 1, 1), "must carry a time zone"),
        ("yesterday", "ISO-8601"),
        ("x" * 10_000, "characters)"),  # the huge input is cut in the message
        (1_700_000_000, "got int"),
        (datetime(2024, 1, 1, tzinfo=BrokenZone()), "no valid UTC offset"),
    ],
)
def test_stored_times_that_are_not_times(value: object, says: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        stored_timestamp(value, field="created_at")


def test_query_bounds_need_only_a_utc_equivalent() -> None:
    assert time_bound(None, field="since") is None
    widest = datetime.max.replace(tzinfo=UTC)
    assert time_bound(widest, field="until") == widest
    for bad in (datetime(1, 1, 1, tzinfo=offset(1)), datetime(2024, 1, 1), "2024-01-01"):
        with pytest.raises(ValidationError):
            time_bound(bad, field="since")


# --- queries and paging ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"query": "a\x00b"}, "query"),
        ({"query": "\ud800"}, "query"),
        ({"since": datetime(1, 1, 1, tzinfo=offset(3))}, "since"),
        ({"until": datetime(9999, 12, 31, 23, tzinfo=offset(-3))}, "until"),
        ({"until": datetime(2024, 1, 1)}, "until"),
    ],
)
def test_search_requests_apply_the_rules(options: dict[str, Any], field: str) -> None:
    query = options.pop("query", "Lisbon")
    with pytest.raises(ValidationError) as raised:
        SearchRequest.build(query, **options)
    assert raised.value.field == field


def test_a_huge_query_is_checked_whole_and_cut() -> None:
    assert len(SearchRequest.build("Lisbon " * 100_000).query) <= 4000
    with pytest.raises(ValidationError):
        SearchRequest.build("Lisbon " * 100_000 + "\ud800")


@pytest.mark.parametrize(
    ("limit", "offset_", "order", "field"),
    [
        (0, 0, "asc", "limit"),
        (MAX_PAGE_LIMIT + 1, 0, "asc", "limit"),
        (True, 0, "asc", "limit"),
        (1.5, 0, "asc", "limit"),
        (1, -1, "asc", "offset"),
        (1, MAX_PAGE_OFFSET + 1, "asc", "offset"),
        (1, False, "asc", "offset"),
        (1, 0, "up", "order"),
        (1, 0, ["asc"], "order"),
    ],
)
def test_bad_paging(limit: object, offset_: object, order: object, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        check_page(limit, offset_, order)
    assert raised.value.field == field


def test_good_paging() -> None:
    check_page(1, 0, "asc")
    check_page(MAX_PAGE_LIMIT, MAX_PAGE_OFFSET, "desc")


def test_previews_are_short_and_errors_are_memfuse_errors() -> None:
    assert preview("x") == "'x'"
    assert len(preview("x" * 100_000)) < 100
    assert issubclass(ValidationError, MemfuseError)


def test_filter_names_follow_the_name_rules() -> None:
    assert validate_filter_name("session", None) is None
    assert validate_filter_name("session", "chat") == "chat"
    for bad in ("a\x00b", "\ud800", "", "x" * (MAX_NAME_LENGTH + 1), 5):
        with pytest.raises(ValidationError) as raised:
            validate_filter_name("agent", bad)
        assert raised.value.field == "agent"


def deep_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


class ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_previews_of_values_that_cannot_be_shown_name_their_type() -> None:
    assert preview(deep_list(5000)) == "<list>"
    assert preview(ReprFails()) == "<ReprFails>"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"role": deep_list(5000)}, "role"),
        ({"id": deep_list(5000)}, "id"),
        ({"name": deep_list(5000), "speaker": deep_list(5000)}, "name"),
        ({"content": deep_list(5000)}, "content"),
        ({"id": ReprFails()}, "id"),
    ],
)
def test_messages_with_deeply_nested_values_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_messages([{"role": "user", "content": "x"} | fields], max_chars=10)
    assert (raised.value.index, raised.value.field) == (0, field)


def test_message_ids() -> None:
    known = uuid.uuid4()
    assert parse_message_id(known) is known
    assert parse_message_id(str(known)) == known
    for bad in ("nope", "\ud800", 5, None, deep_list(5000)):
        with pytest.raises(ValidationError, match="must be a message id") as raised:
            parse_message_id(bad)
        assert raised.value.field == "id"


@pytest.mark.parametrize("value", ["no", 0, 1, None, [], "False"])
def test_a_yes_no_option_must_be_a_bool(value: object) -> None:
    with pytest.raises(ValidationError, match="must be True or False"):
        check_flag(value, field="all_sessions")
    assert check_flag(True, field="all_sessions") is True


def test_new_ids_are_distinct_random_version_4_ids() -> None:
    ids = new_ids(1000)
    assert len(set(ids)) == 1000
    assert {(found.version, found.variant) for found in ids} == {(4, uuid.RFC_4122)}
    assert new_ids(0) == []


def test_messages_without_ids_get_fresh_ones_and_given_ids_are_kept() -> None:
    given = uuid.uuid4()
    checked = validate_messages(
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b", "id": str(given)}],
        max_chars=100,
    )
    assert checked[0].id.version == 4 and not checked[0].client_id
    assert checked[1].id == given and checked[1].client_id
