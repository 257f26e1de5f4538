"""Conversation files for ``memfuse ingest``: native and LoCoMo parsing, and its error messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from memfuse.cli import main
from memfuse.config.urls import asyncpg_connect_args
from memfuse.errors import ValidationError
from memfuse.ingest import (
    NAMESPACE,
    ConversationData,
    SessionData,
    load_conversations,
    parse_conversations,
    parse_locomo_datetime,
)

LOCOMO_DEV = Path(
    os.environ.get(
        "MEMFUSE_LOCOMO_PATH",
        Path(__file__).resolve().parents[2] / "shared/data/locomo/locomo_dev.json",
    )
)


def write_json(tmp_path: Path, document: Any, name: str = "conversations.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# --- native format ------------------------------------------------------------------------------


def test_native_full_form(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        {
            "user": "alice",
            "agent": "coach",
            "sessions": [
                {
                    "name": "kickoff",
                    "messages": [
                        {
                            "role": "user",
                            "content": "I run on Tuesdays.",
                            "id": "0b6f3c7e-4a43-4bd4-9a55-4a3f5f0c9a11",
                            "created_at": "2024-03-01T09:00:00+00:00",
                            "speaker": "Alice",
                            "metadata": {"channel": "web"},
                        },
                        {"role": "assistant", "content": "Noted.", "name": "Coach"},
                    ],
                },
                {"messages": [{"role": "user", "content": "And swim on Fridays."}]},
            ],
        },
    )
    [conversation] = load_conversations(path)
    assert conversation == ConversationData(
        user="alice",
        agent="coach",
        sessions=(
            SessionData(
                "kickoff",
                (
                    {
                        "role": "user",
                        "content": "I run on Tuesdays.",
                        "id": "0b6f3c7e-4a43-4bd4-9a55-4a3f5f0c9a11",
                        "created_at": "2024-03-01T09:00:00+00:00",
                        "name": "Alice",
                        "metadata": {"channel": "web"},
                    },
                    {"role": "assistant", "content": "Noted.", "name": "Coach"},
                ),
            ),
            SessionData("session-2", ({"role": "user", "content": "And swim on Fridays."},)),
        ),
    )
    assert conversation.message_count == 3


def test_native_shorthand_is_one_session() -> None:
    [conversation] = parse_conversations(
        {"user": "bob", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert conversation.agent is None
    assert conversation.sessions == (
        SessionData("session-1", ({"role": "user", "content": "hi"},)),
    )


def test_native_list_of_users() -> None:
    conversations = parse_conversations(
        [
            {"user": "alice", "messages": [{"role": "user", "content": "a"}]},
            {"user": "bob", "agent": "helper", "messages": [{"role": "user", "content": "b"}]},
        ]
    )
    assert [(c.user, c.agent) for c in conversations] == [("alice", None), ("bob", "helper")]


def test_user_and_agent_arguments_fill_missing_names_only() -> None:
    conversations = parse_conversations(
        [
            {"messages": [{"role": "user", "content": "a"}]},
            {"user": "bob", "agent": "own", "messages": [{"role": "user", "content": "b"}]},
        ],
        user="cli-user",
        agent="cli-agent",
    )
    assert [(c.user, c.agent) for c in conversations] == [
        ("cli-user", "cli-agent"),
        ("bob", "own"),
    ]


def test_empty_list_and_empty_sessions_are_skipped() -> None:
    assert parse_conversations([]) == []
    [conversation] = parse_conversations(
        {
            "user": "a",
            "sessions": [{"messages": []}, {"messages": [{"role": "user", "content": "x"}]}],
        }
    )
    assert [s.name for s in conversation.sessions] == ["session-2"]


def test_null_optional_keys_are_left_out() -> None:
    [conversation] = parse_conversations(
        {
            "user": "a",
            "agent": None,
            "messages": [{"role": "user", "content": "x", "id": None, "metadata": None}],
        }
    )
    assert conversation.agent is None
    assert conversation.sessions[0].messages == ({"role": "user", "content": "x"},)


def test_python_values_are_kept_as_given() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    message_id = uuid.uuid4()
    [conversation] = parse_conversations(
        {
            "user": "a",
            "messages": [{"role": "tool", "content": "x", "created_at": when, "id": message_id}],
        }
    )
    message = conversation.sessions[0].messages[0]
    assert message["created_at"] is when
    assert message["id"] is message_id


def test_metadata_is_copied() -> None:
    metadata = {"k": 1}
    [conversation] = parse_conversations(
        {"user": "a", "messages": [{"role": "user", "content": "x", "metadata": metadata}]}
    )
    conversation.sessions[0].messages[0]["metadata"]["k"] = 2
    assert metadata == {"k": 1}


def _message(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": "hello"}
    message.update(changes)
    return {key: value for key, value in message.items() if value is not ...}


def _two_sessions(bad: dict[str, Any]) -> dict[str, Any]:
    """A document whose conversation 1, session 2, message 3 is ``bad``."""
    return {
        "user": "alice",
        "sessions": [
            {"messages": [_message()]},
            {"messages": [_message(), _message(), bad]},
        ],
    }


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        (_message(role=...), "role", "missing"),
        (_message(content=...), "content", "missing"),
        (_message(role=None), "role", "missing"),
        # The rest is Memory.add's own validation; only its position and field are ours.
        (_message(role=1), "role", ""),
        (_message(role="robot"), "role", "'robot'"),
        (_message(content=["x"]), "content", ""),
        (_message(content=" "), "content", ""),
        (_message(content="a\x00b"), "content", ""),
        (_message(content="x" * 101), "content", ""),
        (_message(metadata=[1]), "metadata", ""),
        (_message(metadata="x"), "metadata", ""),
        (_message(metadata={"k": "a\x00b"}), "metadata", ""),
        (_message(id=5), "id", ""),
        (_message(id="not-a-uuid"), "id", "not-a-uuid"),
        (_message(created_at=1700000000), "created_at", ""),
        (_message(created_at="yesterday"), "created_at", "yesterday"),
        (_message(created_at="2024-03-01T09:00:00"), "created_at", ""),
        (_message(name=True), "name", ""),
        (_message(name=""), "name", ""),
        (_message(speaker={}), "speaker", ""),
        (_message(name="A", speaker="B"), "speaker", ""),
        (_message(text="hi"), "text", ""),
    ],
)
def test_message_errors_name_file_position_and_field(
    tmp_path: Path, bad: dict[str, Any], field: str, problem: str
) -> None:
    path = write_json(tmp_path, [{"user": "x", "messages": [_message()]}, _two_sessions(bad)])
    with pytest.raises(ValidationError) as caught:
        load_conversations(path, max_chars=100)
    message = str(caught.value)
    where = f"{path}: conversation 2, session 2, message 3: field {field!r}: "
    assert message.startswith(where), message
    assert problem in message.removeprefix(where) and message.removeprefix(where).strip()
    assert "message 0" not in message, "positions count from 1, the library's index is hidden"
    assert caught.value.field == field


def test_message_is_checked_with_memory_adds_own_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a copy of the rules: a change to ``validate_message`` applies to files too."""
    from memfuse import ingest, validation

    def strict(raw: object, *, index: int, max_chars: int) -> validation.MessageInput:
        raise ValidationError("no messages today", index=index, field="content")

    monkeypatch.setattr(ingest, "validate_message", strict)
    with pytest.raises(ValidationError, match=r"^f\.json: conversation 1, session 1, message 1: "):
        parse_conversations({"user": "a", "messages": [_message()]}, source="f.json")


