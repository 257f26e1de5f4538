"""M2, the semantic layer: facts extracted from messages, kept once, superseded with history.

The rules, applied per user under a lock so concurrent sessions cannot race them:
an exact duplicate of a live fact is not stored again; a fact with a ``key`` (a slot such as
where someone lives) replaces the live facts of that slot that are older, which stay stored
with ``valid_to`` closed and ``superseded_by`` set; a fact older than the live one of its slot
is stored already closed. A fact's time (``valid_from``) is its source messages' time, not
the time it was processed, so the outcome does not depend on processing order. New facts are
linked to the episodes already stored; M1 links the facts stored before its episodes.

The facts of :data:`~memfuse.db.models.FACT_GROUP_MESSAGES` consecutive messages are embedded
as one text; while the session's last group can still gain facts, their embedding waits
(``embed_delay``), so the group is embedded once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import fact_group
from memfuse.layers.extractors.base import FactCandidate, FactExtractor
from memfuse.repositories.facts import Closure, FactRepository, LiveFact, NewFact
from memfuse.repositories.jobs import JobRepository
from memfuse.repositories.progress import Progress
from memfuse.types import ChunkData


@dataclass(frozen=True, slots=True)
class ExtractedFacts:
    """Candidates with their source messages, ready to be stored."""

    candidates: tuple[FactCandidate, ...]
    messages: tuple[ChunkData, ...]


@dataclass(slots=True)
class FactPlan:
    """What storing a batch of candidates does: rows to insert and facts to close."""

    inserts: list[NewFact] = field(default_factory=list)
    closures: list[Closure] = field(default_factory=list)


def normalize_content(content: str) -> str:
    """Facts that differ only in white space are the same fact."""
    return " ".join(content.split())


def plan_facts(
    progress: Progress,
    extracted: ExtractedFacts,
    live_contents: set[str],
    live_facts: Sequence[LiveFact],
) -> FactPlan:
    """Apply the duplicate and supersession rules to candidates, in message order."""
    times = {chunk.message_ids[0]: chunk.ended_at for chunk in extracted.messages}
    seqs = {chunk.message_ids[0]: chunk.first_seq for chunk in extracted.messages}
    slots: dict[str, list[LiveFact]] = {}
    for live in live_facts:
        slots.setdefault(live.fact_key, []).append(live)
    seen = set(live_contents)
    plan = FactPlan()
    for candidate in extracted.candidates:
        content = normalize_content(candidate.content)
        if content in seen:
            continue
        seen.add(content)
        lineage = tuple(i for i in candidate.message_ids if i in times)
        if not lineage:
            continue
        valid_from = max(times[i] for i in lineage)
        fact = NewFact(
            id=uuid.uuid4(),
            user_id=progress.user_id,
            agent_id=progress.agent_id,
            session_id=progress.session_id,
            content=content,
            fact_type=candidate.fact_type,
            fact_key=candidate.key,
            entities=candidate.entities,
            confidence=candidate.confidence,
            occurred_at=candidate.occurred_at,
            message_ids=lineage,
            group_no=fact_group(seqs[lineage[0]]),
            valid_from=valid_from,
            metadata={},
        )
        plan.inserts.append(fact)
        if candidate.key is None:
            continue
        current = slots.get(candidate.key, [])
        newer = [live for live in current if live.valid_from > valid_from]
        if newer:
            successor = min(newer, key=lambda live: live.valid_from)
            plan.closures.append(Closure(fact.id, successor.valid_from, successor.id))
            continue
        plan.closures.extend(Closure(live.id, valid_from, fact.id) for live in current)
        slots[candidate.key] = [LiveFact(fact.id, candidate.key, valid_from)]
    return plan


class FactProcessor:
    """The M2 layer for the pipeline, around a pluggable :class:`FactExtractor`."""

    layer = "m2"
    operation = "m2_operation"

    def __init__(self, extractor: FactExtractor, *, embed_delay: timedelta = timedelta(0)) -> None:
        """``embed_delay``: how long the facts of a session's open fact group wait for the
        rest of the group before they are embedded (each step restarts the wait)."""
        self.extractor = extractor
        self.embed_delay = embed_delay
        # An extractor that declares ``local = True`` (rules, no model or network call) runs
        # inside the step's transaction; any other (an LLM's) runs outside every transaction.
        self.local = getattr(extractor, "local", False) is True

    async def load(self, db: AsyncSession, progress: Progress) -> None:
        return None

    async def compute(self, messages: Sequence[ChunkData], context: None) -> ExtractedFacts:
        candidates = await self.extractor.extract(messages) if messages else []
        return ExtractedFacts(tuple(candidates), tuple(messages))

    async def store(self, db: AsyncSession, progress: Progress, result: ExtractedFacts) -> None:
        """Store the new facts under the user's fact lock, then hold back the embedding of the
        session's open fact group (lock order: fact lock, memory rows, their jobs)."""
        if result.candidates:
            await self._store_facts(db, progress, result)
        if self.embed_delay > timedelta(0) and result.messages:
            await JobRepository(db).hold_back_open_fact_group(
                progress.session_id, result.messages[-1].last_seq, self.embed_delay
            )

    async def _store_facts(
        self, db: AsyncSession, progress: Progress, result: ExtractedFacts
    ) -> None:
        repository = FactRepository(db)
        await repository.lock_user(progress.user_id)
        contents = sorted({normalize_content(c.content) for c in result.candidates})
        keys = sorted({c.key for c in result.candidates if c.key is not None})
        plan = plan_facts(
            progress,
            result,
            await repository.live_contents(progress.user_id, contents),
            await repository.live_for_keys(progress.user_id, keys),
        )
        await repository.insert(plan.inserts)
        await repository.close(plan.closures)
        await repository.link_episodes(progress.user_id, progress.session_id)
