"""Read conversation files for ``memfuse ingest``: the native format and LoCoMo.

This module turns a JSON document into :class:`ConversationData` whose messages are dicts as
``Memory.add`` takes them. Every message and name of the whole file is checked here with the
library's own rules (``memfuse.validation.validate_message`` and ``validate_name``), and
every problem is a :class:`~memfuse.errors.ValidationError` naming the file and the 1-based
position: an import writes nothing unless the whole file would be accepted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memfuse.config import Settings
from memfuse.errors import ValidationError
from memfuse.progress import progress_bar
from memfuse.validation import validate_message, validate_name

if TYPE_CHECKING:
    from memfuse.memory import MemFuse

__all__ = [
    "NAMESPACE",
    "ConversationData",
    "IngestReport",
    "SessionData",
    "ingest_conversations",
    "load_conversations",
    "parse_conversations",
    "parse_locomo_datetime",
    "read_document",
]

#: Namespace of the ids derived for LoCoMo turns; fixed so re-imports produce the same ids.
NAMESPACE = uuid.UUID("bf368f23-e42a-42a0-9f56-3a0cc2f356a3")

_CONVERSATION_KEYS = frozenset({"user", "agent", "sessions", "messages"})
_SESSION_KEYS = frozenset({"name", "messages"})
LOCOMO_SESSION = re.compile(r"session_(\d+)")
_LOCOMO_FIELDS = {"content": "text", "name": "speaker", "id": "dia_id"}
"""A turn's key for each message field, so errors name the key the file has."""


def locomo_turn_id(sample_id: str, dia_id: str) -> uuid.UUID:
    """The message id of one LoCoMo turn: fixed, so a re-import is idempotent."""
    return uuid.uuid5(NAMESPACE, f"{sample_id}/{dia_id}")


@dataclass(frozen=True, slots=True)
class SessionData:
    """One session's messages, in file order, as dicts ``Memory.add`` accepts."""

    name: str
    messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ConversationData:
    """The sessions of one user (and agent); ``agent`` None means the default agent."""

    user: str
    agent: str | None
    sessions: tuple[SessionData, ...]

    @property
    def message_count(self) -> int:
        """Messages over all sessions, so a caller can size a progress bar up front."""
        return sum(len(session.messages) for session in self.sessions)