def test_same_name_and_speaker_is_one_name() -> None:
    [conversation] = parse_conversations(
        {"user": "a", "messages": [_message(name="Ann", speaker="Ann")]}
    )
    assert conversation.sessions[0].messages == (
        {"role": "user", "content": "hello", "name": "Ann"},
    )


def test_message_ids_are_unique_in_the_whole_file() -> None:
    """An id again in another session would fail the import half-way; it is refused first."""
    same = "0b6f3c7e-4a43-4bd4-9a55-4a3f5f0c9a11"
    document = [
        {"user": "a", "messages": [_message(id=same)]},
        {"user": "b", "sessions": [{"messages": [_message(), _message(id=same.upper())]}]},
    ]
    with pytest.raises(ValidationError) as caught:
        parse_conversations(document, source="f.json")
    assert str(caught.value) == (
        f"f.json: conversation 2, session 1, message 2: field 'id': {same} is also the id of "
        "conversation 1, session 1, message 1"
    )


def test_message_must_be_an_object() -> None:
    with pytest.raises(ValidationError, match=r"^f\.json: conversation 1, session 1, message 2: "):
        parse_conversations({"user": "a", "messages": [_message(), "hello"]}, source="f.json")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (42, "f.json: expected an object or a list of objects, got number"),
        ("text", "f.json: expected an object or a list of objects, got string"),
        ([{"user": "a", "messages": []}, 3], "f.json: conversation 2: expected an object"),
        ({"messages": []}, "f.json: conversation 1: field 'user': missing"),
        # Names are checked by the tenancy's own rule; only the position and field are ours.
        ({"user": "", "messages": []}, "f.json: conversation 1: field 'user': "),
        ({"user": "a\x00b", "messages": []}, "f.json: conversation 1: field 'user': "),
        ({"user": "a" * 256, "messages": []}, "f.json: conversation 1: field 'user': "),
        ({"user": 7, "messages": []}, "f.json: conversation 1: field 'user': "),
        ({"user": "a", "agent": " ", "messages": []}, "f.json: conversation 1: field 'agent': "),
        ({"user": "a"}, "f.json: conversation 1: field 'sessions': missing"),
        ({"user": "a", "sessions": {}}, "field 'sessions': expected an array, got object"),
        ({"user": "a", "messages": "hi"}, "session 1: field 'messages': expected an array"),
        (
            {"user": "a", "sessions": [], "messages": []},
            "f.json: conversation 1: field 'messages': give either 'sessions' or 'messages'",
        ),
        ({"user": "a", "session": []}, "f.json: conversation 1: field 'session': unknown key"),
        (
            {"user": "a", "sessions": [{"messages": []}, "x"]},
            "f.json: conversation 1, session 2: expected an object, got string",
        ),
        (
            {"user": "a", "sessions": [{"name": "s"}]},
            "f.json: conversation 1, session 1: field 'messages': missing",
        ),
        (
            {"user": "a", "sessions": [{"name": "", "messages": []}]},
            "f.json: conversation 1, session 1: field 'name': ",
        ),
        (
            {"user": "a", "sessions": [{"messages": [], "title": "t"}]},
            "f.json: conversation 1, session 1: field 'title': unknown key",
        ),
        (
            {"user": "a", "sessions": [{"name": "session-2", "messages": []}, {"messages": []}]},
            "f.json: conversation 1, session 2: field 'name': 'session-2' is also the name of "
            "session 1",
        ),
    ],
)
def test_document_errors_name_their_location(document: Any, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_conversations(document, source="f.json")
    assert expected in str(caught.value)


def test_user_argument_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"^f\.json: user argument: \S"):
        parse_conversations({"messages": []}, source="f.json", user="")
    with pytest.raises(ValidationError, match=r"^f\.json: agent argument: \S"):
        parse_conversations({"messages": []}, source="f.json", user="u", agent="x" * 256)


