"""The one hook that runs after a transaction that changed a user's memory has committed.

Invariant: every service that commits a change to a user's rows (messages added, edited or
deleted; a session or the user deleted) calls its :class:`AfterCommit` once per affected user,
after the commit and never inside the transaction. The hook drops that user's cached search
results and wakes the layer pipeline and the embedding worker, so new work starts now rather
than at their next poll. Waking is only a hint: each of them also polls, and the database
triggers queue the work itself, so a missed wake-up delays work but never loses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence


class AfterCommit:
    """Drops a user's cached search results and wakes the background work.

    The pipeline and the worker sign up with :meth:`wake_also` when they start (and leave with
    :meth:`stop_waking`), so a service needing the hook does not need them built.
    """

    def __init__(
        self,
        *,
        invalidate: Callable[[uuid.UUID], None],
        wake: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._invalidate = invalidate
        self._wake = list(wake)

    def wake_also(self, wake: Callable[[], None]) -> None:
        self._wake.append(wake)

    def stop_waking(self, wake: Callable[[], None]) -> None:
        if wake in self._wake:
            self._wake.remove(wake)

    def __call__(self, user_id: uuid.UUID) -> None:
        self._invalidate(user_id)
        for wake in tuple(self._wake):
            wake()
