"""``LLMFactExtractor`` against a local test double of an OpenAI-compatible chat API.

No real LLM API is reachable from the test environment, so each test runs a real HTTP server
on 127.0.0.1 with an ephemeral port (``chat_server.ChatServer``: stdlib ``ThreadingHTTPServer``
in a background thread). Tests script its replies (status, headers, body, delay) and inspect
the requests it recorded, so the extractor's real HTTP client, timeouts, retries and parsing
are exercised end to end. Backoff is tiny so the module runs in a few seconds.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from chat_server import ChatServer, Recorded, Reply, completion

from memfuse.errors import ClosedError, ConfigurationError, ExtractionError
from memfuse.layers.extractors.base import FactExtractor
from memfuse.layers.extractors.llm import SYSTEM_PROMPT, LLMFactExtractor
from memfuse.types import ChunkData

API_KEY = "sk-test-secret-0123456789"
MODEL = "test-model"
START = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
USER, AGENT, SESSION = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def make_messages(
    *texts: str, start: datetime = START, speakers: tuple[str, ...] = ("Caroline", "Melanie")
) -> list[ChunkData]:
    """Single-message chunks of one session, a minute apart, speakers alternating."""
    chunks = []
    for seq, text in enumerate(texts):
        at = start + timedelta(minutes=seq)
        chunks.append(
            ChunkData(
                content=text,
                user_id=USER,
                agent_id=AGENT,
                session_id=SESSION,
                message_ids=(uuid.uuid4(),),
                first_seq=seq,
                last_seq=seq,
                started_at=at,
                ended_at=at,
                token_count=len(text.split()),
                role="user",
                speaker=speakers[seq % len(speakers)],
            )
        )
    return chunks


def fact(content: str, *sources: int | str, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "content": content,
        "type": "statement",
        "entities": [],
        "confidence": 0.9,
        "occurred_at": None,
        "sources": list(sources),
        "key": None,
    }
    item.update(fields)
    return item


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture
async def extractor(server: ChatServer) -> AsyncIterator[LLMFactExtractor]:
    async with LLMFactExtractor(
        server.base_url,
        MODEL,
        api_key=API_KEY,
        timeout=2.0,
        max_retries=2,
        backoff_base=0.001,
    ) as ex:
        yield ex


# --- successful extraction -------------------------------------------------------------------


async def test_good_response_becomes_fact_candidates(
    server: ChatServer, extractor: LLMFactExtractor
) -> None:
    messages = make_messages(
        "I went to a LGBTQ support group yesterday and it was so powerful.",
        "That's great, Caroline! I'm painting a sunrise these days.",
        "I'm moving to Boston next month.",
    )
    server.script(
        completion(
            {
                "facts": [
                    fact(
                        "Caroline attended an LGBTQ support group on 7 May 2023.",
                        1,
                        type="event",
                        entities=["Caroline", "LGBTQ support group"],
                        confidence=0.95,
                        occurred_at="2023-05-07",
                    ),
                    fact(
                        "Melanie is painting a sunrise.",
                        2,
                        type="event",
                        entities=["Melanie"],
                    ),
                    fact(
                        "Caroline plans to move to Boston in June 2023.",
                        3,
                        1,
                        type="plan",
                        entities=["Caroline", "Boston"],
                        occurred_at="2023-06-01T00:00:00Z",
                        key="Caroline|lives_in",
                    ),
                ]
            }
        )
    )

    facts = await extractor.extract(messages)

    assert [f.content for f in facts] == [
        "Caroline attended an LGBTQ support group on 7 May 2023.",
        "Melanie is painting a sunrise.",
        "Caroline plans to move to Boston in June 2023.",
    ]
    first, second, third = facts
    assert first.message_ids == messages[0].message_ids
    assert first.fact_type == "event"
    assert first.entities == ("Caroline", "LGBTQ support group")
    assert first.confidence == 0.95
    assert first.occurred_at == datetime(2023, 5, 7, tzinfo=UTC)
    assert first.key is None
    assert second.message_ids == messages[1].message_ids
    assert second.occurred_at is None
    # Lineage follows message order, whatever order the model cited them in.
    assert third.message_ids == messages[0].message_ids + messages[2].message_ids
    assert third.fact_type == "plan"
    assert third.occurred_at == datetime(2023, 6, 1, tzinfo=UTC)
    assert third.key == "caroline|lives_in"
    assert len(server.requests) == 1


async def test_request_shape(server: ChatServer, extractor: LLMFactExtractor) -> None:
    messages = make_messages("Hi Mel!", "Hey Caroline, how are you?", "Good.\nBusy week.")
    server.script(completion({"facts": []}))

    assert await extractor.extract(messages) == []

    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["model"] == MODEL
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == SYSTEM_PROMPT
    prompt = request.user_prompt
    assert "[1] 2023-05-08T13:56:00+00:00 Caroline: Hi Mel!" in prompt
    assert "[2] 2023-05-08T13:57:00+00:00 Melanie: Hey Caroline, how are you?" in prompt
    assert "[3] 2023-05-08T13:58:00+00:00 Caroline: Good.\n    Busy week." in prompt
    assert "[4]" not in prompt


async def test_no_key_no_authorization_and_trailing_slash_stripped(server: ChatServer) -> None:
    server.script(completion({"facts": []}))
    async with LLMFactExtractor(server.base_url + "/", MODEL, api_key="") as ex:
        await ex.extract(make_messages("hello"))
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert "authorization" not in request.headers


async def test_fenced_json_block_is_accepted(
    server: ChatServer, extractor: LLMFactExtractor
) -> None:
    content = "```json\n" + json.dumps({"facts": [fact("Caroline likes tea.", 1)]}) + "\n```"
    server.script(completion(content))
    facts = await extractor.extract(make_messages("I love tea."))
    assert [f.content for f in facts] == ["Caroline likes tea."]
    assert len(server.requests) == 1


async def test_empty_input_sends_nothing(server: ChatServer, extractor: LLMFactExtractor) -> None:
    assert await extractor.extract([]) == []
    assert server.requests == []


def _echo_facts(request: Recorded) -> Reply:
    """One fact per numbered message of the request, echoing its text."""
    lines = [line for line in request.user_prompt.splitlines() if line.startswith("[")]
    facts = [fact("Said: " + line.split(": ", 1)[1], n) for n, line in enumerate(lines, 1)]
    return Reply(
        status=200,
        body=completion({"facts": facts}).body,
        headers={"Content-Type": "application/json"},
        delay=0.1,
    )


async def test_batches_run_concurrently_and_keep_input_order(server: ChatServer) -> None:
    messages = make_messages(*(f"message {i}" for i in range(5)))
    server.default = _echo_facts
    async with LLMFactExtractor(
        server.base_url, MODEL, batch_size=2, max_concurrency=2, backoff_base=0.001
    ) as ex:
        facts = await ex.extract(messages)

    assert len(server.requests) == 3
    prompts = sorted(r.user_prompt.count("\n[") for r in server.requests)
    assert prompts == [1, 2, 2]
    assert [f.content for f in facts] == [f"Said: message {i}" for i in range(5)]
    assert [f.message_ids for f in facts] == [m.message_ids for m in messages]
    assert server.max_in_flight == 2


# --- retries and failures --------------------------------------------------------------------


async def test_500_then_success_is_retried(server: ChatServer, extractor: LLMFactExtractor) -> None:
    server.script(
        Reply(status=500, body="upstream exploded"),
        completion({"facts": [fact("Caroline likes tea.", 1)]}),
    )
    facts = await extractor.extract(make_messages("I love tea."))
    assert [f.content for f in facts] == ["Caroline likes tea."]
    assert len(server.requests) == 2


async def test_429_honours_retry_after(server: ChatServer) -> None:
    server.script(
        Reply(status=429, body="slow down", headers={"Retry-After": "0"}),
        completion({"facts": [fact("Caroline likes tea.", 1)]}),
    )
    # Without Retry-After the backoff would be 10 s; the header says retry now.
    async with LLMFactExtractor(server.base_url, MODEL, backoff_base=10.0) as ex:
        began = time.monotonic()
        facts = await ex.extract(make_messages("I love tea."))
    assert time.monotonic() - began < 5
    assert len(facts) == 1
    assert len(server.requests) == 2


def test_retry_after_and_backoff_are_capped() -> None:
    ex = LLMFactExtractor("http://127.0.0.1:9/v1", MODEL, backoff_base=1.0)
    assert ex.api.delay(0, 3600.0) == 30.0
    assert ex.api.delay(0, 0.0) == 0.0
    assert 1.0 <= ex.api.delay(0, None) <= 1.1
    assert 4.0 <= ex.api.delay(2, None) <= 4.4
    assert ex.api.delay(20, None) == 30.0


@pytest.mark.parametrize(
    "bad",
    [
        completion("this is not json at all"),
        completion({"no_facts_here": []}),
        completion({"facts": "not a list"}),
        Reply(status=200, body="<html>gateway</html>"),
        Reply(status=200, body={"choices": []}),
    ],
    ids=["content-not-json", "no-facts", "facts-not-list", "body-not-json", "no-choices"],
)
async def test_unusable_completion_is_retried(
    server: ChatServer, extractor: LLMFactExtractor, bad: Reply
) -> None:
    server.script(bad, completion({"facts": [fact("Caroline likes tea.", 1)]}))
    facts = await extractor.extract(make_messages("I love tea."))
    assert [f.content for f in facts] == ["Caroline likes tea."]
    assert len(server.requests) == 2


async def test_persistent_500_raises_after_all_retries(
    server: ChatServer, extractor: LLMFactExtractor
) -> None:
    server.default = Reply(status=503, body="overloaded " * 100)
    with pytest.raises(ExtractionError) as caught:
        await extractor.extract(make_messages("I love tea."))
    assert len(server.requests) == 3  # max_retries=2 → 3 attempts
    message = str(caught.value)
    assert "3 attempt" in message
    assert "HTTP 503" in message
    assert len(message) < 800  # the body is truncated


async def test_401_fails_at_once_without_leaking_the_key(
    server: ChatServer, extractor: LLMFactExtractor, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply(status=401, body={"error": {"message": f"Incorrect API key {API_KEY}"}}))
    with caplog.at_level(logging.DEBUG), pytest.raises(ExtractionError) as caught:
        await extractor.extract(make_messages("I love tea."))
    assert len(server.requests) == 1
    assert "HTTP 401" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(extractor)
    assert API_KEY not in caplog.text


async def test_400_fails_at_once(server: ChatServer, extractor: LLMFactExtractor) -> None:
    server.script(Reply(status=400, body={"error": {"message": "response_format unsupported"}}))
    with pytest.raises(ExtractionError, match=r"HTTP 400.*response_format unsupported"):
        await extractor.extract(make_messages("I love tea."))
    assert len(server.requests) == 1


async def test_slow_server_is_retried_then_fails(server: ChatServer) -> None:
    server.default = Reply(delay=2.0, body=completion({"facts": []}).body)
    async with LLMFactExtractor(
        server.base_url, MODEL, timeout=0.2, max_retries=1, backoff_base=0.001
    ) as ex:
        with pytest.raises(ExtractionError, match="timed out"):
            await ex.extract(make_messages("I love tea."))
    assert len(server.requests) == 2


async def test_slow_then_fast_succeeds(server: ChatServer) -> None:
    good = completion({"facts": [fact("Caroline likes tea.", 1)]})
    server.script(Reply(delay=2.0, body=good.body), good)
    async with LLMFactExtractor(server.base_url, MODEL, timeout=0.2, backoff_base=0.001) as ex:
        facts = await ex.extract(make_messages("I love tea."))
    assert len(facts) == 1
    assert len(server.requests) == 2


async def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with LLMFactExtractor(
        f"http://127.0.0.1:{port}/v1", MODEL, max_retries=1, backoff_base=0.001
    ) as ex:
        with pytest.raises(ExtractionError, match=r"2 attempt.*transport error"):
            await ex.extract(make_messages("I love tea."))


async def test_one_failed_batch_fails_the_whole_call(server: ChatServer) -> None:
    def reply(request: Recorded) -> Reply:
        if "message 1" in request.user_prompt:
            return Reply(status=400, body="bad batch")
        return _echo_facts(request)

    server.default = reply
    async with LLMFactExtractor(
        server.base_url, MODEL, batch_size=1, max_concurrency=1, backoff_base=0.001
    ) as ex:
        with pytest.raises(ExtractionError, match="HTTP 400"):
            await ex.extract(make_messages("message 0", "message 1", "message 2"))
    # The third batch never started: the call failed as soon as the second did.
    assert len(server.requests) == 2


# --- item parsing ----------------------------------------------------------------------------


async def test_malformed_items_are_dropped_and_good_ones_kept(
    server: ChatServer, extractor: LLMFactExtractor, caplog: pytest.LogCaptureFixture
) -> None:
    messages = make_messages("one", "two", "three")
    server.script(
        completion(
            {
                "facts": [
                    "just a string",
                    {"type": "event", "sources": [1]},  # no content
                    fact("   ", 1),  # blank content
                    fact("Cites nothing.", 99),  # no valid source
                    fact("Cites no message."),
                    fact("Bad confidence.", 1, confidence="very"),
                    fact("Unknown type.", 2, type="opinion"),
                    fact("Too sure.", 1, confidence=1.7),
                    fact("Too unsure.", 1, confidence=-0.2),
                    fact(
                        "Odd fields.",
                        3,
                        "[2]",
                        99,
                        entities=["Caroline", 7, "", "Caroline", "Boston"],
                        confidence="0.5",
                        occurred_at="sometime soon",
                        key=42,
                    ),
                    fact("Defaults.", 1, type="PREFERENCE", entities=None, confidence=None),
                ]
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="memfuse.layers.extractors.llm"):
        facts = await extractor.extract(messages)

    by_content = {f.content: f for f in facts}
    assert list(by_content) == [
        "Unknown type.",
        "Too sure.",
        "Too unsure.",
        "Odd fields.",
        "Defaults.",
    ]
    assert by_content["Unknown type."].fact_type == "statement"
    assert by_content["Too sure."].confidence == 1.0
    assert by_content["Too unsure."].confidence == 0.0
    odd = by_content["Odd fields."]
    assert odd.message_ids == messages[1].message_ids + messages[2].message_ids
    assert odd.entities == ("Caroline", "Boston")
    assert odd.confidence == 0.5
    assert odd.occurred_at is None
    assert odd.key is None
    defaults = by_content["Defaults."]
    assert defaults.fact_type == "preference"
    assert defaults.entities == ()
    # null means the model gave no confidence, like a missing field.
    assert defaults.confidence == 1.0
    dropped = [r for r in caplog.records if "dropping LLM fact item" in r.getMessage()]
    assert len(dropped) == 6


async def test_occurred_at_is_parsed_leniently(server: ChatServer) -> None:
    eastern = timezone(timedelta(hours=-4))
    messages = make_messages("hello", start=datetime(2023, 5, 8, 9, 0, tzinfo=eastern))
    server.script(
        completion(
            {
                "facts": [
                    fact("Date only.", 1, occurred_at="2023-05-07"),
                    fact("Naive date-time.", 1, occurred_at="2023-05-07T18:30:00"),
                    fact("Aware date-time.", 1, occurred_at="2023-05-07T18:30:00+02:00"),
                    fact("Zulu.", 1, occurred_at="2023-05-07T18:30:00Z"),
                    fact("Month.", 1, occurred_at="2023-06"),
                    fact("Year.", 1, occurred_at="2022"),
                    fact("Garbage.", 1, occurred_at="last Tuesday"),
                    fact("Not a string.", 1, occurred_at=20230507),
                ]
            }
        )
    )
    async with LLMFactExtractor(server.base_url, MODEL, backoff_base=0.001) as ex:
        facts = await ex.extract(messages)
    when = {f.content: f.occurred_at for f in facts}
    plus_two = timezone(timedelta(hours=2))
    assert when == {
        "Date only.": datetime(2023, 5, 7, tzinfo=eastern),
        "Naive date-time.": datetime(2023, 5, 7, 18, 30, tzinfo=eastern),
        "Aware date-time.": datetime(2023, 5, 7, 18, 30, tzinfo=plus_two),
        "Zulu.": datetime(2023, 5, 7, 18, 30, tzinfo=UTC),
        "Month.": datetime(2023, 6, 1, tzinfo=eastern),
        "Year.": datetime(2022, 1, 1, tzinfo=eastern),
        "Garbage.": None,
        "Not a string.": None,
    }
    assert all(w is None or w.tzinfo is not None for w in when.values())


# --- construction and lifecycle --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"base_url": ""}, "base_url"),
        ({"base_url": "localhost:8000/v1"}, "base_url"),
        ({"base_url": "ftp://host/v1"}, "base_url"),
        ({"base_url": "http:///v1"}, "base_url"),
        ({"model": " "}, "model"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"backoff_base": -0.1}, "backoff_base"),
    ],
)
def test_bad_arguments_raise_configuration_error(kwargs: dict[str, Any], setting: str) -> None:
    args: dict[str, Any] = {"base_url": "http://127.0.0.1:8000/v1", "model": MODEL, **kwargs}
    with pytest.raises(ConfigurationError) as caught:
        LLMFactExtractor(**args)
    assert caught.value.setting == setting
    assert setting in str(caught.value)


def test_is_a_fact_extractor_named_after_the_model() -> None:
    ex = LLMFactExtractor("http://127.0.0.1:8000/v1", MODEL, api_key=API_KEY)
    assert isinstance(ex, FactExtractor)
    assert ex.name == f"llm:{MODEL}"
    assert API_KEY not in repr(ex)


async def test_given_client_is_not_closed(server: ChatServer) -> None:
    server.script(completion({"facts": []}), completion({"facts": []}))
    async with httpx.AsyncClient() as client:
        async with LLMFactExtractor(server.base_url, MODEL, client=client) as ex:
            await ex.extract(make_messages("hello"))
        assert not client.is_closed
        await client.post(server.base_url + "/chat/completions", json={})
    assert len(server.requests) == 2


async def test_extract_after_aclose_raises(server: ChatServer) -> None:
    ex = LLMFactExtractor(server.base_url, MODEL)
    await ex.aclose()
    with pytest.raises(ClosedError):
        await ex.extract(make_messages("hello"))
    await ex.aclose()  # idempotent
    assert server.requests == []
