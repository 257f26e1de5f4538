"""``memfuse eval locomo`` on a tiny conversation in LoCoMo's format (not LoCoMo's data)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from memfuse.cli import EVAL_SCHEMA, main
from memfuse.config.urls import asyncpg_connect_args
from memfuse.errors import ValidationError
from memfuse.evaluation.locomo import covered_within, load_locomo, load_questions
from memfuse.ingest import NAMESPACE
from memfuse.types import SearchResult

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


@pytest.mark.model
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


NOT_LOCOMO: list[tuple[Any, str]] = [
    (
        {"user": "ann", "messages": [{"role": "user", "content": "I run on Tuesdays."}]},
        "sample 1: not a LoCoMo sample (locomo10.json format): missing 'sample_id', "
        "'conversation', 'qa'",
    ),
    ({}, "sample 1: not a LoCoMo sample (locomo10.json format): missing 'sample_id'"),
    ([{"sample_id": "s", "conversation": {}}], "sample 1: not a LoCoMo sample"),
    ([SAMPLE[0], {"qa": []}], "sample 2: not a LoCoMo sample"),
    ([], "not a LoCoMo file (locomo10.json format): no samples"),
    ("text", "not a LoCoMo file (locomo10.json format): expected a list of samples, got str"),
    ([7], "sample 1: not a LoCoMo sample: expected an object, got int"),
    ([{**SAMPLE[0], "qa": {}}], "sample 1: field 'qa': expected a list, got dict"),
    ([{**SAMPLE[0], "qa": [{"category": "four"}]}], "qa 1: field 'category': expected an integer"),
    ([{**SAMPLE[0], "qa": [{"category": 4, "evidence": ["D1:1"]}]}], "qa 1: field 'question'"),
    ([{**SAMPLE[0], "qa": []}], "no question of categories 1-4 with evidence to score"),
]


@pytest.mark.parametrize(("document", "expected"), NOT_LOCOMO)
def test_a_file_that_is_not_locomo_is_refused_naming_what_is_missing(
    tmp_path: Path, document: Any, expected: str
) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValidationError) as caught:
        load_locomo(path)
    assert str(caught.value).startswith(f"{path}: "), str(caught.value)
    assert expected in str(caught.value)


async def schema_tables(database_url: str, schema: str) -> list[str]:
    connection = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema
        )
        return [row["tablename"] for row in rows]
    finally:
        await connection.close()


async def create_marker(database_url: str, schema: str) -> None:
    connection = await asyncpg.connect(**asyncpg_connect_args(database_url))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".marker ()')
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "document",
    [NOT_LOCOMO[0][0], {}, [{"speaker": "a", "text": "b"}]],
    ids=["memfuse-ingest-file", "empty-object", "list-without-sample-keys"],
)
def test_eval_on_a_file_that_is_not_locomo_exits_2_before_writing(
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    document: Any,
) -> None:
    monkeypatch.setenv("MEMFUSE_EMBEDDER", "local")
    asyncio.run(create_marker(database_url, EVAL_SCHEMA))
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(document))
    output = tmp_path / "report.json"
    arguments = ["--data", str(path), "--output", str(output), "--quiet"]
    code = main(["--database-url", database_url, "eval", "locomo", *arguments])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"memfuse: {path}: sample 1: not a LoCoMo sample"), error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "missing 'sample_id'" in error
    assert not output.exists()
    assert asyncio.run(schema_tables(database_url, EVAL_SCHEMA)) == ["marker"], "not emptied"
