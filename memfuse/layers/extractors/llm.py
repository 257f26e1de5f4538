"""An M2 fact extractor that asks any OpenAI-compatible chat completions API for facts.

It works with OpenAI, Azure-style gateways, vLLM, Ollama, llama.cpp and the like: anything that
serves ``POST {base_url}/chat/completions`` and honours ``response_format: json_object``.
Messages are sent in numbered batches; the model answers with facts that cite the numbers of
the messages they come from, which become each fact's lineage. Transient failures are retried
with backoff; anything else raises :class:`~memfuse.errors.ExtractionError` so the M2 layer
keeps the messages and retries them later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from datetime import date, datetime, time, tzinfo
from types import TracebackType
from typing import Any, Self

import httpx

from memfuse.errors import ClosedError, ConfigurationError, ExtractionError
from memfuse.layers.chunk import ChunkData
from memfuse.layers.extractors.base import FACT_TYPES, FactCandidate

__all__ = [
    "SYSTEM_PROMPT",
    "LLMFactExtractor",
    "build_request_body",
    "format_messages",
    "parse_facts",
]

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = f"""\
You extract long-term memory facts from a conversation.

The user message lists conversation messages numbered [1], [2], ... Each line reads
"[n] <ISO timestamp> <speaker>: <text>".

Extract every fact worth remembering about the people in the conversation: who they are, what
happened to them, what they like or dislike, what they plan, and their lasting attributes
(where they live, their job, their relationships). Skip greetings, small talk and filler.

Rules:
- Each fact is one self-contained, third-person sentence that names the people involved
  ("Caroline went to an LGBTQ support group on 7 May 2023", never "I went there yesterday").
- Resolve relative dates ("yesterday", "last week", "next month") to absolute dates using the
  timestamp of the message that mentions them.
- "type" is one of: {", ".join(FACT_TYPES)}. statement: something said or believed;
  event: something that happened; preference: a like or dislike; plan: an intention;
  attribute: a property of someone that a newer fact may replace.
- "entities" lists the people, places, organisations and things the fact is about.
- "confidence" is a number from 0 to 1: how sure you are the fact is true and stated.
- "occurred_at" is when the fact happened or will happen, as an ISO 8601 date or date-time,
  or null when unknown.
- "sources" lists the numbers of the messages the fact comes from (at least one).
- "key" names the slot an attribute or preference fills, as "<person>|<property>" in lower
  case (for example "caroline|lives_in"), so a newer fact can replace an older one; otherwise
  null.

