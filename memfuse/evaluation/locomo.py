"""LoCoMo evidence recall: how much of each answer's evidence a search puts in a context budget.

The metric is the one ``shared/data/locomo/README.md`` defines. Each conversation is loaded as
one user through the real write path (``Memory.add``, the M1/M2 pipeline, the embedding worker);
every category 1-4 question with evidence is asked; results are taken in rank order until the
next one would overflow a budget of B tokens (all-MiniLM-L6-v2's tokenizer, no special
tokens, over each result's ``content``). A turn is retrieved when a result within the budget
contains it (its ``message_ids``). Recall@B is retrieved evidence turns over evidence turns,
averaged over questions.

Every line is measured in the same run on the same database: memfuse's default search, its
``unit="item"`` search, and three reference lines over single turns only (vector, full text,
and their fusion).
"""

from __future__ import annotations

import functools
import re
import statistics
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from memfuse.errors import ValidationError
from memfuse.ingest import (
    LOCOMO_SESSION,
    ConversationData,
    ingest_conversations,
    locomo_turn_id,
    parse_conversations,
    read_document,
)
from memfuse.memory import MemFuse, Memory
from memfuse.progress import track

BUDGETS: Final = (500, 1000, 2000)
CATEGORIES: Final = (1, 2, 3, 4)
CATEGORY_NAMES: Final = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
RESULTS_PER_QUESTION: Final = 200
"""Enough results to fill the largest budget (a turn is ~35 tokens)."""
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")

LINES: Final[dict[str, dict[str, Any]]] = {
    "memfuse": {},
    "memfuse_items": {"unit": "item"},
    "reference_vector_turns": {"layers": ["m0"], "methods": ["vector"]},
    "reference_text_turns": {"layers": ["m0"], "methods": ["text"]},
    "reference_fusion_turns": {"layers": ["m0"]},
}
"""Each line's ``Memory.query`` options; ``memfuse`` is the default search."""


class Retrieved(Protocol):
    """What the budget rule reads of a result: its text and the turns it contains.

    memfuse's :class:`~memfuse.retrieval.service.SearchResult` is one; ``benchmarks.peers``
    scores other systems' results with the same rule.
    """

    @property
    def content(self) -> str: ...

    @property
    def message_ids(self) -> Collection[uuid.UUID]: ...


@dataclass(frozen=True, slots=True)
class Question:
    """One scored question: its conversation's user, the text and the evidence turns' ids."""

    user: str
    question: str
    category: int
    evidence: frozenset[uuid.UUID]


@dataclass(frozen=True, slots=True)
class LocomoData:
    """A LoCoMo file read and checked: the conversations to load and the questions to ask."""

    conversations: list[ConversationData]
    questions: list[Question]
    left_out: dict[str, int]


SAMPLE_KEYS: Final = ("sample_id", "conversation", "qa")


def load_locomo(path: str | Path, *, max_chars: int | None = None) -> LocomoData:
    """Read and check the whole file, so a wrong or broken file is refused before any write.

    ``max_chars`` is the content limit of ``Memory.add`` (default: the setting's default).
    """
    source = str(path)
    samples = locomo_samples(read_document(path), source)
    conversations = parse_conversations(samples, source=source, max_chars=max_chars)
    questions, left_out = questions_of(samples, source)
    if not questions:
        raise ValidationError(f"{source}: no question of categories 1-4 with evidence to score")
    return LocomoData(conversations, questions, left_out)


def load_questions(path: str | Path) -> tuple[list[Question], dict[str, int]]:
    """Questions of categories 1-4 with usable evidence, and counts of what was left out."""
    source = str(path)
    return questions_of(locomo_samples(read_document(path), source), source)


def locomo_samples(document: Any, source: str) -> list[Mapping[str, Any]]:
    """The samples of a LoCoMo document (a list of them, or one), or a ValidationError.

    A memfuse ingest file or any other JSON is refused here with what it lacks, rather than
    failing half-way through an evaluation.
    """
    samples = [document] if isinstance(document, Mapping) else document
    if not isinstance(samples, list):
        raise ValidationError(
            f"{source}: not a LoCoMo file (locomo10.json format): expected a list of samples, "
            f"got {type(document).__name__}"
        )
    if not samples:
        raise ValidationError(f"{source}: not a LoCoMo file (locomo10.json format): no samples")
    for number, sample in enumerate(samples, start=1):
        where = f"{source}: sample {number}"
        if not isinstance(sample, Mapping):
            raise ValidationError(
                f"{where}: not a LoCoMo sample: expected an object, got {type(sample).__name__}"
            )
        missing = [key for key in SAMPLE_KEYS if key not in sample]
        if missing:
            raise ValidationError(
                f"{where}: not a LoCoMo sample (locomo10.json format): missing "
                + ", ".join(repr(key) for key in missing)
            )
        for key, kind, name in (("conversation", Mapping, "an object"), ("qa", list, "a list")):
            if not isinstance(sample[key], kind):
                raise ValidationError(
                    f"{where}: field {key!r}: expected {name}, got {type(sample[key]).__name__}"
                )
    return samples