INGEST_CHUNK = 200
"""Messages per ``add()`` call when importing: each call is one atomic, idempotent write."""


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What an import wrote: users, sessions and messages sent to ``Memory.add``."""

    users: int
    sessions: int
    messages: int


async def ingest_conversations(
    memfuse: MemFuse, conversations: list[ConversationData], *, progress: bool = True
) -> IngestReport:
    """Write conversations through the normal write path, session by session, in chunks.

    Each chunk is one atomic ``add()``; as messages carry stable ids (LoCoMo) a re-run after
    a failure adds nothing twice. Layer processing follows in the background or on flush.
    """
    total = sum(conversation.message_count for conversation in conversations)
    sessions = 0
    with progress_bar(total, desc="ingest", unit="msg", enabled=progress) as bar:
        for conversation in conversations:
            for session in conversation.sessions:
                memory = await memfuse.init(conversation.user, conversation.agent, session.name)
                sessions += 1
                for start in range(0, len(session.messages), INGEST_CHUNK):
                    chunk = session.messages[start : start + INGEST_CHUNK]
                    await memory.add(chunk)
                    bar.update(len(chunk))
    return IngestReport(
        users=len({c.user for c in conversations}), sessions=sessions, messages=total
    )


def load_conversations(
    path: str | Path,
    *,
    user: str | None = None,
    agent: str | None = None,
    max_chars: int | None = None,
) -> list[ConversationData]:
    """Read, parse and check a JSON file; any problem is a ValidationError naming the path.

    ``max_chars`` is the content limit ``Memory.add`` will apply (the ``max_message_chars``
    setting; its default when None).
    """
    return parse_conversations(
        read_document(path), source=str(path), user=user, agent=agent, max_chars=max_chars
    )


def read_document(path: str | Path) -> Any:
    """The decoded JSON of a file; any I/O or JSON problem is a ValidationError naming it."""
    source = str(path)
    file = Path(path)
    if file.is_dir():
        raise ValidationError(f"{source}: is a directory, not a JSON file")
    try:
        with file.open(encoding="utf-8") as stream:
            document = json.load(stream)
    except FileNotFoundError:
        raise ValidationError(f"{source}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValidationError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return document


def parse_conversations(
    document: Any,
    *,
    source: str = "<document>",
    user: str | None = None,
    agent: str | None = None,
    max_chars: int | None = None,
) -> list[ConversationData]:
    """Parse and check an already decoded document, detecting LoCoMo versus the native format.

    ``user``/``agent`` fill a native conversation's missing user/agent; for LoCoMo they replace
    the derived ``locomo-<sample_id>`` user and the (absent) agent. Every message is checked as
    ``Memory.add`` would check it, and message ids must be unique in the whole file.
    """
    for kind, value in (("user", user), ("agent", agent)):
        if value is not None:
            _check_name(kind, value, f"{source}: {kind} argument", None)
    checks = _Checks(source, Settings().max_message_chars if max_chars is None else max_chars)
    if _is_locomo(document):
        samples = document if isinstance(document, list) else [document]
        return [
            _parse_locomo_sample(
                sample, f"{source}: sample {number}", checks, user=user, agent=agent
            )
            for number, sample in enumerate(samples, start=1)
        ]
    if isinstance(document, Mapping):
        items: list[Any] = [document]
    elif isinstance(document, list):
        items = document
    else:
        raise ValidationError(
            f"{source}: expected an object or a list of objects, got {_type_name(document)}"
        )
    return [
        _parse_native(item, f"{source}: conversation {number}", checks, user=user, agent=agent)
        for number, item in enumerate(items, start=1)
    ]


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_LOCOMO_DATETIME = re.compile(
    r"\s*(\d{1,2}):(\d{2})\s*([ap])\.?m\.?\s+on\s+(\d{1,2})\s+([a-z]+)\.?,?\s+(\d{4})\s*",
    re.IGNORECASE,
)


def parse_locomo_datetime(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` as an aware UTC datetime.

    LoCoMo gives no time zone; UTC keeps the turns' order and dates. English month names are
    matched directly because ``strptime``'s ``%B`` depends on the process locale.
    """
    match = _LOCOMO_DATETIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValidationError(f"not a LoCoMo date and time ('1:56 pm on 8 May, 2023'): {text!r}")
    hour, minute, meridiem, day, month_name, year = match.groups()
    month = _MONTHS.get(month_name.lower())
    clock = int(hour)
    if month is None or not 1 <= clock <= 12:
        raise ValidationError(f"not a LoCoMo date and time ('1:56 pm on 8 May, 2023'): {text!r}")
    clock = clock % 12 + (12 if meridiem.lower() == "p" else 0)
    try:
        return datetime(int(year), month, int(day), clock, int(minute), tzinfo=UTC)
    except ValueError as exc:
        raise ValidationError(f"invalid LoCoMo date and time {text!r}: {exc}") from None


# --- native format ---------------------------------------------------------------------------


def _parse_native(
    item: Any, where: str, checks: _Checks, *, user: str | None, agent: str | None
) -> ConversationData:
    """One native conversation: the full form with ``sessions`` or the ``messages`` shorthand."""
    if not isinstance(item, Mapping):
        raise ValidationError(f"{where}: expected an object, got {_type_name(item)}")
    _reject_unknown(item, _CONVERSATION_KEYS, where)
    user_name = _optional_name(item, "user", "user", where)
    if user_name is None:
        user_name = user
    if user_name is None:
        raise _error(where, "user", "missing (give it in the file or with --user)")
    agent_name = _optional_name(item, "agent", "agent", where)
    if agent_name is None:
        agent_name = agent

    if "sessions" in item and "messages" in item:
        raise _error(where, "messages", "give either 'sessions' or 'messages', not both")
    if "messages" in item:
        messages = _parse_messages(item["messages"], f"{where}, session 1", checks)
        sessions = [SessionData("session-1", messages)]
    elif "sessions" in item:
        raw_sessions = item["sessions"]
        if not isinstance(raw_sessions, list):
            raise _error(where, "sessions", f"expected an array, got {_type_name(raw_sessions)}")
        sessions = [
            _parse_native_session(raw, f"{where}, session {number}", number, checks)
            for number, raw in enumerate(raw_sessions, start=1)
        ]
    else:
        raise _error(where, "sessions", "missing (or give 'messages' for a single session)")

    seen: dict[str, int] = {}
    for number, session in enumerate(sessions, start=1):
        if session.name in seen:
            raise _error(
                f"{where}, session {number}",
                "name",
                f"{session.name!r} is also the name of session {seen[session.name]}",
            )
        seen[session.name] = number
    return ConversationData(
        user=user_name,
        agent=agent_name,
        sessions=tuple(session for session in sessions if session.messages),
    )


