"""How far M1 and M2 have processed each session, and resetting a session after an edit.

The progress rows of a session are the pipeline's lock on it: a layer step reads holding its
row shared and writes holding it exclusively, and an edit or deletion holds both rows
exclusively. Whoever touches a row first creates it (``INSERT ... ON CONFLICT``), which waits
for a concurrent creator to commit; so a rebuild can never miss a row that a pass is creating
and its ``generation`` bump is seen by every step that read before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from memfuse.db.models import DERIVED_LAYERS, LayerProgress, Session


@dataclass(frozen=True, slots=True)
class Progress:
    """A layer's position in one session, and the session's last message number."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    layer: str
    processed_seq: int
    generation: int
    message_count: int
    failures: int

    @property
    def pending(self) -> bool:
        return self.processed_seq < self.message_count


class ProgressRepository:
    """Rows of ``layer_progress``; the pipeline's bookkeeping."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def pending(self, *, include_backoff: bool, limit: int) -> list[Progress]:
        """Sessions with messages a layer has not processed, oldest first.

        Sessions whose last attempt failed wait for their ``retry_after`` unless
        ``include_backoff`` (an explicit flush) asks to retry them now.
        """
        progress = LayerProgress.__table__.alias("progress")
        pairs = []
        for layer in DERIVED_LAYERS:
            joined = Session.__table__.outerjoin(
                progress,
                and_(progress.c.session_id == Session.id, progress.c.layer == layer),
            )
            done = func.coalesce(progress.c.processed_seq, 0)
            query = (
                select(
                    Session.id.label("session_id"),
                    Session.user_id,
                    Session.agent_id,
                    literal(layer, LayerProgress.layer.type).label("layer"),
                    done.label("processed_seq"),
                    func.coalesce(progress.c.generation, 0).label("generation"),
                    Session.message_count,
                    func.coalesce(progress.c.failures, 0).label("failures"),
                    Session.updated_at,
                )
                .select_from(joined)
                .where(Session.message_count > done)
            )
            if not include_backoff:
                query = query.where(
                    or_(progress.c.retry_after.is_(None), progress.c.retry_after <= func.now())
                )
            pairs.append(query)
        union = pairs[0].union_all(*pairs[1:]).subquery()
        result = await self.session.execute(
            select(union).order_by(union.c.updated_at, union.c.session_id).limit(limit)
        )
        return [
            Progress(
                session_id=row.session_id,
                user_id=row.user_id,
                agent_id=row.agent_id,
                layer=row.layer,
                processed_seq=int(row.processed_seq),
                generation=int(row.generation),
                message_count=int(row.message_count),
                failures=int(row.failures),
            )
            for row in result
        ]

    async def _create(
        self, user_id: uuid.UUID, session_id: uuid.UUID, layers: Sequence[str]
    ) -> None:
        """Create the missing progress rows of a session, one layer at a time in name order.

        A row another transaction is creating makes this wait for it to commit, so the row
        is visible (and lockable) afterwards.
        """
        for layer in sorted(layers):
            await self.session.execute(
                insert(LayerProgress)
                .from_select(
                    ["session_id", "layer", "user_id"],
                    select(Session.id, literal(layer), Session.user_id).where(
                        Session.id == session_id, Session.user_id == user_id
                    ),
                )
                .on_conflict_do_nothing(
                    index_elements=[LayerProgress.session_id, LayerProgress.layer]
                )
            )

    async def read(
        self,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        layer: str,
        *,
        lock: Literal["share", "update"] | None = None,
    ) -> Progress | None:
        """A layer's progress in a session, creating its row; ``lock`` holds it until commit.

        ``"share"`` keeps the row (so the layer's rows and the session's messages) from
        changing while a step reads them; ``"update"`` is for the step that writes.
        ``None`` when the session does not exist (any more) for this user.
        """
        query = (
            select(
                LayerProgress.processed_seq,
                LayerProgress.generation,
                LayerProgress.failures,
                Session.message_count,
                Session.agent_id,
            )
            .join(Session, Session.id == LayerProgress.session_id)
            .where(
                LayerProgress.session_id == session_id,
                LayerProgress.layer == layer,
                LayerProgress.user_id == user_id,
            )
        )
        if lock is not None:
            query = query.with_for_update(of=LayerProgress, read=lock == "share")
        row = (await self.session.execute(query)).one_or_none()
        if row is None:
            # Its first step in this session (or the session is gone): create, read again.
            await self._create(user_id, session_id, [layer])
            row = (await self.session.execute(query)).one_or_none()
        if row is None:
            return None
        return Progress(
            session_id=session_id,
            user_id=user_id,
            agent_id=row.agent_id,
            layer=layer,
            processed_seq=int(row.processed_seq),
            generation=int(row.generation),
            message_count=int(row.message_count),
            failures=int(row.failures),
        )

    async def failing(self) -> int:
        """Session layers whose last attempt failed (they wait for a retry)."""
        result = await self.session.execute(
            select(func.count()).select_from(LayerProgress).where(LayerProgress.failures > 0)
        )
        return int(result.scalar_one())

    async def advance(self, session_id: uuid.UUID, layer: str, processed_seq: int) -> None:
        await self.session.execute(
            update(LayerProgress)
            .where(LayerProgress.session_id == session_id, LayerProgress.layer == layer)
            .values(processed_seq=processed_seq, failures=0, retry_after=None, last_error=None)
        )

    async def record_failure(
        self, session_id: uuid.UUID, layer: str, error: str, *, backoff: timedelta
    ) -> None:
        """Count a failed attempt and keep the session's messages for a later retry."""
        await self.session.execute(
            update(LayerProgress)
            .where(LayerProgress.session_id == session_id, LayerProgress.layer == layer)
            .values(
                failures=LayerProgress.failures + 1,
                retry_after=func.now() + backoff,
                last_error=error[:2000],
            )
        )

    async def lock(self, *, user_id: uuid.UUID, session_id: uuid.UUID | None = None) -> None:
        """Lock the progress rows of a session (or of all a user's sessions) until commit.

        Edits and deletions take these locks first, in the same order as the pipeline
        (progress rows, then the user's fact lock), so they and a layer step queue up instead
        of deadlocking. A session's rows are created if missing: a pass creating them at the
        same moment is waited for, never overlooked. (A user's rows need no creating: the
        user deletion that locks them holds the user exclusively, which no pass does.)
        """
        query = select(LayerProgress.session_id).where(LayerProgress.user_id == user_id)
        if session_id is not None:
            await self._create(user_id, session_id, DERIVED_LAYERS)
            query = query.where(LayerProgress.session_id == session_id)
        await self.session.execute(
            query.order_by(LayerProgress.session_id, LayerProgress.layer).with_for_update()
        )

    async def reset_session(self, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
        """Set a session's layers back to the start, so the pipeline derives them again.

        Called in the transaction that edits or deletes a message, after :meth:`lock`. Each
        layer's row is reset by an upsert, so it is bumped even if a pass created it a moment
        ago (a plain ``UPDATE`` skipped a row still uncommitted, and the pass then stored
        episodes from the old text, or episodes that the rebuild deleted right after). A layer
        step on the session either committed before the lock (and the caller removes its rows)
        or finds the new ``generation`` and discards its work.
        """
        for layer in sorted(DERIVED_LAYERS):
            reset = insert(LayerProgress).from_select(
                ["session_id", "layer", "user_id", "generation"],
                select(Session.id, literal(layer), Session.user_id, literal(1)).where(
                    Session.id == session_id, Session.user_id == user_id
                ),
            )
            await self.session.execute(
                reset.on_conflict_do_update(
                    index_elements=[LayerProgress.session_id, LayerProgress.layer],
                    set_={
                        "processed_seq": 0,
                        "generation": LayerProgress.generation + 1,
                        "failures": 0,
                        "retry_after": None,
                        "last_error": None,
                    },
                )
            )