# --- loading ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ValidationError, match=re.escape(f"{path}: no such file")):
        load_conversations(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=re.escape(f"{tmp_path}: is a directory")):
        load_conversations(tmp_path)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "user": "a",\n  "messages": [,]\n}\n', encoding="utf-8")
    with pytest.raises(ValidationError) as caught:
        load_conversations(str(path))
    assert str(caught.value).startswith(f"{path}: invalid JSON at line 3, column 16: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"user": "caf\xe9"}')
    with pytest.raises(ValidationError, match="not UTF-8"):
        load_conversations(path)


# --- LoCoMo -------------------------------------------------------------------------------------


def locomo_sample(sample_id: str = "conv-1") -> dict[str, Any]:
    """Sessions 10, 1 and 2 out of order, session 11 with a date only, one empty turn."""
    return {
        "sample_id": sample_id,
        "qa": [{"question": "q", "answer": "a", "evidence": ["D1:1"], "category": 4}],
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Ben",
            "session_10_date_time": "10:04 am on 19 January, 2023",
            "session_10": [{"speaker": "Ann", "dia_id": "D10:1", "text": "Late one."}],
            "session_1_date_time": "1:56 pm on 8 May, 2022",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "Hi Ben!"},
                {
                    "speaker": "Ben",
                    "dia_id": "D1:2",
                    "text": "Look at this.",
                    "img_url": ["https://example.org/dog.jpg"],
                    "blip_caption": "a photo of a dog",
                    "query": "dog",
                },
                {"speaker": "Ann", "dia_id": "D1:3", "text": "   "},
                {"speaker": "Ann", "dia_id": "D1:4", "text": "", "blip_caption": "a cake"},
            ],
            "session_2_date_time": "12:00 am on 9 May, 2022",
            "session_2": [{"speaker": "Ben", "dia_id": "D2:1", "text": "Morning."}],
            "session_11_date_time": "3:00 pm on 1 February, 2023",
        },
    }