def _parse_native_session(raw: Any, where: str, number: int, checks: _Checks) -> SessionData:
    """A session object; its name defaults to ``session-<n>`` so re-imports find it again."""
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}: expected an object, got {_type_name(raw)}")
    _reject_unknown(raw, _SESSION_KEYS, where)
    name = _optional_name(raw, "name", "session", where)
    if "messages" not in raw:
        raise _error(where, "messages", "missing")
    return SessionData(
        name=name if name is not None else f"session-{number}",
        messages=_parse_messages(raw["messages"], where, checks),
    )


def _parse_messages(raw: Any, where: str, checks: _Checks) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise _error(where, "messages", f"expected an array, got {_type_name(raw)}")
    messages = []
    for number, item in enumerate(raw, start=1):
        place = f"{where}, message {number}"
        message = _parse_message(item, place)
        checks.message(message, place)
        if "speaker" in message:  # checked: equal to ``name`` if both were given
            message["name"] = message.pop("speaker")
        messages.append(message)
    return tuple(messages)


def _parse_message(raw: Any, where: str) -> dict[str, Any]:
    """A copy of the message with nulls dropped (an optional key set to null is absent).

    Only the file's own conventions are handled here; the values are checked by
    :meth:`_Checks.message` with the rules ``Memory.add`` applies.
    """
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}: expected an object, got {_type_name(raw)}")
    message = {key: value for key, value in raw.items() if value is not None}
    for required in ("role", "content"):
        if required not in message:
            raise _error(where, required, "missing")
    if isinstance(message.get("metadata"), Mapping):
        message["metadata"] = dict(message["metadata"])
    return message


# --- LoCoMo -------------------------------------------------------------------------------------


def _is_locomo(document: Any) -> bool:
    """LoCoMo samples carry ``conversation``, a key the native format does not have."""
    if isinstance(document, list) and document:
        document = document[0]
    return isinstance(document, Mapping) and "conversation" in document


def _parse_locomo_sample(
    sample: Any, where: str, checks: _Checks, *, user: str | None, agent: str | None
) -> ConversationData:
    """One LoCoMo sample: one conversation, one session per ``session_<n>`` with turns."""
    if not isinstance(sample, Mapping):
        raise ValidationError(f"{where}: expected a LoCoMo sample object, got {_type_name(sample)}")
    sample_id = sample.get("sample_id")
    if not isinstance(sample_id, str) or not sample_id.strip():
        problem = "missing" if sample_id is None else "expected a non-empty string"
        raise _error(where, "sample_id", problem)
    where = f"{where} ({sample_id})"
    conversation = sample.get("conversation")
    if not isinstance(conversation, Mapping):
        problem = "missing" if conversation is None else _expected("an object", conversation)
        raise _error(where, "conversation", problem)
    user_name = user if user is not None else f"locomo-{sample_id}"
    _check_name("user", user_name, where, "sample_id")

    numbered = []
    for key, turns in conversation.items():
        match = LOCOMO_SESSION.fullmatch(key) if isinstance(key, str) else None
        if match is None or turns is None:
            continue
        if not isinstance(turns, list):
            raise _error(where, key, f"expected an array of turns, got {_type_name(turns)}")
        numbered.append((int(match.group(1)), key, turns))
    numbered.sort()

    sessions = []
    for _, key, turns in numbered:
        date_key = f"{key}_date_time"
        date_text = conversation.get(date_key)
        if not isinstance(date_text, str):
            raise _error(where, date_key, "missing" if date_text is None else "not a string")
        try:
            created_at = parse_locomo_datetime(date_text)
        except ValidationError as exc:
            raise _error(where, date_key, str(exc)) from None
        messages = []
        for number, turn in enumerate(turns, start=1):
            place = f"{where}, {key}, turn {number}"
            message = _locomo_message(turn, place, sample_id, created_at)
            if message is not None:
                checks.message(message, place, _LOCOMO_FIELDS)
                messages.append(message)
        if messages:
            sessions.append(SessionData(key, tuple(messages)))
    return ConversationData(user=user_name, agent=agent, sessions=tuple(sessions))


