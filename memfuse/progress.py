"""Progress of long command-line jobs (an import, an evaluation): a bar when tqdm is installed.

tqdm is optional, not a dependency of the library (the ``local`` extra brings it, through
sentence-transformers). Without it, progress is logged at INFO on this module's logger
(``memfuse -v`` shows it) each time another tenth is done. Nothing is imported or printed
when progress is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Progress(Protocol):
    """What a job reports to: ``update(n)`` after ``n`` more units are done."""

    def update(self, n: int = 1) -> object: ...


class LoggedProgress:
    """Progress as log lines: ``desc: done/total unit`` at each further tenth of ``total``."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._tenths = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        tenths = 10 if self.total <= 0 else min(10, self.done * 10 // self.total)
        if tenths > self._tenths:
            self._tenths = tenths
            logger.info("%s: %d/%d %s", self.desc, self.done, self.total, self.unit)


class _Off:
    def update(self, n: int = 1) -> None:
        return None


@contextmanager
def progress_bar(total: int, *, desc: str, unit: str, enabled: bool = True) -> Iterator[Progress]:
    """A tqdm bar on stderr, log lines when tqdm is missing, or nothing when not ``enabled``."""
    if not enabled:
        yield _Off()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield LoggedProgress(total, desc, unit)
        return
    with tqdm(total=total, desc=desc, unit=unit) as bar:
        yield bar


def track(items: Sequence[T], *, desc: str, unit: str, enabled: bool = True) -> Iterator[T]:
    """Each of ``items`` in order, counted on a :func:`progress_bar` as it is done."""
    with progress_bar(len(items), desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
