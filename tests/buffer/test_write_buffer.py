"""The WriteBuffer's coordination logic on its own: triggers, ordering, bounds and failures.

A unit test, not a database test: ``write_batch`` is a fake writer defined here that records
each batch, can hold a batch back until the test releases it, and fails batches that contain
a request marked to fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from memfuse.buffer import WriteBuffer
from memfuse.errors import ClosedError
from memfuse.monitor import PerformanceMonitor


@dataclass(frozen=True)
class Request:
    name: str
    size: int = 1
    tokens: int = 1
    fail: bool = False


class Rejected(Exception):
    """What the fake writer raises for a batch holding a request marked to fail."""


class FakeWriter:
    """Records batches; a batch holding a held name waits until that name is released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.committed: list[str] = []
        self._held: dict[str, asyncio.Event] = {}

    def hold(self, *names: str) -> None:
        for name in names:
            self._held[name] = asyncio.Event()

    def release(self, *names: str) -> None:
        for name in names or tuple(self._held):
            self._held[name].set()

    def started(self, name: str) -> bool:
        return any(name in batch for batch in self.batches)

    async def write_batch(self, requests: Sequence[Request]) -> list[str]:
        names = [request.name for request in requests]
        self.batches.append(names)
        for name in names:
            if name in self._held:
                await self._held[name].wait()
        if any(request.fail for request in requests):
            raise Rejected(f"batch {names} holds a bad request")
        self.committed.extend(names)
        return [f"{name} written" for name in names]


def make_buffer(
    writer: FakeWriter, monitor: PerformanceMonitor, **options: Any
) -> WriteBuffer[Request, str]:
    return WriteBuffer(
        writer.write_batch,
        size=lambda request: request.size,
        tokens=lambda request: request.tokens,
        monitor=monitor,
        **options,
    )


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition`` holds (fails after one second)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


def reasons(buffer: WriteBuffer[Request, str]) -> dict[str, int]:
    return {reason: count for reason, count in buffer.stats.batches.items() if count}


@pytest.fixture
async def writer() -> AsyncIterator[FakeWriter]:
    writer = FakeWriter()
    yield writer
    writer.release()  # a failed test must not leave a batch held forever


async def test_a_lone_call_is_written_at_once_and_gets_its_result(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=0)
    async with asyncio.timeout(0.5):
        assert await buffer.submit(Request("hello")) == "hello written"
    assert writer.batches == [["hello"]]
    await buffer.close()


