"""``benchmarks.pass_threads``: the texts it embeds, and one short measured run."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.layers import DEFAULT_LOCOMO
from benchmarks.pass_threads import measure, texts_like_the_worker


def test_the_texts_mix_turns_fact_groups_and_episodes() -> None:
    texts = texts_like_the_worker(DEFAULT_LOCOMO, 210)
    lines = [text.count("\n") for text in texts]
    assert len(texts) == 210
    assert sum(1 for count in lines if count == 3) == pytest.approx(210 / 5.25, abs=2)
    assert any(len(text) > 1500 for text in texts), "episode-long texts are in the mix"


@pytest.mark.model
async def test_a_short_run_compares_both_variants_with_the_same_vectors() -> None:
    args = argparse.Namespace(
        locomo=DEFAULT_LOCOMO,
        texts=64,
        call_size=32,
        rounds=2,
        queries=2,
        conditions=["alone", "beside_a_python_thread"],
    )
    results = await measure(args)
    assert results["min_cosine_between_variants"] >= 0.999
    for condition in args.conditions:
        measured = results["conditions"][condition]
        for variant in ("one_pass_at_a_time", "passes_side_by_side"):
            assert len(measured[variant]["rounds"]) == 2
            assert measured[variant]["texts_per_s_median"] > 0
        assert measured["side_by_side_vs_one_at_a_time"]["median"] > 0
