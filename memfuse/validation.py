"""The input rules every public entry point applies before anything reaches the database.

Invariant: a value that passes these checks is written to PostgreSQL and read back equal
(metadata as its JSON, whose numbers jsonb keeps as ``numeric``); a value that fails them raises
:class:`~memfuse.errors.ValidationError` naming the field and saying what to change, before
anything of the call is written. Concretely:

- text (message content, names, metadata keys and strings, query text, filter names) holds no
  NUL character and no lone surrogate (U+D800 to U+DFFF): PostgreSQL cannot store NUL in
  ``text`` or ``jsonb``, and a surrogate cannot be encoded to UTF-8 at all;
- user, agent, session and speaker names are non-empty and at most :data:`MAX_NAME_LENGTH`
  characters;
- metadata is a JSON object nested at most :data:`MAX_METADATA_DEPTH` levels, checked by an
  iterative walk so that hostile nesting cannot exhaust Python's recursion limit;
- a stored timestamp carries a time zone and lies, in UTC, within
  [:data:`MIN_STORED_TIME`, :data:`MAX_STORED_TIME`]; a query bound only needs a time zone
  and a UTC equivalent (the driver converts to UTC, which overflows at the ends of Python's
  ``datetime`` range).

Every entry point calls this one module; there is no second copy of these rules.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from memfuse.errors import ValidationError
from memfuse.tokens import count_tokens
from memfuse.types import MESSAGE_ROLES, Page

MAX_NAME_LENGTH = 255
"""User, agent, session and speaker names, in characters."""

MAX_METADATA_DEPTH = 64
"""Levels of nested objects and arrays in metadata, the top-level object counting as one.
Deep enough for any real document; shallow enough that serialising it cannot recurse out."""

MIN_STORED_TIME = datetime(1, 1, 2, tzinfo=UTC)
"""The earliest ``created_at`` stored. asyncpg writes 0001-01-01T00:00Z as ``-infinity`` (read
back as a naive datetime), and a day of margin keeps date arithmetic on stored times (such as
"the day before") inside Python's range."""

MAX_STORED_TIME = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
"""The latest ``created_at`` stored; 9999-12-31T23:59:59.999999Z is ``infinity`` to asyncpg,
and a day of margin keeps "tomorrow" of a stored time inside Python's range."""

PAGE_ORDERS = ("asc", "desc")
MAX_PAGE_LIMIT = 1000
MAX_PAGE_OFFSET = 2**63 - 1
"""PostgreSQL's ``OFFSET`` is a bigint."""

_PREVIEW_CHARS = 60
_FORBIDDEN_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def preview(value: object) -> str:
    """``repr(value)`` cut to a readable length, for error messages about huge inputs.

    Never raises: a value nested too deep to ``repr`` (or whose ``__repr__`` fails) is shown
    by its type, so reporting bad input cannot itself fail.
    """
    try:
        shown = repr(value)
    except Exception:  # RecursionError for deep nesting, anything from a custom __repr__
        return f"<{type(value).__name__}>"
    if len(shown) <= _PREVIEW_CHARS:
        return shown
    return f"{shown[:_PREVIEW_CHARS]}… ({len(shown)} characters)"


def storable_text(value: str) -> bool:
    """Whether PostgreSQL text can hold ``value``: no NUL and no lone surrogate.

    ASCII text (nearly every message, name and metadata string) cannot hold a surrogate, so
    it is checked for NUL alone, without the regular expression (54 ns against 763 ns for a
    LoCoMo turn; a write checks several texts per message).
    """
    if value.isascii():
        return "\x00" not in value
    return _FORBIDDEN_CHARACTER.search(value) is None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as PostgreSQL text, or ``None`` if it can."""
    if storable_text(value):
        return None
    found = _FORBIDDEN_CHARACTER.search(value)
    assert found is not None  # storable_text found NUL or a surrogate
    if found.group() == "\x00":
        return "must not contain NUL bytes ('\\x00'); remove them"
    return (
        f"contains a lone surrogate (U+{ord(found.group()):04X}) at position {found.start()}, "
        "which is not valid Unicode; decode the source bytes with errors='replace' or remove it"
    )


def check_text(value: str, *, field: str, index: int | None = None) -> str:
    """``value`` unchanged, or a :class:`ValidationError` if it holds NUL or a surrogate."""
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(problem, index=index, field=field)
    return value


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a user, agent, session or speaker name, or ``None``."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters ({len(value)}); use a shorter name"
    return text_problem(value)


def validate_name(kind: str, value: object) -> str:
    """``value`` as a ``kind`` (user, agent, session) name; an error's ``field`` is ``kind``.

    Also for names that only filter a query: a name that could never be stored is a mistake
    the caller should hear about, not a silent empty result.
    """
    problem = name_problem(value)
    if problem is not None:
        raise ValidationError(problem, field=kind)
    return value  # type: ignore[return-value]  # name_problem checked it is a str


def parse_message_id(value: object, *, field: str = "id", index: int | None = None) -> uuid.UUID:
    """A message id given as a ``UUID`` or its string form; anything else is refused without
    calling ``str()`` on it (which fails on deeply nested values)."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError(
        f"must be a message id (a UUID or its string), got {preview(value)}",
        index=index,
        field=field,
    )