async def test_a_lone_call_waits_for_no_timer(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    """With ``max_delay`` 0 nothing sleeps: a lone call is answered after a few hops of the
    event loop (to the flusher and back), with no timer in between, every time."""
    buffer = make_buffer(writer, monitor, max_delay=0)
    for number in range(5):
        call = asyncio.create_task(buffer.submit(Request(f"call-{number}")))
        await settle()
        assert call.done(), f"call {number} still waits"
        assert call.result() == f"call-{number} written"
    assert reasons(buffer) == {"age": 5}
    await buffer.close()


async def test_calls_arriving_during_a_write_share_the_next_batch(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor)
    writer.hold("first")
    first = asyncio.create_task(buffer.submit(Request("first")))
    await until(lambda: writer.started("first"))
    names = [f"call-{i}" for i in range(20)]
    calls = [asyncio.create_task(buffer.submit(Request(name))) for name in names]
    await until(lambda: buffer.pending_messages == 20)

    writer.release()
    assert await asyncio.gather(*calls) == [f"{name} written" for name in names]
    assert await first == "first written"
    later = writer.batches[1:]
    assert 1 <= len(later) <= 2
    assert [name for batch in later for name in batch] == names
    await buffer.close()


async def test_every_caller_returns_only_after_its_batch_committed(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor)
    writer.hold("call-0")
    returned_after_commit: list[bool] = []

    async def call(name: str) -> None:
        await buffer.submit(Request(name))
        returned_after_commit.append(name in writer.committed)

    calls = [asyncio.create_task(call(f"call-{i}")) for i in range(5)]
    await until(lambda: writer.started("call-0"))
    await settle()
    assert not any(task.done() for task in calls)

    writer.release()
    await asyncio.gather(*calls)
    assert returned_after_commit == [True] * 5
    await buffer.close()


async def test_a_full_batch_goes_out_without_waiting_for_max_delay(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_messages=5, max_delay=60)
    async with asyncio.timeout(0.5):
        await asyncio.gather(*(buffer.submit(Request(f"m{i}")) for i in range(5)))
    assert reasons(buffer) == {"size": 1}
    await buffer.close()


async def test_enough_tokens_send_a_batch_before_it_is_full(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_messages=100, max_tokens=10, max_delay=60)
    async with asyncio.timeout(0.5):
        await asyncio.gather(
            buffer.submit(Request("a", tokens=6)), buffer.submit(Request("b", tokens=6))
        )
    assert writer.batches == [["a", "b"]]
    assert reasons(buffer) == {"tokens": 1}
    await buffer.close()


async def test_with_max_delay_a_lone_call_waits_about_that_long(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=0.05)
    started = time.monotonic()
    await buffer.submit(Request("lonely"))
    assert 0.045 <= time.monotonic() - started < 0.5
    assert reasons(buffer) == {"age": 1}
    await buffer.close()


async def test_flush_returns_once_everything_submitted_before_it_is_written(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=60)
    writer.hold("a")
    calls = [asyncio.create_task(buffer.submit(Request(name))) for name in "abc"]
    await until(lambda: buffer.pending_messages == 3)

    flush = asyncio.create_task(buffer.flush())
    await until(lambda: writer.started("a"))
    await settle()
    assert not flush.done()

    writer.release()
    await flush
    assert all(task.done() for task in calls)
    assert writer.committed == ["a", "b", "c"]
    assert reasons(buffer) == {"explicit": 1}
    await buffer.close()


async def test_flush_with_nothing_pending_returns_at_once(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor)
    async with asyncio.timeout(0.5):
        await buffer.flush()
    assert writer.batches == []
    await buffer.close()


async def test_close_writes_everything_pending_then_refuses_new_calls(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=60, max_messages=3)
    writer.hold("x")
    in_flight = asyncio.create_task(buffer.submit(Request("x", size=3)))
    await until(lambda: writer.started("x"))
    queued = [asyncio.create_task(buffer.submit(Request(f"q{i}"))) for i in range(5)]
    await until(lambda: buffer.pending_messages == 5)

    close = asyncio.create_task(buffer.close())
    await settle()
    writer.release()
    await close

    assert in_flight.result() == "x written"
    assert [task.result() for task in queued] == [f"q{i} written" for i in range(5)]
    assert sorted(writer.committed) == sorted(["x", *(f"q{i}" for i in range(5))])
    assert buffer.stats.batches["shutdown"] == 2
    with pytest.raises(ClosedError):
        await buffer.submit(Request("late"))


async def test_closing_beats_a_pending_flush(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=60, max_messages=3)
    writer.hold("x")
    in_flight = asyncio.create_task(buffer.submit(Request("x", size=3)))
    await until(lambda: writer.started("x"))
    queued = [asyncio.create_task(buffer.submit(Request(name))) for name in "ab"]
    await until(lambda: buffer.pending_messages == 2)

    flush = asyncio.create_task(buffer.flush())
    close = asyncio.create_task(buffer.close())
    await settle()
    writer.release()
    await asyncio.gather(flush, close, in_flight, *queued)
    assert reasons(buffer) == {"size": 1, "shutdown": 1}


async def test_a_flush_beats_a_full_batch(writer: FakeWriter, monitor: PerformanceMonitor) -> None:
    buffer = make_buffer(writer, monitor, max_delay=60, max_messages=3)
    writer.hold("x")
    in_flight = asyncio.create_task(buffer.submit(Request("x", size=3)))
    await until(lambda: writer.started("x"))
    queued = [asyncio.create_task(buffer.submit(Request(name))) for name in "abc"]
    await until(lambda: buffer.pending_messages == 3)

    flush = asyncio.create_task(buffer.flush())
    await settle()
    writer.release()
    await asyncio.gather(flush, in_flight, *queued)
    assert reasons(buffer) == {"size": 1, "explicit": 1}
    await buffer.close()


async def test_a_full_buffer_makes_callers_wait_for_room_and_drops_nothing(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_messages=5, max_pending=10)
    writer.hold("first")
    first = asyncio.create_task(buffer.submit(Request("first")))
    await until(lambda: writer.started("first"))
    waiting_room = [asyncio.create_task(buffer.submit(Request(f"q{i}"))) for i in range(10)]
    await until(lambda: buffer.pending_messages == 10)

    eleventh = asyncio.create_task(buffer.submit(Request("eleventh")))
    await settle()
    assert not eleventh.done()
    assert buffer.pending_messages == 10

    writer.release()
    assert await asyncio.wait_for(eleventh, 1) == "eleventh written"
    await asyncio.gather(first, *waiting_room)
    assert sorted(writer.committed) == sorted(["first", "eleventh", *(f"q{i}" for i in range(10))])
    await buffer.close()


async def test_a_bad_request_fails_only_its_own_caller(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_messages=5, max_delay=60)
    requests = [Request(f"m{i}", fail=i == 2) for i in range(5)]
    results = await asyncio.gather(
        *(buffer.submit(request) for request in requests), return_exceptions=True
    )

    assert isinstance(results[2], Rejected)
    assert [results[i] for i in (0, 1, 3, 4)] == [f"m{i} written" for i in (0, 1, 3, 4)]
    assert writer.batches[0] == ["m0", "m1", "m2", "m3", "m4"]
    assert writer.batches[1:] == [["m0"], ["m1"], ["m2"], ["m3"], ["m4"]], "retried one by one"
    assert (buffer.stats.calls_written, buffer.stats.calls_failed) == (4, 1)
    await buffer.close()


async def test_an_error_that_is_nobodys_fault_fails_the_batch_at_once(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    """With the database down, retrying each call alone would only try to connect again and
    again; ``fail_together`` says so, and every caller gets the error from the one attempt."""
    buffer = make_buffer(
        writer, monitor, max_messages=5, max_delay=60, fail_together=lambda e: True
    )
    requests = [Request(f"m{i}", fail=i == 2) for i in range(5)]
    results = await asyncio.gather(
        *(buffer.submit(request) for request in requests), return_exceptions=True
    )

    assert all(isinstance(result, Rejected) for result in results)
    assert writer.batches == [["m0", "m1", "m2", "m3", "m4"]], "no call retried alone"
    assert (buffer.stats.calls_written, buffer.stats.calls_failed) == (0, 5)
    await buffer.close()


async def test_a_flusher_that_raises_restarts_and_answers_its_batch(
    writer: FakeWriter, monitor: PerformanceMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = make_buffer(writer, monitor)
    original = WriteBuffer._write

    async def broken(self: WriteBuffer[Request, str], batch: Any, reason: str) -> None:
        monkeypatch.setattr(WriteBuffer, "_write", original)
        raise RuntimeError("a bug past the batch's own error handling")

    monkeypatch.setattr(WriteBuffer, "_write", broken)
    with pytest.raises(RuntimeError, match="a bug past"):
        await asyncio.wait_for(buffer.submit(Request("first")), 5)
    assert await asyncio.wait_for(buffer.submit(Request("second")), 5) == "second written"
    assert monitor.counters()["buffer_flusher_restarts"] == 1
    await asyncio.wait_for(buffer.flush(), 5)
    await buffer.close()


async def test_a_call_cancelled_before_its_batch_is_taken_is_not_written(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor, max_delay=60)
    calls = {name: asyncio.create_task(buffer.submit(Request(name))) for name in "abc"}
    await until(lambda: buffer.pending_messages == 3)
    calls["b"].cancel()
    await settle()

    await buffer.flush()
    assert calls["b"].cancelled()
    assert (await calls["a"], await calls["c"]) == ("a written", "c written")
    assert writer.batches == [["a", "c"]]
    await buffer.close()


async def test_flush_waits_for_a_call_queued_before_a_cancelled_one(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor)
    writer.hold("first", "a")
    first = asyncio.create_task(buffer.submit(Request("first")))
    await until(lambda: writer.started("first"))
    a = asyncio.create_task(buffer.submit(Request("a")))
    b = asyncio.create_task(buffer.submit(Request("b")))
    await until(lambda: buffer.pending_messages == 2)
    b.cancel()
    writer.release("first")
    await until(lambda: writer.started("a"))

    flush = asyncio.create_task(buffer.flush())
    await settle()
    assert not flush.done(), "flush returned while 'a', submitted before it, was not written"

    writer.release("a")
    await flush
    assert (await first, a.result()) == ("first written", "a written")
    await buffer.close()


async def test_each_batch_is_timed_as_buffer_flush_in_the_monitor(
    writer: FakeWriter, monitor: PerformanceMonitor
) -> None:
    buffer = make_buffer(writer, monitor)
    for name in ("one", "two", "three"):
        await buffer.submit(Request(name))
    stats = monitor.stats("buffer_flush")
    assert stats is not None
    assert stats.count == sum(buffer.stats.batches.values()) == 3
    await buffer.close()
