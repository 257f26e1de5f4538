"""SQL for M2 facts. Reads take the owning ``user_id``; repositories never commit."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from memfuse.db.models import Episode, Fact, FactGroup
from memfuse.repositories.paging import paginate
from memfuse.types import FactRow, Page


@dataclass(frozen=True, slots=True)
class NewFact:
    """A fact to insert; it is inserted live and closed afterwards if a newer one exists."""

    id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    session_id: uuid.UUID
    content: str
    fact_type: str
    fact_key: str | None
    entities: tuple[str, ...]
    confidence: float
    occurred_at: datetime | None
    message_ids: tuple[uuid.UUID, ...]
    group_no: int
    valid_from: datetime
    metadata: dict[str, Any]

    def columns(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "content": self.content,
            "fact_type": self.fact_type,
            "fact_key": self.fact_key,
            "entities": list(self.entities),
            "confidence": self.confidence,
            "occurred_at": self.occurred_at,
            "message_ids": list(self.message_ids),
            "group_no": self.group_no,
            "valid_from": self.valid_from,
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class Closure:
    """Close a fact: it stopped being true at ``valid_to``, replaced by ``superseded_by``."""

    fact_id: uuid.UUID
    valid_to: datetime
    superseded_by: uuid.UUID


@dataclass(frozen=True, slots=True)
class LiveFact:
    """A live fact filling a slot, as the supersession rule needs it."""

    id: uuid.UUID
    fact_key: str
    valid_from: datetime


_TABLE = cast(Table, Fact.__table__)
FACT_EMBEDDED = (
    exists()
    .where(FactGroup.session_id == Fact.session_id, FactGroup.group_no == Fact.group_no)
    .correlate(Fact)
)
"""A fact is embedded when its group's vector is stored."""
_COLUMNS = (
    Fact.id,
    Fact.user_id,
    Fact.agent_id,
    Fact.session_id,
    Fact.content,
    Fact.fact_type,
    Fact.fact_key,
    Fact.entities,
    Fact.confidence,
    Fact.occurred_at,
    Fact.message_ids,
    Fact.episode_id,
    Fact.valid_from,
    Fact.valid_to,
    Fact.superseded_by,
    Fact.metadata_.label("metadata"),
    Fact.created_at,
    FACT_EMBEDDED.label("embedded"),
)


def _row(row: Row[Any]) -> FactRow:
    values = dict(row._mapping)
    values["entities"] = tuple(values["entities"])
    values["message_ids"] = tuple(values["message_ids"])
    return FactRow(**values)


