"""``LocalEmbedder``'s forward passes, its model thread and its memory release (issue 14).

The pass plan is pure and tested without the model; the embedder's wiring is tested with a
stand-in model (marked ``model``: constructing a ``LocalEmbedder`` needs the ``local`` extra)
and with the real all-MiniLM-L6-v2, whose vectors must not change with the batching.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from memfuse.config import Settings
from memfuse.container import make_embedder
from memfuse.embedding import embedders as embedders_module
from memfuse.embedding.embedders import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_PASS_THREADS,
    LocalEmbedder,
    cpu_has_native_bfloat16,
    plan_passes,
    release_freed_memory,
    resolve_precision,
)
from memfuse.errors import ClosedError, ConfigurationError, EmbeddingError


def test_passes_hold_texts_of_one_length_under_both_limits() -> None:
    lengths = [5, 250, 12, 7, 256, 40, 9, 12, 3, 256, 100]
    passes = plan_passes(lengths, max_texts=3, max_tokens=512)

    assert sorted(i for indexes in passes for i in indexes) == list(range(len(lengths)))
    for indexes in passes:
        assert 1 <= len(indexes) <= 3
        assert len(indexes) * max(lengths[i] for i in indexes) <= 512
    order = [lengths[i] for indexes in passes for i in indexes]
    assert order == sorted(lengths, reverse=True), "longest first, so a pass pads little"


def test_a_text_longer_than_the_budget_gets_a_pass_of_its_own() -> None:
    assert plan_passes([300, 2, 2], max_texts=64, max_tokens=100) == [[0], [1, 2]]
    assert plan_passes([], max_texts=64, max_tokens=100) == []


def test_short_texts_fill_a_pass_up_to_the_text_limit() -> None:
    passes = plan_passes([10] * 200, max_texts=64, max_tokens=4096)
    assert [len(indexes) for indexes in passes] == [64, 64, 64, 8]


def test_the_budget_caps_long_texts() -> None:
    passes = plan_passes([256] * 64, max_texts=64, max_tokens=DEFAULT_BATCH_TOKENS)
    assert {len(indexes) for indexes in passes} == {DEFAULT_BATCH_TOKENS // 256}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_can_be_released_on_linux() -> None:
    assert release_freed_memory() is True


def test_the_settings_have_a_token_budget_and_a_chunk_size() -> None:
    settings = Settings()
    assert settings.embedding_batch_tokens == DEFAULT_BATCH_TOKENS
    assert settings.embedding_pass_threads == DEFAULT_PASS_THREADS
    assert settings.worker_chunk_size == 256
    for name in ("embedding_batch_tokens", "embedding_pass_threads", "worker_chunk_size"):
        with pytest.raises(ConfigurationError, match=name):
            Settings(**{name: 0})


class StandInModel:
    """Encodes a text as a unit vector from its length; records each call and its thread."""

    max_seq_length = 16

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def tokenizer(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] * min(len(t.split()) + 2, self.max_seq_length) for t in texts]}

    def encode(self, sentences: list[str], *, batch_size: int, **_: Any) -> Any:
        import numpy

        self.calls.append(list(sentences))
        self.threads.add(threading.current_thread().name)
        assert batch_size == len(sentences), "one forward pass per call"
        vectors = numpy.zeros((len(sentences), 4), dtype=numpy.float32)
        for row, text in enumerate(sentences):
            angle = len(text.split()) / 10
            vectors[row, :2] = (math.cos(angle), math.sin(angle))
        return vectors


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInModel:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    model = StandInModel()
    monkeypatch.setattr(embedders_module, "_load_sentence_transformer", lambda *_: model)
    return model


def word_texts(*counts: int) -> list[str]:
    return [" ".join(["w"] * count) for count in counts]


@pytest.mark.model
async def test_a_call_is_cut_into_passes_and_comes_back_in_order(
    stand_in: StandInModel, tmp_path: Path
) -> None:
    embedder = LocalEmbedder(model_path=tmp_path, batch_size=4, batch_tokens=24)
    try:
        texts = word_texts(1, 14, 3, 14, 2, 6, 1, 1)
        vectors = await embedder.embed_documents(texts)
        for text, vector in zip(texts, vectors, strict=True):
            angle = len(text.split()) / 10
            assert vector[:2] == pytest.approx([math.cos(angle), math.sin(angle)], abs=1e-6)
        for call in stand_in.calls:
            pieces = [min(len(t.split()) + 2, 16) for t in call]
            assert len(call) <= 4 and len(call) * max(pieces) <= 24
        assert sorted(map(len, texts)) == sorted(len(t) for c in stand_in.calls for t in c)
    finally:
        await embedder.aclose()


@pytest.mark.model
async def test_the_model_runs_in_one_thread_of_its_own(
    stand_in: StandInModel, tmp_path: Path
) -> None:
    embedder = LocalEmbedder(model_path=tmp_path, batch_size=2, batch_tokens=64)
    try:
        await asyncio.gather(*(embedder.embed_documents(word_texts(n, n, n)) for n in (1, 5, 9)))
        await asyncio.gather(*(asyncio.to_thread(lambda: None) for _ in range(8)))
        await embedder.embed_query("again")
        assert len(stand_in.threads) == 1
        assert next(iter(stand_in.threads)).startswith("memfuse-embedder")
    finally:
        await embedder.aclose()


@pytest.mark.model
async def test_memory_is_released_after_enough_passes_only(
    stand_in: StandInModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    releases: list[int] = []
    monkeypatch.setattr(embedders_module, "release_freed_memory", lambda: releases.append(1))
    embedder = LocalEmbedder(model_path=tmp_path, batch_size=64, batch_tokens=16)
    kept = LocalEmbedder(model_path=tmp_path, batch_size=64, batch_tokens=16, release_memory=False)
    try:
        await embedder.embed_query("one query")  # 4 pieces: far from 8 full passes
        assert releases == []
        await embedder.embed_documents(word_texts(*[14] * 8))  # 8 passes of 16 pieces
        assert releases == [1]
        await kept.embed_documents(word_texts(*[14] * 64))
        assert releases == [1]
    finally:
        await embedder.aclose()
        await kept.aclose()


@pytest.mark.model
def test_bad_pass_settings_fail_at_construction(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ConfigurationError, match="batch_tokens"):
        LocalEmbedder(model_path=tmp_path, batch_tokens=0)
    with pytest.raises(ConfigurationError, match="release_memory"):
        LocalEmbedder(model_path=tmp_path, release_memory="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pass_threads"):
        LocalEmbedder(model_path=tmp_path, pass_threads=0)


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it_natively() -> None:
    native = cpu_has_native_bfloat16()
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    assert resolve_precision("auto", "cuda:0") == "float32"
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ConfigurationError, match="embedding_precision"):
        Settings(embedding_precision="fp8")


@pytest.mark.model
def test_a_bad_precision_fails_at_construction(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ConfigurationError, match="precision"):
        LocalEmbedder(model_path=tmp_path, precision="half")
    assert LocalEmbedder(model_path=tmp_path, precision="float32").precision == "float32"


@pytest.mark.model
@pytest.mark.parametrize(
    ("variable", "ours", "apps"),
    [
        ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4", "64"),
        ("LRU_CACHE_CAPACITY", "4", "1024"),
        ("GOMP_SPINCOUNT", "10000", "300000"),
    ],
)
async def test_loading_sets_torchs_cpu_settings_unless_the_app_set_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, ours: str, apps: str
) -> None:
    """oneDNN's and torch's kernel caches capped, OpenMP threads that spin briefly between
    kernels: read when torch first runs, so the model's load sets them, and an app's own value
    wins."""
    monkeypatch.delenv(variable, raising=False)
    async with LocalEmbedder() as embedder:
        await embedder.load()
    assert os.environ[variable] == ours
    monkeypatch.setenv(variable, apps)
    async with LocalEmbedder() as embedder:
        await embedder.load()
    assert os.environ[variable] == apps


@pytest.mark.model
def test_the_container_passes_the_precision() -> None:
    embedder = make_embedder(Settings(embedding_precision="float32"))
    assert isinstance(embedder, LocalEmbedder)
    assert embedder.precision == "float32"


@pytest.mark.model
async def test_bfloat16_vectors_stay_within_the_issues_bar_of_float32() -> None:
    """The real model in both precisions (bfloat16 is emulated, slower, on a CPU without it):
    every vector, short or cut at 256 word pieces, within cosine 0.999 of float32's."""
    sentence = "Melanie said she ran a charity race for mental health last Saturday. "
    texts = [sentence * n for n in (1, 3, 40)] + ["ok", "What did Caroline paint?", "日本語の文"]
    exact = LocalEmbedder(precision="float32")
    fast = LocalEmbedder(precision="bfloat16")
    try:
        wanted = await exact.embed_documents(texts)
        got = await fast.embed_documents(texts)
        assert all(cosine(a, b) >= 0.999 for a, b in zip(got, wanted, strict=True))
        assert got != wanted  # the long text's pass did run in bfloat16
        # A query is a pass too small to gain from bfloat16 (BFLOAT16_MIN_PASS_TOKENS).
        query = "What did Caroline paint?"
        assert await fast.embed_query(query) == await exact.embed_query(query)
    finally:
        await exact.aclose()
        await fast.aclose()