def validate_filter_name(kind: str, value: object) -> str | None:
    """A query's ``agent``/``session`` filter: ``None`` (no filter) or a valid ``kind`` name.

    The same rules as stored names, so a filter that could never match (empty, too long, NUL,
    a surrogate) is an error rather than a driver failure or a silent empty result.
    """
    return None if value is None else validate_name(kind, value)


def check_metadata(
    value: object, *, index: int | None = None, field: str = "metadata"
) -> dict[str, Any]:
    """``value`` as the JSON object that will be stored, or a :class:`ValidationError`.

    The walk is iterative and bounded by :data:`MAX_METADATA_DEPTH` before ``json.dumps``
    (which recurses) sees the value; a value that contains itself fails the depth check.
    """
    loaded: dict[str, Any] = json.loads(metadata_json(value, index=index, field=field))
    return loaded


EMPTY_METADATA_JSON = "{}"
_JSON = json.JSONEncoder(allow_nan=False)
"""``json.dumps(value, allow_nan=False)`` without building an encoder per call."""


def metadata_json(value: object, *, index: int | None = None, field: str = "metadata") -> str:
    """``value`` as the JSON text that will be stored (what :func:`check_metadata` checks);
    the write path sends this text, so a message's metadata is serialised once."""
    if value is None or (type(value) is dict and not value):
        return EMPTY_METADATA_JSON
    if type(value) is dict:
        document = value  # the common case, without the slower abstract-class check
    elif isinstance(value, Mapping):
        document = dict(value)  # json encodes only dicts
    else:
        raise ValidationError(
            f"must be a dict, got {type(value).__name__}", index=index, field=field
        )
    if not _flat_and_clean(document):
        _check_json_tree(document, index=index, field=field)
    try:
        return _JSON.encode(document)
    except (TypeError, ValueError) as error:
        raise ValidationError(
            f"must be JSON-serializable (objects, arrays, strings, finite numbers, booleans, "
            f"null): {error}",
            index=index,
            field=field,
        ) from None


def _flat_and_clean(document: dict[Any, Any]) -> bool:
    """Whether ``document`` holds only text keys and scalar values, none with a
    :func:`text_problem`: then :func:`_check_json_tree` has nothing to find, and the common flat
    metadata skips it (anything else, subclasses included, takes the full walk)."""
    for key, item in document.items():
        if type(key) is not str or not storable_text(key):
            return False
        kind = type(item)
        if kind is str:
            if not storable_text(item):
                return False
        elif kind not in _SCALARS:
            return False
    return True


_SCALARS = frozenset({int, float, bool, type(None)})