class FactRepository:
    """Rows of ``facts``, always within one user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_user(self, user_id: uuid.UUID) -> None:
        """Serialize fact writes of one user until commit: duplicates and supersession are
        decided against the user's live facts, which must not change meanwhile."""
        key = func.hashtextextended(func.concat("memfuse.facts:", str(user_id)), 0)
        await self.session.execute(select(func.pg_advisory_xact_lock(key)))

    async def live_contents(self, user_id: uuid.UUID, contents: Sequence[str]) -> set[str]:
        """Which of ``contents`` the user already holds as live facts."""
        if not contents:
            return set()
        hashes: BindParameter[list[str]] = bindparam(
            "hashes", [_md5(content) for content in contents], expanding=True
        )
        result = await self.session.execute(
            select(Fact.content).where(
                Fact.user_id == user_id,
                Fact.valid_to.is_(None),
                func.md5(Fact.content).in_(hashes),
            )
        )
        return set(result.scalars())

    async def live_for_keys(self, user_id: uuid.UUID, keys: Sequence[str]) -> list[LiveFact]:
        if not keys:
            return []
        result = await self.session.execute(
            select(Fact.id, Fact.fact_key, Fact.valid_from)
            .where(Fact.user_id == user_id, Fact.valid_to.is_(None), Fact.fact_key.in_(keys))
            .order_by(Fact.valid_from)
        )
        return [
            LiveFact(id=row.id, fact_key=row.fact_key, valid_from=row.valid_from) for row in result
        ]

    async def insert(self, facts: Sequence[NewFact]) -> None:
        if facts:
            await self.session.execute(insert(_TABLE), [fact.columns() for fact in facts])

    async def close(self, closures: Sequence[Closure]) -> None:
        if not closures:
            return
        await self.session.execute(
            update(_TABLE)
            .where(_TABLE.c.id == bindparam("fact_id"))
            .values(valid_to=bindparam("valid_to"), superseded_by=bindparam("superseded_by")),
            [
                {"fact_id": c.fact_id, "valid_to": c.valid_to, "superseded_by": c.superseded_by}
                for c in closures
            ],
        )

    async def page(
        self,
        user_id: uuid.UUID,
        session_id: uuid.UUID | None,
        page: Page,
        *,
        include_superseded: bool,
    ) -> list[FactRow]:
        """A page of the user's facts (live ones unless asked), by validity then creation."""
        query = select(*_COLUMNS).where(Fact.user_id == user_id)
        if session_id is not None:
            query = query.where(Fact.session_id == session_id)
        if not include_superseded:
            query = query.where(Fact.valid_to.is_(None))
        order = [Fact.valid_from, Fact.created_at, Fact.id]
        result = await self.session.execute(paginate(query, order, page))
        return [_row(row) for row in result]

    async def link_episodes(self, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
        """Point facts of a session at the episode holding their first source message.

        Call it holding the user's fact lock (:meth:`lock_user`), after writing episodes or
        facts: the lock orders the M1 and M2 steps of a session, so the later one sees the
        other's rows and no fact is left unlinked.
        """
        await self.session.execute(
            update(Fact)
            .where(
                Fact.user_id == user_id,
                Fact.session_id == session_id,
                Fact.episode_id.is_(None),
                Episode.session_id == session_id,
                Fact.message_ids[1] == func.any(Episode.message_ids),
            )
            .values(episode_id=Episode.id)
        )

    async def delete_for_session(self, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
        """Delete a session's facts, then their groups' vectors, and repair the slots they were
        part of.

        A fact that one of them had closed is then closed by its next newer fact of the same
        slot, or live again if none is left; so each slot keeps exactly one live fact.
        """
        keys = list(
            (
                await self.session.execute(
                    select(Fact.fact_key)
                    .distinct()
                    .where(
                        Fact.user_id == user_id,
                        Fact.session_id == session_id,
                        Fact.fact_key.is_not(None),
                    )
                )
            ).scalars()
        )
        await self.session.execute(
            delete(Fact).where(Fact.user_id == user_id, Fact.session_id == session_id)
        )
        await self.session.execute(
            delete(FactGroup).where(
                FactGroup.user_id == user_id, FactGroup.session_id == session_id
            )
        )
        await self.rechain_slots(user_id, keys)

    async def rechain_slots(self, user_id: uuid.UUID, keys: Sequence[str | None]) -> None:
        """Close every fact of these slots by its next newer one; the newest stays live.

        The newest is not reopened if a live fact with the same content exists elsewhere:
        one live copy per content wins over reopening.
        """
        if not keys:
            return
        ordering = (Fact.valid_from, Fact.created_at, Fact.id)
        chain = (
            select(
                Fact.id.label("fact_id"),
                func.lead(Fact.id)
                .over(partition_by=Fact.fact_key, order_by=ordering)
                .label("next_id"),
                func.lead(Fact.valid_from)
                .over(partition_by=Fact.fact_key, order_by=ordering)
                .label("next_from"),
            )
            .where(Fact.user_id == user_id, Fact.fact_key.in_(keys))
            .subquery()
        )
        duplicate = aliased(Fact)
        live_copy = exists().where(
            and_(
                duplicate.user_id == user_id,
                duplicate.valid_to.is_(None),
                duplicate.id != Fact.id,
                func.md5(duplicate.content) == func.md5(Fact.content),
            )
        )
        await self.session.execute(
            update(Fact)
            .where(
                Fact.id == chain.c.fact_id,
                or_(
                    Fact.superseded_by.is_distinct_from(chain.c.next_id),
                    Fact.valid_to.is_distinct_from(chain.c.next_from),
                ),
                or_(chain.c.next_id.is_not(None), ~live_copy),
            )
            .values(superseded_by=chain.c.next_id, valid_to=chain.c.next_from)
        )


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