Answer with a JSON object only, no prose:
{{"facts": [{{"content": "...", "type": "event", "entities": ["..."], "confidence": 0.9,
"occurred_at": "2023-05-07", "sources": [1], "key": null}}]}}
If there is nothing worth remembering, answer {{"facts": []}}.
"""
"""The system prompt sent with every batch; the messages go in the user message."""

_MAX_RETRY_AFTER = 30.0
"""Longest wait honoured from a ``Retry-After`` header or computed backoff, in seconds."""

_PREVIEW_CHARS = 300
"""How much of a failing body goes into logs and error messages."""

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)
_SOURCE = re.compile(r"^\s*\[?\s*(\d+)\s*\]?\s*$")
_YEAR_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")


class _RetryableError(Exception):
    """A failure worth another attempt: timeouts, 429, 5xx, an unusable completion."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LLMFactExtractor:
    """Extracts facts with an OpenAI-compatible chat completions API.

    Messages are sent ``batch_size`` at a time, at most ``max_concurrency`` requests in flight
    per extractor, and the facts come back in the order of the messages. A batch is retried
    ``max_retries`` times on timeouts, transport errors, HTTP 429 and 5xx and unusable
    completions; if any batch still fails, :meth:`extract` raises ``ExtractionError`` and
    returns nothing, so the caller can retry all the messages later.

    A ``client`` passed in is used as is (its timeout is overridden per request) and is not
    closed by :meth:`aclose`; otherwise the extractor owns one.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        batch_size: int = 20,
        max_concurrency: int = 2,
        backoff_base: float = 0.5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base_url = _validate_base_url(base_url)
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("model", "must be a non-empty model name")
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError("api_key", "must be a string or None")
        if not _is_number(timeout) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigurationError(
                "timeout", f"must be a positive number of seconds, got {timeout!r}"
            )
        if not _is_int(max_retries) or max_retries < 0:
            raise ConfigurationError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigurationError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        if not _is_int(max_concurrency) or max_concurrency < 1:
            raise ConfigurationError(
                "max_concurrency", f"must be an integer >= 1, got {max_concurrency!r}"
            )
        if not _is_number(backoff_base) or not math.isfinite(backoff_base) or backoff_base < 0:
            raise ConfigurationError(
                "backoff_base", f"must be a number of seconds >= 0, got {backoff_base!r}"
            )
        self.model = model.strip()
        self.name = f"llm:{self.model}"
        self._url = f"{self._base_url}/chat/completions"
        self._display_url = _without_userinfo(self._url)
        # An empty key (an unset environment variable) means no key, not "Bearer ".
        self._api_key = api_key.strip() if api_key and api_key.strip() else None
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._batch_size = batch_size
        self._max_concurrency = max_concurrency
        self._backoff_base = float(backoff_base)
        self._client = client
        self._owns_client = client is None
        self._closed = False
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        # Never show the key.
        return f"LLMFactExtractor(base_url={self._display_url!r}, model={self.model!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the extractor created it; later ``extract`` calls fail."""
        self._closed = True
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        """Facts from ``messages``, in message order; raises ``ExtractionError`` on failure."""
        if self._closed:
            raise ClosedError("the LLM fact extractor is closed")
        if not messages:
            return []
        batches = [
            tuple(messages[i : i + self._batch_size])
            for i in range(0, len(messages), self._batch_size)
        ]
        semaphore = self._limiter()
        tasks = [asyncio.create_task(self._run_batch(batch, semaphore)) for batch in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # One failed batch fails the call: stop the others, return no partial result.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [fact for facts in results for fact in facts]

    def _limiter(self) -> asyncio.Semaphore:
        """The semaphore shared by all calls on the running loop (semaphores are loop-bound)."""
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self._max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            if self._closed:
                raise ClosedError("the LLM fact extractor is closed")
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    async def _run_batch(
        self, batch: Sequence[ChunkData], semaphore: asyncio.Semaphore
    ) -> list[FactCandidate]:
        async with semaphore:
            return await self._extract_batch(batch)

    async def _extract_batch(self, batch: Sequence[ChunkData]) -> list[FactCandidate]:
        """One batch, with retries; raises ``ExtractionError`` once retries are spent."""
        body = build_request_body(self.model, batch)
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            try:
                items = await self._request(body, headers)
            except _RetryableError as error:
                if attempt + 1 >= attempts:
                    raise ExtractionError(
                        f"LLM fact extraction failed after {attempts} attempt(s) "
                        f"(POST {self._display_url}, model {self.model!r}): {error.reason}"
                    ) from None
                delay = self._delay(attempt, error.retry_after)
                logger.warning(
                    "LLM fact extraction attempt %d/%d failed (%s); retrying in %.2f s",
                    attempt + 1,
                    attempts,
                    error.reason,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                return parse_facts(items, batch)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, or the server's ``Retry-After``; both capped."""
        if retry_after is not None:
            return min(retry_after, _MAX_RETRY_AFTER)
        backoff = self._backoff_base * 2.0**attempt
        return min(backoff + random.uniform(0.0, 0.1 * backoff), _MAX_RETRY_AFTER)

    async def _request(self, body: dict[str, Any], headers: dict[str, str]) -> list[Any]:
        """One POST; the ``facts`` list, or ``_RetryableError`` / ``ExtractionError``."""
        try:
            response = await self._http().post(
                self._url, json=body, headers=headers, timeout=self._timeout
            )
        except httpx.TimeoutException as error:
            raise _RetryableError(
                f"request timed out after {self._timeout:g} s ({type(error).__name__})"
            ) from None
        except httpx.TransportError as error:
            raise _RetryableError(
                f"transport error: {type(error).__name__}: {self._redact(str(error))}"
            ) from None
        except httpx.HTTPError as error:
            raise ExtractionError(
                f"LLM request to {self._display_url} failed: {type(error).__name__}: "
                f"{self._redact(str(error))}"
            ) from None
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _RetryableError(
                f"HTTP {status}: {self._preview(response.text)}",
                _retry_after(response.headers.get("Retry-After")),
            )
        if not 200 <= status < 300:
            raise ExtractionError(
                f"LLM request to {self._display_url} (model {self.model!r}) was rejected with "
                f"HTTP {status}: {self._preview(response.text)}"
            )
        return self._facts_of(response)

    def _facts_of(self, response: httpx.Response) -> list[Any]:
        """The ``facts`` list of a 2xx completion; ``_RetryableError`` if it is unusable."""
        try:
            envelope = response.json()
        except ValueError:
            raise _RetryableError(
                f"response body is not JSON: {self._preview(response.text)}"
            ) from None
        try:
            choice = envelope["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _RetryableError(
                f"response has no choices[0].message.content: {self._preview(response.text)}"
            ) from None
        if not isinstance(content, str):
            raise _RetryableError(f"completion content is {type(content).__name__}, not text")
        cut_off = ""
        if isinstance(choice, dict) and choice.get("finish_reason") == "length":
            cut_off = " (the completion hit the token limit; try a smaller batch_size)"
        parsed = _loads_lenient(content)
        if parsed is None:
            raise _RetryableError(
                f"completion content is not valid JSON{cut_off}: {self._preview(content)}"
            )
        facts = parsed.get("facts") if isinstance(parsed, dict) else None
        if not isinstance(facts, list):
            raise _RetryableError(
                f"completion JSON lacks a 'facts' list{cut_off}: {self._preview(content)}"
            )
        return facts

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _preview(self, text: str) -> str:
        """A short, single-line, key-free excerpt of a body for logs and errors."""
        text = self._redact(" ".join(text.split()))
        if len(text) > _PREVIEW_CHARS:
            return text[:_PREVIEW_CHARS] + "…"
        return text or "<empty body>"


def build_request_body(model: str, batch: Sequence[ChunkData]) -> dict[str, Any]:
    """The chat completions request for one batch of messages."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format_messages(batch)},
        ],
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }


def format_messages(batch: Sequence[ChunkData]) -> str:
    """Numbers the messages ``[1]..[n]`` so the model can cite them as ``sources``."""
    lines = ["Conversation messages:"]
    for number, chunk in enumerate(batch, start=1):
        speaker = chunk.speaker or chunk.role or "unknown"
        # Indent continuation lines so a multi-line message cannot pass for a new number.
        text = "\n    ".join(chunk.content.strip().splitlines()) or "(empty)"
        lines.append(f"[{number}] {chunk.started_at.isoformat()} {speaker}: {text}")
    lines.append("")
    lines.append('Extract the facts as JSON: {"facts": [...]}.')
    return "\n".join(lines)


def parse_facts(items: Sequence[Any], batch: Sequence[ChunkData]) -> list[FactCandidate]:
    """Turns the model's ``facts`` items into candidates, dropping the unusable ones.

    A bad item costs only itself, never the batch: models get the odd field wrong, and the
    rest of their answer is still worth keeping.
    """
    facts: list[FactCandidate] = []
    for index, item in enumerate(items):
        try:
            facts.append(_parse_item(item, batch))
        except _DroppedItem as dropped:
            logger.warning("dropping LLM fact item %d: %s", index, dropped)
    return facts


class _DroppedItem(Exception):
    """Why one item of the model's answer is unusable."""


def _parse_item(item: Any, batch: Sequence[ChunkData]) -> FactCandidate:
    if not isinstance(item, dict):
        raise _DroppedItem(f"not an object: {_short(item)}")
    content = item.get("content")
    if not isinstance(content, str) or not content.strip():
        raise _DroppedItem(f"no content: {_short(item)}")
    content = " ".join(content.split())

    numbers = _source_numbers(item.get("sources"), len(batch))
    if not numbers:
        raise _DroppedItem(
            f"no valid source among {_short(item.get('sources'))} (1..{len(batch)}): {content!r}"
        )
    sources = [batch[n - 1] for n in numbers]
    message_ids = tuple(dict.fromkeys(mid for chunk in sources for mid in chunk.message_ids))

    fact_type = item.get("type")
    if isinstance(fact_type, str) and fact_type.strip().lower() in FACT_TYPES:
        fact_type = fact_type.strip().lower()
    else:
        logger.warning("LLM fact has unknown type %s; using 'statement'", _short(fact_type))
        fact_type = "statement"

    # A missing or null confidence means the model gave none, not that it is malformed.
    confidence_raw = item.get("confidence")
    confidence = 1.0 if confidence_raw is None else _confidence(confidence_raw)
    if confidence is None:
        raise _DroppedItem(f"confidence {_short(confidence_raw)} is not a number")

    entities_raw = item.get("entities")
    if isinstance(entities_raw, str):
        entities_raw = [entities_raw]
    entities: tuple[str, ...] = ()
    if isinstance(entities_raw, list):
        entities = tuple(
            dict.fromkeys(
                " ".join(e.split()) for e in entities_raw if isinstance(e, str) and e.strip()
            )
        )

    occurred_raw = item.get("occurred_at")
    occurred_at = _parse_when(occurred_raw, sources[0].started_at.tzinfo)
    if occurred_at is None and occurred_raw not in (None, ""):
        logger.warning("LLM fact has unreadable occurred_at %s; ignoring it", _short(occurred_raw))

    key_raw = item.get("key")
    key = key_raw.strip().lower() if isinstance(key_raw, str) and key_raw.strip() else None

    try:
        return FactCandidate(
            content=content,
            message_ids=message_ids,
            fact_type=fact_type,
            entities=entities,
            confidence=confidence,
            occurred_at=occurred_at,
            key=key,
        )
    except ValueError as error:  # pragma: no cover - the checks above should prevent it
        raise _DroppedItem(str(error)) from None


def _source_numbers(raw: Any, size: int) -> list[int]:
    """Valid 1-based message numbers, deduplicated, in message order."""
    if isinstance(raw, (int, str)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    numbers: set[int] = set()
    for value in raw:
        number: int | None = None
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and (match := _SOURCE.match(value)):
            number = int(match.group(1))
        if number is not None and 1 <= number <= size:
            numbers.add(number)
    return sorted(numbers)


def _confidence(raw: Any) -> float | None:
    """The confidence clamped to 0..1, or ``None`` if it is not a number."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return None
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        return None
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        clamped = min(max(value, 0.0), 1.0)
        logger.warning("LLM fact confidence %s is out of range; using %s", value, clamped)
        return clamped
    return value


def _parse_when(raw: Any, tz: tzinfo | None) -> datetime | None:
    """A date or date-time in ISO form (or just YYYY-MM / YYYY); naive values get ``tz``."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = datetime.combine(date.fromisoformat(text[:10]), time())
        except ValueError:
            if match := _YEAR_MONTH.match(text):
                try:
                    when = datetime(int(match.group(1)), int(match.group(2)), 1)
                except ValueError:
                    return None
            elif match := _YEAR.match(text):
                when = datetime(int(match.group(1)), 1, 1)
            else:
                return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when


def _loads_lenient(text: str) -> Any:
    """JSON from a completion that may wrap it in a fenced block or a little prose."""
    candidates = [text.strip()]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After``; HTTP dates are ignored (backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _validate_base_url(base_url: Any) -> str:
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError("base_url", "must be an http(s) URL such as http://host:8000/v1")
    text = base_url.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        raise ConfigurationError("base_url", f"is not a valid URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            "base_url", "must be an http(s) URL with a host, such as http://host:8000/v1"
        )
    if url.query or url.fragment:
        raise ConfigurationError("base_url", "must not have a query or fragment")
    return text


def _without_userinfo(url: str) -> str:
    """The URL without any ``user:password@`` part, for logs and errors."""
    parsed = httpx.URL(url)
    if parsed.userinfo:
        return str(parsed.copy_with(username=None, password=None))
    return url


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + "…"
