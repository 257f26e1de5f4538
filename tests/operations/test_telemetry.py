"""OpenTelemetry spans of ``Memory.add``, ``Memory.query`` and ``MemFuse.flush``, and the no-op
path without the ``otel`` extra.

The global tracer provider can be set only once per process, so this module sets it once (or
reuses an SDK provider already set) and gives each test a cleared in-memory exporter; memfuse
looks the tracer up on every call, so it finds this provider whenever it was set.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from memfuse.errors import ValidationError
from memfuse.memory import MemFuse, Memory
from memfuse.operations import telemetry

SECRET = "my passport number is X1234567"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # later tests' spans are no longer kept


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@pytest.fixture
async def mf(database_url: str) -> AsyncIterator[MemFuse]:
    async with MemFuse(database_url, pipeline_auto=False) as mf:
        yield mf


@pytest.fixture
async def memory(mf: MemFuse) -> Memory:
    return await mf.init("alice@example.com", agent="assistant", session="trip-planning")


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_add_records_the_message_count_and_session_id(
    spans: InMemorySpanExporter, memory: Memory
) -> None:
    await memory.add([{"role": "user", "content": SECRET}, {"role": "assistant", "content": "ok"}])

    [span] = named(spans, "memfuse.add")
    assert span.status.status_code == StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "memfuse.session_id": str(memory.scope.session_id),
        "memfuse.messages": 2,
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "memfuse"


async def test_query_records_its_options_and_result_count(
    spans: InMemorySpanExporter, memory: Memory
) -> None:
    await memory.add([{"role": "user", "content": "The kayak trip is on Sunday."}])
    results = await memory.query("kayak trip", top_k=3, layers=["m0"], methods=["text"])
    assert results
    await memory.query("kayak trip", max_tokens=200, session="no such session")

    first, second = named(spans, "memfuse.query")
    assert dict(first.attributes or {}) == {
        "memfuse.session_id": str(memory.scope.session_id),
        "memfuse.top_k": 3,
        "memfuse.unit": "message",
        "memfuse.layers": ("m0",),
        "memfuse.methods": ("text",),
        "memfuse.filter.agent": False,
        "memfuse.filter.session": False,
        "memfuse.filter.time": False,
        "memfuse.results": len(results),
    }
    assert second.attributes is not None
    assert "memfuse.top_k" not in second.attributes
    assert second.attributes["memfuse.max_tokens"] == 200
    assert second.attributes["memfuse.filter.session"] is True
    assert second.attributes["memfuse.results"] == 0


async def test_flush_records_a_span(spans: InMemorySpanExporter, mf: MemFuse) -> None:
    await mf.flush()
    [span] = named(spans, "memfuse.flush")
    assert span.status.status_code == StatusCode.UNSET


async def test_a_failing_add_records_the_error_and_reraises_it(
    spans: InMemorySpanExporter, memory: Memory
) -> None:
    with pytest.raises(ValidationError, match="role") as raised:
        await memory.add([{"role": "narrator", "content": SECRET}])

    [span] = named(spans, "memfuse.add")
    assert span.status.status_code == StatusCode.ERROR
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "memfuse.errors.ValidationError"
    assert event.attributes["exception.message"] == str(raised.value)


async def test_spans_nest_under_the_apps_span(spans: InMemorySpanExporter, memory: Memory) -> None:
    with trace.get_tracer("app").start_as_current_span("handle request") as parent:
        await memory.add([{"role": "user", "content": "hello"}])
        await memory.query("hello")

    for name in ("memfuse.add", "memfuse.query"):
        [span] = named(spans, name)
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id


async def test_no_user_content_or_names_in_span_attributes(
    spans: InMemorySpanExporter, mf: MemFuse, memory: Memory
) -> None:
    await memory.add([{"role": "user", "content": SECRET, "name": "Alice Smith"}])
    await memory.query(SECRET, agent="assistant", session="trip-planning")
    await mf.flush()

    recorded = spans.get_finished_spans()
    assert {span.name for span in recorded} == {"memfuse.add", "memfuse.query", "memfuse.flush"}
    attributes = json.dumps([dict(span.attributes or {}) for span in recorded])
    for private in ("passport", "X1234567", "Alice Smith", "alice", "trip-planning", "assistant"):
        assert private not in attributes


async def test_nothing_is_recorded_when_disabled(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, mf: MemFuse, memory: Memory
) -> None:
    monkeypatch.setattr(telemetry, "ENABLED", False)
    assert await memory.add([{"role": "user", "content": "hello"}])
    assert await memory.query("hello")
    await mf.flush()
    assert spans.get_finished_spans() == ()


def test_without_opentelemetry_the_span_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "opentelemetry", None)  # makes the import fail
            importlib.reload(telemetry)
            assert telemetry.ENABLED is False
            with telemetry.span("memfuse.add", {"memfuse.messages": 1}) as span:
                assert span is None
            with pytest.raises(ValidationError), telemetry.span("memfuse.add", {}):
                raise ValidationError("propagates unchanged")
    finally:
        importlib.reload(telemetry)
    assert telemetry.ENABLED is True