def _check_json_tree(document: dict[Any, Any], *, index: int | None, field: str) -> None:
    """Depth and text rules over every container, key and string of ``document``."""
    stack: list[tuple[object, tuple[object, ...]]] = [(document, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            problem = text_problem(node)
            if problem is not None:
                raise ValidationError(
                    f"value at {_json_path(path)} {problem}", index=index, field=field
                )
            continue
        if not isinstance(node, dict | list | tuple):
            continue  # numbers, booleans, None; anything else fails json.dumps afterwards
        if len(path) >= MAX_METADATA_DEPTH:
            raise ValidationError(
                f"is nested more than {MAX_METADATA_DEPTH} levels deep (at "
                f"{_json_path(path[:8])}…), or contains itself; flatten it",
                index=index,
                field=field,
            )
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem is not None:
                        raise ValidationError(
                            f"key {preview(key)} at {_json_path(path)} {problem}",
                            index=index,
                            field=field,
                        )
                stack.append((item, (*path, key)))
        else:
            stack.extend((item, (*path, position)) for position, item in enumerate(node))


def _json_path(path: tuple[object, ...]) -> str:
    """``path`` as ``["a"][0]``, or ``the top level`` when empty."""
    return "".join(f"[{preview(step)}]" for step in path) or "the top level"


def stored_timestamp(value: object, *, field: str, index: int | None = None) -> datetime:
    """A time to store (a message's ``created_at``): an aware ``datetime`` or ISO-8601 string
    within [:data:`MIN_STORED_TIME`, :data:`MAX_STORED_TIME`] in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"must be an ISO-8601 timestamp, got {preview(value)}", index=index, field=field
            ) from None
    if not isinstance(value, datetime):
        raise ValidationError(
            f"must be a datetime or ISO-8601 string, got {type(value).__name__}",
            index=index,
            field=field,
        )
    utc = _as_utc(value, field=field, index=index)
    if not MIN_STORED_TIME <= utc <= MAX_STORED_TIME:
        raise ValidationError(
            f"is {utc.isoformat()} in UTC, outside the range memfuse stores "
            f"({MIN_STORED_TIME.date()} to {MAX_STORED_TIME.date()} UTC)",
            index=index,
            field=field,
        )
    return value


def time_bound(value: object, *, field: str) -> datetime | None:
    """A query bound (``since``/``until``): ``None`` or an aware ``datetime`` that has a UTC
    equivalent. The ends of the range compare as PostgreSQL's ``-infinity``/``infinity``."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(
            f"must be a timezone-aware datetime, got {type(value).__name__}", field=field
        )
    _as_utc(value, field=field, index=None)
    return value


def _as_utc(value: datetime, *, field: str, index: int | None) -> datetime:
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as error:
        raise ValidationError(
            f"has a time zone that gives no valid UTC offset: {error}", index=index, field=field
        ) from None
    if offset is None:
        raise ValidationError(
            "must carry a time zone (e.g. 2023-05-08T13:56:00+00:00)", index=index, field=field
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            f"{value.isoformat()} falls outside the years 1 to 9999 once converted to UTC; "
            "give a time inside that range",
            index=index,
            field=field,
        ) from None


def check_flag(value: object, *, field: str) -> bool:
    """A yes/no option must be a bool: ``all_sessions="no"`` is not allowed to mean yes."""
    if not isinstance(value, bool):
        raise ValidationError(f"must be True or False, got {preview(value)}", field=field)
    return value


def check_page(limit: object, offset: object, order: object) -> Page:
    """Paging arguments of the ``list_*`` methods, as a :class:`Page`; bools are not numbers."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValidationError(
            f"must be an integer from 1 to {MAX_PAGE_LIMIT}, got {preview(limit)}", field="limit"
        )
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int)
        or not 0 <= offset <= MAX_PAGE_OFFSET
    ):
        raise ValidationError(
            f"must be an integer from 0 to {MAX_PAGE_OFFSET}, got {preview(offset)}",
            field="offset",
        )
    if not isinstance(order, str) or order not in PAGE_ORDERS:
        raise ValidationError(f"must be 'asc' or 'desc', got {preview(order)}", field="order")
    return Page(limit=limit, offset=offset, newest_first=order == "desc")


# -- Messages --

MESSAGE_KEYS = frozenset({"id", "role", "content", "name", "speaker", "created_at", "metadata"})


class MessageInput(NamedTuple):
    """One message that passed validation; ``id`` is the caller's (``client_id``) or new.

    Immutable, and a named tuple rather than a frozen dataclass: a large ``add()`` builds one
    per message, and a frozen dataclass costs several times more to build. ``metadata_json``
    is the metadata as stored (JSON text).
    """

    id: uuid.UUID
    role: str
    content: str
    name: str | None = None
    created_at: datetime | None = None
    metadata_json: str = EMPTY_METADATA_JSON
    token_count: int = 0
    client_id: bool = False

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata as it will read back from the database."""
        loaded: dict[str, Any] = json.loads(self.metadata_json)
        return loaded


def validate_messages(
    messages: Sequence[Mapping[str, Any]], *, max_chars: int
) -> list[MessageInput]:
    """Check every message of one call; raise :class:`ValidationError` on the first bad one."""
    if isinstance(messages, Mapping | str | bytes) or not isinstance(messages, Sequence):
        raise ValidationError(f"messages must be a list of dicts, got {type(messages).__name__}")
    validated: list[MessageInput] = []
    seen: set[uuid.UUID] = set()
    fresh = new_ids(len(messages))
    for index, raw in enumerate(messages):
        message = validate_message(raw, index=index, max_chars=max_chars, new_id=fresh[index])
        if message.client_id:  # a new id is random: only callers' ids can repeat
            if message.id in seen:
                raise ValidationError(
                    "repeats an id given earlier in this call", index=index, field="id"
                )
            seen.add(message.id)
        validated.append(message)
    return validated


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) ids from one read of the system's random source.

    ``uuid.uuid4()`` reads it once per id: 0.58 ms per 100 ids against 0.36 ms in one read
    (measured on a batch ``add()``'s 100 LoCoMo turns).
    """
    data = os.urandom(16 * count)
    return [uuid.UUID(bytes=data[at : at + 16], version=4) for at in range(0, len(data), 16)]


def validate_message(
    raw: object, *, index: int, max_chars: int, new_id: uuid.UUID | None = None
) -> MessageInput:
    """One message dict as :class:`MessageInput`, or a :class:`ValidationError` naming it.

    A message without an id gets ``new_id`` (a fresh random one if ``None``).
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise ValidationError(f"must be a dict, got {type(raw).__name__}", index=index)
    if not raw.keys() <= MESSAGE_KEYS:
        unknown = sorted(str(key) for key in raw if key not in MESSAGE_KEYS)
        raise ValidationError(
            f"unknown key (allowed: {', '.join(sorted(MESSAGE_KEYS))})",
            index=index,
            field=unknown[0],
        )

    role = raw.get("role")
    if role not in MESSAGE_ROLES:
        raise ValidationError(
            f"must be one of {', '.join(MESSAGE_ROLES)}, got {preview(role)}",
            index=index,
            field="role",
        )
    content = check_content(raw.get("content"), index=index, max_chars=max_chars)

    name = None
    if "name" in raw or "speaker" in raw:
        for name_field in ("name", "speaker"):
            problem = None if raw.get(name_field) is None else name_problem(raw[name_field])
            if problem is not None:
                raise ValidationError(problem, index=index, field=name_field)
        if "name" in raw and "speaker" in raw and raw["name"] != raw["speaker"]:
            # compared once both are names or None: comparing arbitrary values may recurse
            raise ValidationError("name and speaker differ; give one", index=index, field="speaker")
        name = raw.get("name" if "name" in raw else "speaker")

    created_at = raw.get("created_at")
    given_id = raw.get("id")
    return MessageInput(
        (new_id or uuid.uuid4()) if given_id is None else parse_message_id(given_id, index=index),
        role,
        content,
        name,
        None
        if created_at is None
        else stored_timestamp(created_at, index=index, field="created_at"),
        metadata_json(raw.get("metadata"), index=index),
        count_tokens(content),
        given_id is not None,
    )


def check_content(
    value: object, *, index: int | None, max_chars: int, field: str = "content"
) -> str:
    """A message's (or knowledge item's) text: a non-empty string of at most ``max_chars``
    storable characters."""
    if not isinstance(value, str):
        raise ValidationError(
            f"must be a string, got {type(value).__name__}", index=index, field=field
        )
    if not value or value.isspace():  # what ``not value.strip()`` says, without the copy
        raise ValidationError("must not be empty", index=index, field=field)
    if len(value) > max_chars:
        raise ValidationError(
            f"is {len(value)} characters, more than the limit of {max_chars} "
            "(setting max_message_chars)",
            index=index,
            field=field,
        )
    return check_text(value, index=index, field=field)


# -- Knowledge items --

KNOWLEDGE_KEYS = frozenset(
    {"content", "namespace", "key", "value", "metadata", "ttl_seconds", "indexed"}
)
MAX_NAMESPACE_DEPTH = 16
"""Labels in a knowledge item's namespace."""
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600.0
"""A hundred years: longer lifetimes are no lifetime (leave ``ttl_seconds`` out)."""


class KnowledgeInput(NamedTuple):
    """One checked knowledge item, as it is written (``value`` and ``metadata`` as JSON)."""

    content: str
    namespace: tuple[str, ...]
    key: str | None
    value_json: str | None
    metadata_json: str
    ttl_seconds: float | None
    indexed: bool = True


def validate_knowledge(
    items: Sequence[object], *, max_chars: int, field: str = "knowledge"
) -> list[KnowledgeInput]:
    """Check every item of one call (a text, or a dict of :data:`KNOWLEDGE_KEYS`); raise
    :class:`ValidationError` naming the first bad one. Two items of one call may not share a
    namespace and key: which one should win would be a guess."""
    if isinstance(items, Mapping | str | bytes) or not isinstance(items, Sequence):
        raise ValidationError(
            f"must be a list of texts or dicts, got {type(items).__name__}", field=field
        )
    checked = [
        validate_knowledge_item(item, field=f"{field}[{index}]", max_chars=max_chars)
        for index, item in enumerate(items)
    ]
    seen: set[tuple[tuple[str, ...], str]] = set()
    for index, item in enumerate(checked):
        if item.key is None:
            continue
        address = (item.namespace, item.key)
        if address in seen:
            raise ValidationError(
                "repeats a namespace and key given earlier in this call", field=f"{field}[{index}]"
            )
        seen.add(address)
    return checked


def validate_knowledge_item(raw: object, *, field: str, max_chars: int) -> KnowledgeInput:
    """One knowledge item: a text, or a dict with ``content`` and optional ``namespace``
    (labels), ``key``, ``value`` (a JSON object), ``metadata``, ``ttl_seconds`` and ``indexed``
    (false: neither embedded nor full-text indexed)."""
    if isinstance(raw, str):
        raw = {"content": raw}
    if not isinstance(raw, Mapping):
        raise ValidationError(f"must be a text or a dict, got {type(raw).__name__}", field=field)
    if not raw.keys() <= KNOWLEDGE_KEYS:
        unknown = sorted(str(key) for key in raw if key not in KNOWLEDGE_KEYS)
        raise ValidationError(
            f"unknown key (allowed: {', '.join(sorted(KNOWLEDGE_KEYS))})",
            field=f"{field}.{unknown[0]}",
        )
    content = check_content(
        raw.get("content"), index=None, max_chars=max_chars, field=f"{field}.content"
    )
    key = raw.get("key")
    if key is not None:
        key = _label(key, field=f"{field}.key")
    value = raw.get("value")
    return KnowledgeInput(
        content,
        check_namespace(raw.get("namespace"), field=f"{field}.namespace"),
        key,
        None if value is None else metadata_json(value, field=f"{field}.value"),
        metadata_json(raw.get("metadata"), field=f"{field}.metadata"),
        check_ttl(raw.get("ttl_seconds"), field=f"{field}.ttl_seconds"),
        check_flag(raw.get("indexed", True), field=f"{field}.indexed"),
    )


def check_namespace(value: object, *, field: str) -> tuple[str, ...]:
    """A namespace: a list of non-empty labels without dots' special meaning (any text but
    NUL and surrogates, at most :data:`MAX_NAME_LENGTH` characters each)."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValidationError(f"must be a list of strings, got {type(value).__name__}", field=field)
    if len(value) > MAX_NAMESPACE_DEPTH:
        raise ValidationError(
            f"has {len(value)} labels, more than {MAX_NAMESPACE_DEPTH}", field=field
        )
    return tuple(_label(label, field=f"{field}[{index}]") for index, label in enumerate(value))


def _label(value: object, *, field: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValidationError(problem, field=field)
    return value  # type: ignore[return-value]  # name_problem checked it is a str


def check_ttl(value: object, *, field: str) -> float | None:
    """A time to live in seconds: ``None`` (forever) or a positive finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"must be a number of seconds, got {preview(value)}", field=field)
    if not 0 < value <= MAX_TTL_SECONDS:  # NaN fails both comparisons
        raise ValidationError(
            f"must be more than 0 and at most {MAX_TTL_SECONDS:.0f} seconds, got {value!r}",
            field=field,
        )
    return float(value)


def check_value_filter(value: object, *, field: str = "filter") -> str | None:
    """A JSON value filter (:mod:`memfuse.db.value_filter`) as canonical JSON, or ``None``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"must be a dict, got {type(value).__name__}", field=field)
    text = metadata_json(value, field=field)
    return json.dumps(json.loads(text), sort_keys=True)
