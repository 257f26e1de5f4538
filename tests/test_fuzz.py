"""Property tests of the public API against the real database: whatever a caller passes, each
call either succeeds or raises a ``MemfuseError``, never a driver, encoding, overflow or
recursion error; and a rejected call leaves the stored rows as they were.

One ``MemFuse`` per test function (Hypothesis runs every example against it); the examples are
hostile on purpose: lone surrogates, NUL and other control characters, huge strings, deeply
nested metadata, timestamps at and beyond the ends of ``datetime``'s range, odd types.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import parts
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from sqlalchemy import text

from memfuse.errors import MemfuseError
from memfuse.memory import MemFuse, Memory
from memfuse.validation import MAX_METADATA_DEPTH, check_metadata

T = TypeVar("T")

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Few examples per test: each costs database round trips, and the suite must stay quick."""

ID_POOL = [uuid.UUID(int=n) for n in range(1, 6)]
"""Ids reused across examples, so retries and ids taken by another session come up."""

# --- strategies -----------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about nine times in ten, else ``bad``: calls have many arguments, and enough of
    them must get through to exercise the database as well as every refusal."""
    return st.sampled_from(range(10)).flatmap(lambda draw: bad if draw == 0 else good)


any_character = st.characters(exclude_categories=())  # surrogates and NUL included
storable_character = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
good_text = st.one_of(
    st.text(storable_character, min_size=1, max_size=30).filter(str.strip),
    st.sampled_from(["Lisbon", "I moved to Porto yesterday.", "😀 東京 naïve", "\x01\x1b[31m x"]),
)
hostile_text = st.one_of(
    st.text(any_character, max_size=12),
    st.text(
        st.sampled_from("\x00\x01\x1b\x7f\u200b\u202e\ufeff\ud800\udc00\udfff a\n"), max_size=6
    ),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "\ud83d\ude00",
            "a" * 255,
            "a" * 256,
            "'; DROP TABLE memfuse.messages; --",
            "x" * 200_000,
        ]
    ),
)
odd_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=4), st.just(object())
)
text_value = mostly(good_text, st.one_of(hostile_text, odd_value))
fixed_offset = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
edge_instant = st.sampled_from(
    [
        datetime.min,
        datetime(1, 1, 1, 12),
        datetime(1, 1, 2),
        datetime(9999, 12, 30, 12),
        datetime(9999, 12, 31, 12),
        datetime.max,
    ]
)
good_timestamp = st.one_of(
    st.datetimes(timezones=fixed_offset),
    st.datetimes(timezones=fixed_offset).map(datetime.isoformat),
)
timestamp = mostly(
    good_timestamp,
    st.one_of(
        st.builds(lambda moment, zone: moment.replace(tzinfo=zone), edge_instant, fixed_offset),
        st.builds(lambda moment: moment.replace(tzinfo=UTC), edge_instant),
        st.datetimes(),  # naive
        st.builds(
            lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
            edge_instant,
            fixed_offset,
        ),
        hostile_text,
        odd_value,
    ),
)


@dataclass(frozen=True)
class Nested:
    """Stands for metadata ``depth`` levels deep until the call: Hypothesis pretty-prints its
    examples recursively, and the real value would exhaust the recursion limit there."""

    depth: int

    def build(self) -> dict[str, Any]:
        value: Any = "leaf"
        for level in range(self.depth - 1):
            value = [value] if level % 2 else {"k": value}
        return {"deep": value}


def built(value: T) -> T | dict[str, Any]:
    """``value``, with a :class:`Nested` stand-in replaced by the metadata it stands for."""
    return value.build() if isinstance(value, Nested) else value


def built_batch(batch: Any) -> Any:
    """A batch of messages with their ``Nested`` metadata built."""
    if not isinstance(batch, list):
        return batch
    return [
        item | {"metadata": built(item["metadata"])}
        if isinstance(item, dict) and "metadata" in item
        else item
        for item in batch
    ]


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False)
)
good_metadata = st.one_of(
    st.none(),
    st.recursive(
        st.dictionaries(good_text, json_leaf | good_text, max_size=3),
        lambda children: st.dictionaries(
            good_text, children | st.lists(children | json_leaf, max_size=3), max_size=3
        ),
        max_leaves=8,
    ),
)
metadata = mostly(
    good_metadata,
    st.one_of(
        st.recursive(
            json_leaf | st.floats() | hostile_text,
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(hostile_text | st.integers(), children, max_size=3)
            ),
            max_leaves=8,
        ),
        st.sampled_from([MAX_METADATA_DEPTH, MAX_METADATA_DEPTH + 1, 5000]).map(Nested),
        odd_value,
    ),
)
message_id = mostly(
    st.one_of(st.none(), st.uuids(), st.sampled_from(ID_POOL), st.sampled_from(ID_POOL).map(str)),
    hostile_text,
)
role = mostly(st.sampled_from(["user", "assistant", "system", "tool"]), hostile_text | odd_value)
message = st.fixed_dictionaries(
    {"role": role, "content": text_value},
    optional={
        "id": message_id,
        "name": text_value,
        "metadata": metadata,
        "created_at": timestamp,
    },
)
message_with_odd_keys = st.fixed_dictionaries(
    {"role": role, "content": text_value},
    optional={"speaker": text_value, "name": text_value, "mood": hostile_text},
)
messages = mostly(
    st.lists(message, min_size=1, max_size=3),
    st.one_of(
        st.lists(st.one_of(message_with_odd_keys, odd_value, hostile_text), max_size=2),
        hostile_text,
        odd_value,
        message,
    ),
)
number = mostly(
    st.none() | st.integers(min_value=1, max_value=50),
    st.one_of(
        st.integers(min_value=-3, max_value=1_100),
        st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
        st.booleans(),
        st.floats(),
        hostile_text,
    ),
)


def choices(allowed: list[str]) -> st.SearchStrategy[Any]:
    """A ``layers``/``methods`` argument: mostly a subset of ``allowed`` or ``None``."""
    return mostly(
        st.none() | st.lists(st.sampled_from(allowed), min_size=1),
        st.one_of(
            st.lists(st.sampled_from([*allowed, "m3", ""]), max_size=3), hostile_text, odd_value
        ),
    )


bound = mostly(
    st.none() | st.datetimes(timezones=fixed_offset),
    st.one_of(
        st.builds(lambda moment, zone: moment.replace(tzinfo=zone), edge_instant, fixed_offset),
        st.builds(lambda moment: moment.replace(tzinfo=UTC), edge_instant),
        st.datetimes(),  # naive
        good_timestamp,
        hostile_text,
        odd_value,
    ),
)
good_filter = st.sampled_from([None, None, "default", "chat-0", "no such name"])
hostile_filter = mostly(good_filter, st.one_of(hostile_text, odd_value))
good_name = st.one_of(
    st.sampled_from(["alice", "bob", "chat-0", "default"]),
    st.text(storable_character, min_size=1, max_size=40).filter(str.strip),
)
user_name = mostly(good_name, st.one_of(hostile_text, odd_value))
optional_name = mostly(st.none() | good_name, st.one_of(hostile_text, odd_value))
page_limit = mostly(st.integers(min_value=1, max_value=50), number)
page_offset = mostly(st.integers(min_value=0, max_value=10), number)
page_order = mostly(st.sampled_from(["asc", "desc"]), st.one_of(hostile_text, odd_value))


# --- the memory under test ------------------------------------------------------------------


@dataclass
class Target:
    """One started MemFuse and a few memories of two users, shared by every example."""

    mf: MemFuse
    memories: list[Memory] = field(default_factory=list)
    seeded: list[uuid.UUID] = field(default_factory=list)

    async def counts(self) -> tuple[int, ...]:
        """Rows per table that a rejected call must leave alone, and the sessions' counters."""
        async with parts.db(self.mf) as db:
            row = (
                await db.execute(
                    text(
                        "SELECT (SELECT count(*) FROM memfuse.users),"
                        " (SELECT count(*) FROM memfuse.agents),"
                        " (SELECT count(*) FROM memfuse.sessions),"
                        " (SELECT count(*) FROM memfuse.messages),"
                        " (SELECT coalesce(sum(message_count), 0) FROM memfuse.sessions)"
                    )
                )
            ).one()
        return tuple(int(value) for value in row)

    async def snapshot(self) -> list[tuple[Any, ...]]:
        """Every message as stored, to show an update that was refused changed nothing."""
        async with parts.db(self.mf) as db:
            rows = await db.execute(
                text(
                    "SELECT id, seq, content, name, metadata::text, created_at, updated_at"
                    " FROM memfuse.messages ORDER BY id"
                )
            )
            return [tuple(row) for row in rows]


