"""A scripted stand-in for an OpenAI-compatible chat completions API, for tests.

The server is :class:`api_server.ApiServer` (a real HTTP server on 127.0.0.1); this module adds
the reply a chat completions API gives.
"""

from __future__ import annotations

import json
from typing import Any

from api_server import ApiServer, Recorded, Reply

ChatServer = ApiServer

__all__ = ["ChatServer", "Recorded", "Reply", "completion"]


def completion(content: Any, *, finish_reason: str = "stop") -> Reply:
    """A 200 chat completion whose message content is ``content`` (JSON-encoded unless text)."""
    text = content if isinstance(content, str) else json.dumps(content)
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
        },
        headers={"Content-Type": "application/json"},
    )