def test_locomo_sample() -> None:
    [conversation] = parse_conversations([locomo_sample()])
    assert conversation.user == "locomo-conv-1"
    assert conversation.agent is None
    assert [s.name for s in conversation.sessions] == ["session_1", "session_2", "session_10"]
    first = conversation.sessions[0].messages
    assert [m["metadata"]["dia_id"] for m in first] == ["D1:1", "D1:2", "D1:4"]
    assert first[0] == {
        "id": str(uuid.uuid5(NAMESPACE, "conv-1/D1:1")),
        "role": "user",
        "name": "Ann",
        "content": "Hi Ben!",
        "created_at": datetime(2022, 5, 8, 13, 56, tzinfo=UTC),
        "metadata": {"dia_id": "D1:1", "sample_id": "conv-1"},
    }
    assert first[1]["content"] == "Look at this. [shares a photo: a photo of a dog]"
    assert first[1]["metadata"] == {
        "dia_id": "D1:2",
        "sample_id": "conv-1",
        "img_url": ["https://example.org/dog.jpg"],
    }
    assert first[2]["content"] == "[shares a photo: a cake]"
    assert {m["created_at"] for m in first} == {datetime(2022, 5, 8, 13, 56, tzinfo=UTC)}
    assert conversation.sessions[1].messages[0]["created_at"] == datetime(2022, 5, 9, tzinfo=UTC)
    assert conversation.message_count == 5


def test_locomo_ids_are_stable_and_distinct() -> None:
    document = [locomo_sample("conv-1"), locomo_sample("conv-2")]
    first = parse_conversations(document)
    again = parse_conversations(json.loads(json.dumps(document)))
    ids = [m["id"] for c in first for s in c.sessions for m in s.messages]
    assert ids == [m["id"] for c in again for s in c.sessions for m in s.messages]
    assert len(set(ids)) == len(ids) == 10
    assert all(uuid.UUID(i).version == 5 for i in ids)


def test_locomo_single_sample_and_arguments(tmp_path: Path) -> None:
    [conversation] = load_conversations(
        write_json(tmp_path, locomo_sample()), user="me", agent="bench"
    )
    assert (conversation.user, conversation.agent) == ("me", "bench")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("sample_id"), "f.json: sample 1: field 'sample_id': missing"),
        (lambda s: s.update(conversation=[]), "sample 1 (conv-1): field 'conversation': expected"),
        (
            lambda s: s["conversation"].pop("session_2_date_time"),
            "f.json: sample 1 (conv-1): field 'session_2_date_time': missing",
        ),
        (
            lambda s: s["conversation"].update(session_2_date_time="yesterday"),
            "field 'session_2_date_time': not a LoCoMo date and time",
        ),
        (
            lambda s: s["conversation"].update(session_2={"x": 1}),
            "field 'session_2': expected an array of turns, got object",
        ),
        (
            lambda s: s["conversation"]["session_2"][0].pop("dia_id"),
            "f.json: sample 1 (conv-1), session_2, turn 1: field 'dia_id': missing",
        ),
        (
            lambda s: s["conversation"]["session_2"][0].update(text=3),
            "session_2, turn 1: field 'text': expected a string, got number",
        ),
        (
            lambda s: s["conversation"]["session_1"].append("turn"),
            "f.json: sample 1 (conv-1), session_1, turn 5: expected an object, got string",
        ),
    ],
)
def test_locomo_errors_name_their_location(change: Any, expected: str) -> None:
    sample = locomo_sample()
    change(sample)
    with pytest.raises(ValidationError) as caught:
        parse_conversations([sample], source="f.json")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["conversation"]["session_2"][0].update(text="a\x00b"),
            "f.json: sample 1 (conv-1), session_2, turn 1: field 'text': ",
        ),
        (
            lambda s: s["conversation"]["session_2"][0].update(speaker="B" * 256),
            "f.json: sample 1 (conv-1), session_2, turn 1: field 'speaker': ",
        ),
        (
            lambda s: s["conversation"]["session_2"][0].update(dia_id="D1:1"),
            "f.json: sample 1 (conv-1), session_2, turn 1: field 'dia_id': "
            f"{uuid.uuid5(NAMESPACE, 'conv-1/D1:1')} is also the id of "
            "sample 1 (conv-1), session_1, turn 1",
        ),
    ],
)
def test_locomo_turns_are_checked_like_messages(change: Any, expected: str) -> None:
    sample = locomo_sample()
    change(sample)
    with pytest.raises(ValidationError) as caught:
        parse_conversations([sample], source="f.json")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_locomo_sample_ids_are_unique() -> None:
    with pytest.raises(ValidationError, match=r"sample 2 \(conv-1\), session_1, turn 1: field "):
        parse_conversations([locomo_sample(), locomo_sample()], source="f.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:56 pm on 8 May, 2023", datetime(2023, 5, 8, 13, 56, tzinfo=UTC)),
        ("10:04 am on 19 January, 2023", datetime(2023, 1, 19, 10, 4, tzinfo=UTC)),
        ("12:00 am on 1 March, 2024", datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        ("12:30 pm on 29 February, 2024", datetime(2024, 2, 29, 12, 30, tzinfo=UTC)),
        ("9:05 PM on 3 Dec 2022", datetime(2022, 12, 3, 21, 5, tzinfo=UTC)),
    ],
)
def test_parse_locomo_datetime(text: str, expected: datetime) -> None:
    assert parse_locomo_datetime(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "13:00 pm on 8 May, 2023",
        "0:10 am on 8 May, 2023",
        "1:61 pm on 8 May, 2023",
        "1:56 pm on 31 April, 2023",
        "1:56 pm on 8 Maybe, 2023",
        "1:56 on 8 May, 2023",
    ],
)
def test_parse_locomo_datetime_rejects(text: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(repr(text))):
        parse_locomo_datetime(text)