@pytest.fixture
async def target(database_url: str) -> AsyncIterator[Target]:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        found = Target(mf)
        for user, session in (("alice", "chat-0"), ("alice", "chat-1"), ("bob", "chat-0")):
            found.memories.append(await mf.init(user, session=session))
        found.seeded = await found.memories[0].add(
            [{"role": "user", "content": f"seed {i}: flying to Lisbon"} for i in range(3)]
        )
        yield found


def same_json(stored: object, sent: object) -> bool:
    """Whether ``stored`` is ``sent`` as jsonb gives it back: numbers are ``numeric`` there, so
    a float written with an exponent (6.2e+16) reads back as an int equal to float precision."""
    if isinstance(stored, dict) and isinstance(sent, dict):
        return stored.keys() == sent.keys() and all(same_json(stored[k], sent[k]) for k in sent)
    if isinstance(stored, list) and isinstance(sent, list):
        return len(stored) == len(sent) and all(map(same_json, stored, sent))
    numbers = (int, float)
    if (
        isinstance(stored, numbers)
        and isinstance(sent, numbers)
        and not isinstance(stored, bool)
        and not isinstance(sent, bool)
        and stored != sent
    ):
        try:
            return float(stored) == float(sent)
        except OverflowError:
            return False
    return stored == sent