def questions_of(
    samples: Sequence[Mapping[str, Any]], source: str
) -> tuple[list[Question], dict[str, int]]:
    """The scored questions of checked samples, and counts of what was left out.

    Evidence strings are read with ``D:?<session>:<turn>`` (so "D8:6; D9:17" is two turns and
    "D:11:26" is D11:26); ids of turns the conversation does not have are dropped.
    """
    questions: list[Question] = []
    skipped = {"category_5": 0, "no_evidence": 0, "evidence_ids_dropped": 0}
    for number, sample in enumerate(samples, start=1):
        sample_id = sample["sample_id"]
        turns = {
            turn["dia_id"]
            for key, session in sample["conversation"].items()
            if LOCOMO_SESSION.fullmatch(str(key)) and isinstance(session, list)
            for turn in session
            if isinstance(turn, Mapping) and isinstance(turn.get("dia_id"), str)
        }
        for position, qa in enumerate(sample["qa"], start=1):
            where = f"{source}: sample {number} ({sample_id}), qa {position}"
            if not isinstance(qa, Mapping):
                raise ValidationError(f"{where}: expected an object, got {type(qa).__name__}")
            category = qa.get("category", 0)
            if not isinstance(category, int) or isinstance(category, bool):
                raise ValidationError(f"{where}: field 'category': expected an integer")
            if category not in CATEGORIES:
                skipped["category_5"] += 1
                continue
            evidence = qa.get("evidence") or []
            if not isinstance(evidence, list):
                raise ValidationError(f"{where}: field 'evidence': expected a list")
            question = qa.get("question")
            if not isinstance(question, str) or not question.strip():
                raise ValidationError(f"{where}: field 'question': expected a non-empty string")
            found = set()
            for item in evidence:
                for session_number, turn_number in _EVIDENCE.findall(str(item)):
                    dia_id = f"D{session_number}:{turn_number}"
                    if dia_id in turns:
                        found.add(dia_id)
                    else:
                        skipped["evidence_ids_dropped"] += 1
            if not found:
                skipped["no_evidence"] += 1
                continue
            questions.append(
                Question(
                    user=f"locomo-{sample_id}",
                    question=question,
                    category=category,
                    evidence=frozenset(locomo_turn_id(sample_id, dia_id) for dia_id in found),
                )
            )
    return questions, skipped


def covered_within(
    results: Sequence[Retrieved], budget: int, count_tokens: Callable[[str], int]
) -> set[uuid.UUID]:
    """Messages contained in the results taken in order until the next would overflow."""
    covered: set[uuid.UUID] = set()
    spent = 0
    for result in results:
        spent += count_tokens(result.content)
        if spent > budget:
            break
        covered.update(result.message_ids)
    return covered


def recall_at_budgets(
    question: Question, results: Sequence[Retrieved], count_tokens: Callable[[str], int]
) -> dict[int, float]:
    """The share of the question's evidence turns within each budget."""
    return {
        budget: len(question.evidence & covered_within(results, budget, count_tokens))
        / len(question.evidence)
        for budget in BUDGETS
    }


def summarize(
    questions: Sequence[Question], recalls: Sequence[Mapping[int, float]]
) -> dict[str, Any]:
    """Overall and per-category recall@B, rounded to 3 places."""
    summary: dict[str, Any] = {}
    for budget in BUDGETS:
        summary[f"recall@{budget}"] = round(statistics.mean(r[budget] for r in recalls), 3)
    per_category: dict[str, Any] = {}
    for category in CATEGORIES:
        chosen = [r for q, r in zip(questions, recalls, strict=True) if q.category == category]
        if not chosen:
            continue
        per_category[f"{category} {CATEGORY_NAMES[category]}"] = {
            "questions": len(chosen),
            **{
                f"recall@{budget}": round(statistics.mean(r[budget] for r in chosen), 3)
                for budget in BUDGETS
            },
        }
    summary["per_category"] = per_category
    return summary


def minilm_token_counter() -> Callable[[str], int]:
    """Token counts with all-MiniLM-L6-v2's own tokenizer (from the bundled model files).

    Cached: the same result is counted once for every budget and every question it answers.
    """
    from transformers import AutoTokenizer

    from memfuse.embedding.embedders import bundled_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))

    @functools.cache
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


async def evaluate(
    mf: MemFuse,
    data: LocomoData | str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Load every conversation of ``data``, flush, ask every question; the report as JSON.

    A path is read with :func:`load_locomo` first, so a bad file writes nothing.
    """
    if not isinstance(data, LocomoData):
        data = load_locomo(data)
    conversations, questions, skipped = data.conversations, data.questions, data.left_out
    await ingest_conversations(mf, conversations, progress=progress)
    await mf.flush()
    await mf.analyze()  # as autovacuum would after such a load, without waiting for it
    count_tokens = minilm_token_counter()
    memories: dict[str, Memory] = {}
    recalls: dict[str, list[dict[int, float]]] = {name: [] for name in LINES}
    for question in track(questions, desc="questions", unit="q", enabled=progress):
        memory = memories.get(question.user)
        if memory is None:
            memory = memories[question.user] = await mf.init(question.user)
        for name, options in LINES.items():
            results = await memory.query(question.question, top_k=RESULTS_PER_QUESTION, **options)
            recalls[name].append(recall_at_budgets(question, results, count_tokens))
    summaries = {name: summarize(questions, recalls[name]) for name in LINES}
    report: dict[str, Any] = dict(summaries["memfuse"])
    report["questions"] = len(questions)
    report["left_out"] = skipped
    report["lines"] = {
        name: {"options": dict(options), **summaries[name]} for name, options in LINES.items()
    }
    report["conversations"] = len(conversations)
    report["messages"] = sum(c.message_count for c in conversations)
    report["tokenizer"] = "all-MiniLM-L6-v2 (bundled), no special tokens"
    report["budget_rule"] = "results in rank order until the next would exceed the budget"
    return report