@pytest.mark.model
def test_the_container_passes_the_token_budget() -> None:
    embedder = make_embedder(
        Settings(embedding_batch_tokens=1000, embedding_batch_size=7, embedding_pass_threads=1)
    )
    assert isinstance(embedder, LocalEmbedder)
    assert (embedder._batch_size, embedder._batch_tokens, embedder._pass_threads) == (7, 1000, 1)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_vectors_do_not_depend_on_the_passes(model: LocalEmbedder) -> None:
    """The real model: small passes under a tight budget give the vectors of the model's
    own ``encode`` of every text at once (cosine >= 0.999, the issue's bar)."""
    import numpy

    sentence = "Caroline went to a support group and told Melanie about her painting. "
    texts = [sentence * n for n in (1, 30, 2, 5, 30, 1, 12, 3)] + ["ok", "ok", "a cat"]
    small = LocalEmbedder(batch_size=3, batch_tokens=300)
    try:
        vectors = await small.embed_documents(texts)
        reference = model._model
        assert reference is not None
        expected = await asyncio.to_thread(
            reference.encode,
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        for vector, wanted in zip(vectors, numpy.asarray(expected).tolist(), strict=True):
            assert cosine(vector, wanted) >= 0.999
    finally:
        await small.aclose()


class PassRecorder:
    """Wraps the real model's forward pass: which thread ran each pass, on how many of torch's
    threads, and optionally a failure on passes of one size."""

    def __init__(self, embedder: LocalEmbedder, fail_on_texts: int | None = None) -> None:
        import torch

        self.torch = torch
        self.model: Any = embedder._model
        self.forward = self.model.forward
        self.fail_on_texts = fail_on_texts
        self.passes: list[tuple[str, int, int]] = []

    def __call__(self, features: dict[str, Any], **kwargs: Any) -> Any:
        texts = int(features["input_ids"].shape[0])
        name = threading.current_thread().name
        self.passes.append((name, self.torch.get_num_threads(), texts))
        if texts == self.fail_on_texts:
            raise RuntimeError("a pass failed")
        return self.forward(features, **kwargs)

    def __enter__(self) -> PassRecorder:
        self.model.forward = self
        return self

    def __exit__(self, *_: object) -> None:
        del self.model.forward


@pytest.mark.model
async def test_the_passes_of_a_call_run_side_by_side_and_a_query_on_every_thread() -> None:
    """Two passes of one torch thread each keep both cores busy when another process takes
    one of them (docs/embedding.md, "Threads"); a lone query keeps all of torch's threads,
    and so does every thread of the process that did not make the pass threads."""
    import torch

    threads = await asyncio.to_thread(torch.get_num_threads)
    if threads < 2:
        pytest.skip("torch runs one thread here: passes run one at a time")
    sentence = "Caroline went to a support group and told Melanie about her painting. "
    embedder = LocalEmbedder(batch_size=4, batch_tokens=400)
    try:
        await embedder.load()
        with PassRecorder(embedder) as recorder:
            await embedder.embed_documents([sentence * n for n in (1, 2, 3, 4, 5, 6, 7, 8)])
            apart = list(recorder.passes)
            recorder.passes.clear()
            await embedder.embed_query("What did Caroline paint?")
            query = list(recorder.passes)
        assert len(apart) >= 2
        assert {name.split("_")[0] for name, _, _ in apart} == {"memfuse-embedder-pass"}
        assert {count for _, count, _ in apart} == {threads // DEFAULT_PASS_THREADS}
        assert len(query) == 1
        assert query[0][0].startswith("memfuse-embedder_") and query[0][1] == threads
        assert await asyncio.to_thread(torch.get_num_threads) == threads
    finally:
        await embedder.aclose()


@pytest.mark.model
async def test_a_failed_pass_fails_the_call_and_leaves_the_embedder_working() -> None:
    sentence = "Melanie ran a charity race for mental health. "
    texts = [sentence * n for n in (1, 1, 1, 1, 20, 20)]  # passes of 4 short, 2 long texts
    embedder = LocalEmbedder(batch_size=4, batch_tokens=2048)
    try:
        await embedder.load()
        with (
            PassRecorder(embedder, fail_on_texts=2),
            pytest.raises(EmbeddingError, match="a pass failed"),
        ):
            await embedder.embed_documents(texts)
        assert len(await embedder.embed_documents(texts)) == len(texts)
    finally:
        await embedder.aclose()


@pytest.mark.model
async def test_closing_lets_the_call_in_progress_finish_its_passes() -> None:
    sentence = "Caroline went to a support group and told Melanie about her painting. "
    embedder = LocalEmbedder(batch_size=2, batch_tokens=400)
    await embedder.load()
    call = asyncio.create_task(embedder.embed_documents([sentence * n for n in range(1, 13)]))
    await asyncio.sleep(0.01)  # the call is in the model thread, its passes on their way
    await embedder.aclose()
    assert len(await call) == 12
    with pytest.raises(ClosedError):
        await embedder.embed_query("What did Caroline paint?")