async def outcome(call: Awaitable[T]) -> T | MemfuseError:
    """The call's result, or the ``MemfuseError`` it raised; any other exception fails.

    The outcome is a Hypothesis event: ``--hypothesis-show-statistics`` shows how often the
    examples got past validation.
    """
    try:
        result = await call
    except MemfuseError as error:
        note_outcome(f"refused: {type(error).__name__}")
        return error
    note_outcome("accepted")
    return result


def note_outcome(what: str) -> None:
    if currently_in_test_context():  # plain tests use outcome() too
        event(what)


# --- the properties -------------------------------------------------------------------------


@FUZZ
@given(user=user_name, agent=optional_name, session=optional_name)
@example(user="\ud800", agent=None, session=None)
@example(user="ok", agent="a\x00b", session=None)
@example(user="ok", agent=None, session="x" * 256)
async def test_init_accepts_names_or_refuses_them_without_writing(
    target: Target, user: Any, agent: Any, session: Any
) -> None:
    before = await target.counts()
    result = await outcome(target.mf.init(user, agent=agent, session=session))
    if isinstance(result, MemfuseError):
        assert await target.counts() == before
    else:
        assert (result.user, result.agent) == (user, agent if agent is not None else "default")


@FUZZ
@given(batch=messages, which=st.integers(0, 2))
@example(batch=[{"role": "user", "content": "\ud800"}], which=0)
@example(batch=[{"role": "user", "content": "ok", "metadata": Nested(5000)}], which=0)
@example(
    batch=[{"role": "user", "content": "ok", "created_at": datetime(1, 1, 1, tzinfo=UTC)}],
    which=0,
)
@example(batch=[{"role": "user", "content": "ok", "id": ID_POOL[0]}], which=1)
@example(batch=[{"role": "user", "content": "ok", "metadata": {"0": 6.23139135963329e16}}], which=0)
async def test_add_stores_the_call_or_nothing(target: Target, batch: Any, which: int) -> None:
    memory = target.memories[which]
    before = await target.counts()
    result = await outcome(memory.add(built_batch(batch)))
    if isinstance(result, MemfuseError):
        assert await target.counts() == before, f"{result!r} wrote something"
        return
    for message_id, sent in zip(result, batch, strict=True):
        row = await memory.get_message(message_id)
        assert row is not None and row.session_id == memory.scope.session_id
        if sent.get("id") is not None:
            continue  # a client id may be a retry: the first message's values stay
        assert row.content == sent["content"]
        assert same_json(row.metadata, check_metadata(built(sent.get("metadata"))))
        given_time = sent.get("created_at")
        if isinstance(given_time, str):
            given_time = datetime.fromisoformat(given_time)
        if given_time is not None:
            assert row.created_at == given_time, "an accepted time reads back as given"


