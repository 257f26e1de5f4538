"""A scripted stand-in for an OpenAI-compatible embeddings API, for tests.

It is a real HTTP server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, ephemeral port, in
a background thread), so the embedder under test goes through its real HTTP client, timeouts
and connection handling. Each test scripts the replies (status, headers, body, delay) in order,
or as functions of the request, and reads back the requests it received. Without a script the
server answers with :func:`fake_vector` embeddings of the requested texts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIMENSION = 8


@dataclass(frozen=True)
class Reply:
    """One scripted response; ``body`` may be text, bytes or a JSON-able object."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class Recorded:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def inputs(self) -> list[str]:
        return list(self.json()["input"])


Script = Reply | Callable[[Recorded], Reply]


def fake_vector(text: str, dimension: int = DIMENSION) -> list[float]:
    """A deterministic vector per text, so tests can tell which text a vector belongs to."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[i] / 255.0, 6) for i in range(dimension)]


def embeddings(
    texts: Sequence[str],
    *,
    dimension: int = DIMENSION,
    order: Sequence[int] | None = None,
    with_index: bool = True,
) -> Reply:
    """A 200 embeddings response for ``texts``; ``order`` lists the indexes as sent."""
    positions = list(order) if order is not None else list(range(len(texts)))
    data = []
    for position in positions:
        item: dict[str, Any] = {
            "object": "embedding",
            "embedding": fake_vector(texts[position], dimension),
        }
        if with_index:
            item["index"] = position
        data.append(item)
    return Reply(
        body={
            "object": "list",
            "data": data,
            "model": "test-embed",
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        },
        headers={"Content-Type": "application/json"},
    )


def echo(request: Recorded) -> Reply:
    """Embeds whatever was asked, in order: the default reply."""
    return embeddings(request.inputs)


class EmbeddingServer:
    """The scripted server; use as a context manager or call ``start`` / ``stop``."""

    def __init__(self) -> None:
        self._replies: deque[Script] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.default: Script = echo
        self.requests: list[Recorded] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """What an OpenAI client calls the base URL: the root plus ``/v1``."""
        assert self._server is not None, "the server is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *replies: Script) -> None:
        """Queue replies, served one per request in order; then ``default`` applies."""
        with self._lock:
            self._replies.extend(replies)

    def _next(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._replies.popleft() if self._replies else self.default
        return script(request) if callable(script) else script

    def start(self) -> EmbeddingServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = Recorded(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
                reply = server._next(request)
                try:
                    if reply.delay:
                        server._stopping.wait(reply.delay)
                    body = reply.encoded()
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (a timeout test); nothing to answer.
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval so ``stop`` (which waits for the poll) is quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="embedding-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
