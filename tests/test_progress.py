"""Progress of ``memfuse ingest`` and ``eval``: a tqdm bar, or log lines without tqdm."""

from __future__ import annotations

import logging
import sys

import pytest

from memfuse.progress import LoggedProgress, progress_bar, track


def test_without_tqdm_progress_is_logged_at_each_tenth(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # ``import tqdm`` raises ImportError
    caplog.set_level(logging.INFO, logger="memfuse.progress")

    with progress_bar(20, desc="ingest", unit="msg") as bar:
        assert isinstance(bar, LoggedProgress)
        for _ in range(10):
            bar.update(2)

    assert [record.getMessage() for record in caplog.records] == [
        f"ingest: {done}/20 msg" for done in range(2, 21, 2)
    ]


def test_large_steps_log_once_per_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="memfuse.progress")
    bar = LoggedProgress(1000, "ingest", "msg")

    for _ in range(5):
        bar.update(200)

    assert len(caplog.records) == 5
    assert caplog.records[-1].getMessage() == "ingest: 1000/1000 msg"


def test_progress_off_shows_and_imports_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    caplog.set_level(logging.INFO, logger="memfuse.progress")

    items = list(track([1, 2, 3], desc="questions", unit="q", enabled=False))

    assert items == [1, 2, 3]
    assert caplog.records == []


def test_track_yields_every_item_in_order_on_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")

    items = list(track(["a", "b", "c"], desc="questions", unit="q"))

    assert items == ["a", "b", "c"]
    assert "questions" in capsys.readouterr().err