@FUZZ
@given(
    query=text_value,
    top_k=number,
    max_tokens=number,
    layers=choices(["m0", "m1", "m2"]),
    methods=choices(["vector", "text"]),
    unit=mostly(st.sampled_from(["message", "item"]), hostile_text | odd_value),
    agent=good_filter,
    session=good_filter,
    since=bound,
    until=bound,
    include_unembedded=mostly(st.booleans(), odd_value),
)
@example(
    query="flight\x00to Lisbon",
    top_k=5,
    max_tokens=None,
    layers=None,
    methods=None,
    unit="message",
    agent=None,
    session=None,
    since=None,
    until=None,
    include_unembedded=True,
)
@example(
    query="Lisbon",
    top_k=5,
    max_tokens=None,
    layers=None,
    methods=None,
    unit="message",
    agent=None,
    session=None,
    since=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
    until=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-1))),
    include_unembedded=True,
)
async def test_query_answers_or_refuses(
    target: Target,
    query: Any,
    top_k: Any,
    max_tokens: Any,
    layers: Any,
    methods: Any,
    unit: Any,
    agent: Any,
    session: Any,
    since: Any,
    until: Any,
    include_unembedded: Any,
) -> None:
    before = await target.counts()
    result = await outcome(
        target.memories[0].query(
            query,
            top_k,
            max_tokens=max_tokens,
            layers=layers,
            methods=methods,
            unit=unit,
            agent=agent,
            session=session,
            since=since,
            until=until,
            include_unembedded=include_unembedded,
        )
    )
    assert await target.counts() == before, "a query writes nothing"
    if not isinstance(result, MemfuseError):
        assert all(item.content for item in result)


@FUZZ
@given(agent=hostile_filter, session=hostile_filter)
@example(agent=None, session="a\x00b")
@example(agent="\ud800", session=None)
async def test_query_filters_answer_or_refuse(target: Target, agent: Any, session: Any) -> None:
    await outcome(target.memories[0].query("Lisbon", agent=agent, session=session))


@FUZZ
@given(
    which=mostly(
        st.integers(0, 2),  # a seeded message
        st.sampled_from([-1, -2, -3]),  # another user's id, an unknown id, a hostile id
    ),
    hostile_id=st.one_of(hostile_text, odd_value),
    content=mostly(st.none(), text_value),
    new_metadata=metadata,
)
@example(which=0, hostile_id="", content="\ud800", new_metadata=None)
@example(which=0, hostile_id="", content=None, new_metadata=Nested(5000))
@example(which=0, hostile_id="", content=None, new_metadata={"\ud800": 1})
async def test_update_message_changes_it_or_nothing(
    target: Target, which: int, hostile_id: Any, content: Any, new_metadata: Any
) -> None:
    if which >= 0:
        message_id: Any = target.seeded[which]
    elif which == -1:
        [message_id] = await target.memories[2].add([{"role": "user", "content": "bob's"}])
    elif which == -2:
        message_id = uuid.uuid4()
    else:
        message_id = hostile_id
    before = await target.snapshot()
    result = await outcome(
        target.memories[0].update_message(message_id, content=content, metadata=built(new_metadata))
    )
    if isinstance(result, MemfuseError):
        assert await target.snapshot() == before, f"{result!r} changed a message"
    else:
        assert which >= 0, "only the caller's own messages can change"
        if content is not None:
            assert result.content == content


@FUZZ
@given(message_id=mostly(st.uuids() | st.sampled_from(ID_POOL), hostile_text | odd_value))
async def test_get_and_delete_message_answer_or_refuse(target: Target, message_id: Any) -> None:
    memory = target.memories[0]
    found = await outcome(memory.get_message(message_id))
    assert found is None or isinstance(found, MemfuseError)
    before = await target.counts()
    if isinstance(await outcome(memory.delete_message(message_id)), MemfuseError):
        assert await target.counts() == before


@FUZZ
@given(limit=page_limit, offset=page_offset, order=page_order, all_sessions=st.booleans())
@example(limit=5, offset=2**63, order="asc", all_sessions=False)
async def test_paging_answers_or_refuses(
    target: Target, limit: Any, offset: Any, order: Any, all_sessions: bool
) -> None:
    memory = target.memories[0]
    for method in (memory.list_messages, memory.list_episodes, memory.list_facts):
        result = await outcome(
            method(limit=limit, offset=offset, order=order, all_sessions=all_sessions)
        )
        if not isinstance(result, MemfuseError):
            assert isinstance(result, list) and len(result) <= limit


@pytest.mark.parametrize("method", ["get_message", "update_message", "delete_message"])
async def test_message_ids_nested_deep_are_refused(target: Target, method: str) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    memory = target.memories[0]
    before = await target.counts()
    if method == "update_message":
        call = memory.update_message(deep, content="new")  # type: ignore[arg-type]
    else:
        call = getattr(memory, method)(deep)
    assert isinstance(await outcome(call), MemfuseError)
    assert await target.counts() == before
