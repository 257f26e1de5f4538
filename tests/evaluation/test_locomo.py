"""``memfuse eval locomo`` on a tiny conversation in LoCoMo's format (not LoCoMo's data)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from memfuse.cli import main
from memfuse.evaluation.locomo import covered_within, load_questions
from memfuse.ingest import NAMESPACE
from memfuse.retrieval.service import SearchResult

SAMPLE: list[dict[str, Any]] = [
    {
        "sample_id": "tiny-1",
        "conversation": {
            "speaker_a": "Mia",
            "speaker_b": "Leo",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Mia", "dia_id": "D1:1", "text": "I adopted a grey cat called Pixel."},
                {
                    "speaker": "Leo",
                    "dia_id": "D1:2",
                    "text": "Lovely! I am training for a marathon.",
                },
                {"speaker": "Mia", "dia_id": "D1:3", "text": "Good luck with the running."},
            ],
            "session_2_date_time": "10:00 am on 20 June, 2023",
            "session_2": [
                {"speaker": "Leo", "dia_id": "D2:1", "text": "I finished the Berlin marathon!"},
                {"speaker": "Mia", "dia_id": "D2:2", "text": "Pixel broke my favourite vase."},
            ],
        },
        "qa": [
            {
                "question": "What is Mia's cat called?",
                "answer": "Pixel",
                "evidence": ["D1:1"],
                "category": 4,
            },
            {
                "question": "Which marathon did Leo finish?",
                "answer": "Berlin",
                "evidence": ["D:2:1", "D9:9"],
                "category": 2,
            },
            {
                "question": "What did Pixel break?",
                "answer": "a vase",
                "evidence": ["D1:1; D2:2"],
                "category": 1,
            },
            {
                "question": "What is Leo's dog called?",
                "answer": "n/a",
                "evidence": [],
                "category": 5,
            },
            {"question": "Where does Mia live?", "answer": "?", "evidence": ["D"], "category": 3},
        ],
    }
]


def turn_id(dia_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"tiny-1/{dia_id}")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_locomo.json"
    path.write_text(json.dumps(SAMPLE))
    return path


def test_questions_parse_odd_evidence_and_skip_what_cannot_be_scored(data: Path) -> None:
    questions, skipped = load_questions(data)
    assert [(q.question, q.category) for q in questions] == [
        ("What is Mia's cat called?", 4),
        ("Which marathon did Leo finish?", 2),
        ("What did Pixel break?", 1),
    ]
    assert questions[1].evidence == {turn_id("D2:1")}, "'D:2:1' read, the missing D9:9 dropped"
    assert questions[2].evidence == {turn_id("D1:1"), turn_id("D2:2")}
    assert skipped == {"category_5": 1, "no_evidence": 1, "evidence_ids_dropped": 1}


def test_the_budget_stops_at_the_first_result_that_would_overflow() -> None:
    def result(content: str, *ids: uuid.UUID) -> SearchResult:
        return SearchResult(
            layer="m0",
            id=ids[0],
            content=content,
            score=1.0,
            created_at=None,  # type: ignore[arg-type]
            session_id=None,
            agent_id=None,
            message_ids=ids,
            token_count=0,
        )

    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    results = [result("one two", a), result("one two three four", b), result("x", c)]
    words = lambda text: len(text.split())  # noqa: E731
    assert covered_within(results, 2, words) == {a}
    assert covered_within(results, 5, words) == {a}, "b overflows; c below it is not taken"
    assert covered_within(results, 7, words) == {a, b, c}


def test_eval_locomo_writes_recall_for_memfuse_and_the_reference_lines(
    database_url: str,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEMFUSE_EMBEDDER", "local")
    output = tmp_path / "report.json"
    code = main(
        [
            "--database-url",
            database_url,
            "eval",
            "locomo",
            "--data",
            str(data),
            "--output",
            str(output),
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads(output.read_text())
    assert report["questions"] == 3 and report["conversations"] == 1 and report["messages"] == 5
    for line in (
        "memfuse",
        "memfuse_items",
        "reference_vector_turns",
        "reference_text_turns",
        "reference_fusion_turns",
    ):
        for budget in (500, 1000, 2000):
            assert 0.0 <= report["lines"][line][f"recall@{budget}"] <= 1.0
    assert report["recall@2000"] == 1.0, "five short turns all fit in 2000 tokens"
    assert report["lines"]["reference_vector_turns"]["recall@2000"] == 1.0
    assert report["recall@1000"] == report["lines"]["memfuse"]["recall@1000"]
    assert set(report["per_category"]) == {"1 multi-hop", "2 temporal", "4 single-hop"}
    assert "evidence recall over 3 questions" in capsys.readouterr().out


def test_eval_refuses_to_empty_the_main_schema_or_to_run_without_vectors(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arguments = ["eval", "locomo", "--data", str(data), "--output", str(tmp_path / "r.json")]
    assert main(arguments) == 2, "the test suite's MEMFUSE_EMBEDDER=none"
    monkeypatch.setenv("MEMFUSE_EMBEDDER", "local")
    assert main(["--schema", "memfuse", *arguments]) == 2
    assert not (tmp_path / "r.json").exists()