@pytest.mark.skipif(not LOCOMO_DEV.is_file(), reason=f"LoCoMo dev split not at {LOCOMO_DEV}")
def test_locomo_dev_file() -> None:
    conversations = load_conversations(LOCOMO_DEV)
    raw = json.loads(LOCOMO_DEV.read_text(encoding="utf-8"))
    turns_with_text = sum(
        1
        for sample in raw
        for key, turns in sample["conversation"].items()
        if re.fullmatch(r"session_\d+", key) and isinstance(turns, list)
        for turn in turns
        if turn.get("text", "").strip() or turn.get("blip_caption")
    )
    assert len(conversations) == 5
    assert len({c.user for c in conversations}) == 5
    ids = [m["id"] for c in conversations for s in c.sessions for m in s.messages]
    assert len(ids) == len(set(ids)) == sum(c.message_count for c in conversations)
    assert len(ids) == turns_with_text
    for conversation in conversations:
        numbers = [int(s.name.removeprefix("session_")) for s in conversation.sessions]
        assert numbers == sorted(numbers)
        for session in conversation.sessions:
            assert len({m["created_at"] for m in session.messages}) == 1


# --- atomic import --------------------------------------------------------------------------


async def stored_rows(database_url: str) -> dict[str, int]:
    """Rows of memfuse's users, sessions and messages tables (0 where none was created)."""
    connection = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        counts = {}
        for table in ("users", "sessions", "messages"):
            exists = await connection.fetchval("SELECT to_regclass($1)", f"memfuse.{table}")
            counts[table] = (
                await connection.fetchval(f"SELECT count(*) FROM memfuse.{table}") if exists else 0
            )
        return counts
    finally:
        await connection.close()


def native_file_with_a_bad_last_message(tmp_path: Path) -> Path:
    """Two users' conversations, valid but for the very last message's naive ``created_at``."""
    good = [_message(created_at="2024-03-01T09:00:00+00:00") for _ in range(3)]
    bad = _message(created_at="2024-03-01T09:00:00")
    return write_json(
        tmp_path,
        [
            {"user": "ann", "messages": good},
            {"user": "ben", "sessions": [{"messages": good}, {"messages": [*good[:2], bad]}]},
        ],
    )


def test_ingest_checks_the_whole_file_before_writing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = native_file_with_a_bad_last_message(tmp_path)
    code = main(["--database-url", database_url, "ingest", str(path), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(
        f"memfuse: {path}: conversation 2, session 2, message 3: field 'created_at': "
    ), error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert asyncio.run(stored_rows(database_url)) == {"users": 0, "sessions": 0, "messages": 0}


def test_ingest_checks_a_whole_locomo_file_before_writing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = locomo_sample("conv-2")
    last["conversation"]["session_10"][0]["text"] = "a\x00b"  # the file's last turn
    path = write_json(tmp_path, [locomo_sample("conv-1"), last])
    code = main(["--database-url", database_url, "ingest", str(path), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(
        f"memfuse: {path}: sample 2 (conv-2), session_10, turn 1: field 'text': "
    ), error
    assert asyncio.run(stored_rows(database_url)) == {"users": 0, "sessions": 0, "messages": 0}


def test_ingest_applies_the_configured_content_limit(
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEMFUSE_MAX_MESSAGE_CHARS", "10")
    path = write_json(tmp_path, {"user": "ann", "messages": [_message(content="x" * 11)]})
    assert main(["--database-url", database_url, "ingest", str(path), "--quiet"]) == 2
    assert "session 1, message 1: field 'content': " in capsys.readouterr().err
    assert asyncio.run(stored_rows(database_url))["messages"] == 0
