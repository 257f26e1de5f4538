"""A scripted stand-in for an OpenAI-compatible HTTP API, for tests of the clients that call one.

It is a real HTTP server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, ephemeral port, in
a background thread), so the client under test goes through its real HTTP client, timeouts and
connection handling. Each test scripts the replies (status, headers, body, delay) in order, or
as functions of the request, and reads back the requests it received. The chat completions
(``chat_server``) and embeddings (``embedding_server``) doubles add their reply builders.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


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
        """The texts of an embeddings request."""
        return list(self.json()["input"])

    @property
    def user_prompt(self) -> str:
        """The content of the user message of a chat completions request."""
        messages = self.json()["messages"]
        return str(next(m["content"] for m in messages if m["role"] == "user"))


Script = Reply | Callable[[Recorded], Reply]


class ApiServer:
    """The scripted server; use as a context manager or call ``start`` / ``stop``."""

    def __init__(self, default: Script | None = None) -> None:
        self._replies: deque[Script] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.default = default
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client calls the base URL: the root plus ``/v1``."""
        return f"{self.url}/v1"

    def script(self, *replies: Script) -> None:
        """Queue replies, served one per request in order; then ``default`` applies."""
        with self._lock:
            self._replies.extend(replies)

    def _next(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._replies.popleft() if self._replies else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if script is None:
            return Reply(status=500, body="api_server: no scripted reply left")
        return script(request) if callable(script) else script

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def start(self) -> Self:
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
                finally:
                    server._done()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval so ``stop`` (which waits for the poll) is quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="api-server",
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