def _locomo_message(
    turn: Any, where: str, sample_id: str, created_at: datetime
) -> dict[str, Any] | None:
    """A turn as a user message with a deterministic id; None for a turn with nothing to say."""
    if not isinstance(turn, Mapping):
        raise ValidationError(f"{where}: expected an object, got {_type_name(turn)}")
    for field in ("speaker", "dia_id"):
        value = turn.get(field)
        if not isinstance(value, str) or not value.strip():
            raise _error(
                where, field, "missing" if value is None else "expected a non-empty string"
            )
    text = turn.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise _error(where, "text", f"expected a string, got {_type_name(text)}")
    caption = turn.get("blip_caption")
    if caption is not None and not isinstance(caption, str):
        raise _error(where, "blip_caption", f"expected a string, got {_type_name(caption)}")
    content = text.strip()
    if caption and caption.strip():
        photo = f"[shares a photo: {caption.strip()}]"
        content = f"{content} {photo}" if content else photo
    if not content:
        return None
    dia_id = turn["dia_id"]
    metadata: dict[str, Any] = {"dia_id": dia_id, "sample_id": sample_id}
    if turn.get("img_url") is not None:
        metadata["img_url"] = turn["img_url"]
    return {
        "id": str(locomo_turn_id(sample_id, dia_id)),
        "role": "user",
        "name": turn["speaker"],
        "content": content,
        "created_at": created_at,
        "metadata": metadata,
    }


# --- helpers ------------------------------------------------------------------------------------


def _error(where: str, field: str | None, problem: str) -> ValidationError:
    """A ValidationError whose text leads with the location; ``field`` is kept as an attribute."""
    text = f"{where}: field {field!r}: {problem}" if field is not None else f"{where}: {problem}"
    error = ValidationError(text)
    error.field = field
    return error


class _Checks:
    """``Memory.add``'s checks of every message, and the ids already used in the file.

    An id given twice would be skipped as a retry within one session but fail the import
    half-way in another, so any repeat in the file is refused up front.
    """

    def __init__(self, source: str, max_chars: int) -> None:
        self.source = source
        self.max_chars = max_chars
        self.ids: dict[uuid.UUID, str] = {}

    def message(
        self, message: Mapping[str, Any], where: str, fields: Mapping[str, str] | None = None
    ) -> None:
        """Raise at ``where`` (naming the file's key per ``fields``) what ``add`` would raise."""
        fields = fields or {}
        try:
            checked = validate_message(message, index=0, max_chars=self.max_chars)
        except ValidationError as error:
            key = fields.get(error.field, error.field) if error.field is not None else None
            raise _error(where, key, _reason(error)) from None
        if checked.client_id:
            first = self.ids.setdefault(checked.id, where)
            if first != where:
                first = first.removeprefix(f"{self.source}: ")
                raise _error(
                    where, fields.get("id", "id"), f"{checked.id} is also the id of {first}"
                )


def _reason(error: ValidationError) -> str:
    """The library's reason without its ``message N, field 'x': `` prefix; we give ours."""
    parts = [] if error.index is None else [f"message {error.index}"]
    if error.field is not None:
        parts.append(f"field {error.field!r}")
    return str(error).removeprefix(", ".join(parts) + ": ") if parts else str(error)


def _check_name(kind: str, value: object, where: str, key: str | None) -> str:
    """``value`` as a user, agent or session name, checked with the tenancy's own rule."""
    try:
        validate_name(kind, value)
    except ValidationError as error:
        raise _error(where, key, str(error)) from None
    return str(value)


def _optional_name(raw: Mapping[str, Any], key: str, kind: str, where: str) -> str | None:
    value = raw.get(key)
    return None if value is None else _check_name(kind, value, where, key)


def _reject_unknown(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """Unknown keys are typos more often than not; failing beats silently dropping data."""
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise _error(
            where,
            str(unknown[0]),
            f"unknown key (allowed: {', '.join(sorted(allowed))})",
        )


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_type_name(value)}"


def _type_name(value: object) -> str:
    """JSON's names for JSON's types, so messages read in the file's terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
