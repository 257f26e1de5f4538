"""A scripted stand-in for an OpenAI-compatible embeddings API, for tests.

The server is :class:`api_server.ApiServer` (a real HTTP server on 127.0.0.1); this module adds
the replies an embeddings API gives. Without a script the server answers with
:func:`fake_vector` embeddings of the requested texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from api_server import ApiServer, Recorded, Reply

__all__ = ["DIMENSION", "EmbeddingServer", "Recorded", "Reply", "embeddings", "fake_vector"]

DIMENSION = 8


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


class EmbeddingServer(ApiServer):
    """The scripted server, answering :func:`echo` when nothing is scripted."""

    def __init__(self) -> None:
        super().__init__(default=echo)
