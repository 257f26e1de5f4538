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
import re
from collections.abc import Sequence
from datetime import date, datetime, time, tzinfo
from types import TracebackType
from typing import Any, Self

import httpx

from memfuse.api_client import JsonApiClient, RetryableError, is_int, short_repr
from memfuse.errors import ConfigurationError, ExtractionError
from memfuse.layers.extractors.base import FACT_TYPES, FactCandidate
from memfuse.types import ChunkData

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

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)
_SOURCE = re.compile(r"^\s*\[?\s*(\d+)\s*\]?\s*$")
_YEAR_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")


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
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("model", "must be a non-empty model name")
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigurationError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        if not is_int(max_concurrency) or max_concurrency < 1:
            raise ConfigurationError(
                "max_concurrency", f"must be an integer >= 1, got {max_concurrency!r}"
            )
        self.model = model.strip()
        self.name = f"llm:{self.model}"
        self.api = JsonApiClient(
            base_url,
            "/chat/completions",
            model=self.model,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            client=client,
            error=ExtractionError,
            failure="LLM fact extraction",
            request="LLM request",
            owner="LLM fact extractor",
        )
        self._batch_size = batch_size
        self._max_concurrency = max_concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        # Never show the key.
        base_url = self.api.display_url.removesuffix("/chat/completions")
        return f"LLMFactExtractor(base_url={base_url!r}, model={self.model!r})"

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
        await self.api.aclose()

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        """Facts from ``messages``, in message order; raises ``ExtractionError`` on failure."""
        self.api.check_open()
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

    async def _run_batch(
        self, batch: Sequence[ChunkData], semaphore: asyncio.Semaphore
    ) -> list[FactCandidate]:
        async with semaphore:
            return await self._extract_batch(batch)

    async def _extract_batch(self, batch: Sequence[ChunkData]) -> list[FactCandidate]:
        """One batch, with retries; raises ``ExtractionError`` once retries are spent."""
        items = await self.api.post(build_request_body(self.model, batch), self._facts_of)
        return parse_facts(items, batch)

    def _facts_of(self, response: httpx.Response) -> list[Any]:
        """The ``facts`` list of a 2xx completion; ``RetryableError`` if it is unusable."""
        try:
            envelope = response.json()
        except ValueError:
            raise RetryableError(
                f"response body is not JSON: {self.api.preview(response.text)}"
            ) from None
        try:
            choice = envelope["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RetryableError(
                f"response has no choices[0].message.content: {self.api.preview(response.text)}"
            ) from None
        if not isinstance(content, str):
            raise RetryableError(f"completion content is {type(content).__name__}, not text")
        cut_off = ""
        if isinstance(choice, dict) and choice.get("finish_reason") == "length":
            cut_off = " (the completion hit the token limit; try a smaller batch_size)"
        parsed = _loads_lenient(content)
        if parsed is None:
            raise RetryableError(
                f"completion content is not valid JSON{cut_off}: {self.api.preview(content)}"
            )
        facts = parsed.get("facts") if isinstance(parsed, dict) else None
        if not isinstance(facts, list):
            raise RetryableError(
                f"completion JSON lacks a 'facts' list{cut_off}: {self.api.preview(content)}"
            )
        return facts


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
        raise _DroppedItem(f"not an object: {short_repr(item)}")
    content = item.get("content")
    if not isinstance(content, str) or not content.strip():
        raise _DroppedItem(f"no content: {short_repr(item)}")
    content = " ".join(content.split())

    numbers = _source_numbers(item.get("sources"), len(batch))
    if not numbers:
        raise _DroppedItem(
            f"no valid source among {short_repr(item.get('sources'))} "
            f"(1..{len(batch)}): {content!r}"
        )
    sources = [batch[n - 1] for n in numbers]
    message_ids = tuple(dict.fromkeys(mid for chunk in sources for mid in chunk.message_ids))

    fact_type = item.get("type")
    if isinstance(fact_type, str) and fact_type.strip().lower() in FACT_TYPES:
        fact_type = fact_type.strip().lower()
    else:
        logger.warning("LLM fact has unknown type %s; using 'statement'", short_repr(fact_type))
        fact_type = "statement"

    # A missing or null confidence means the model gave none, not that it is malformed.
    confidence_raw = item.get("confidence")
    confidence = 1.0 if confidence_raw is None else _confidence(confidence_raw)
    if confidence is None:
        raise _DroppedItem(f"confidence {short_repr(confidence_raw)} is not a number")

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
        logger.warning(
            "LLM fact has unreadable occurred_at %s; ignoring it", short_repr(occurred_raw)
        )

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
