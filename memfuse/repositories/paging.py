"""One rule for pages of a listing: order by the given columns, then limit and offset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select
from sqlalchemy.orm import InstrumentedAttribute

from memfuse.types import Page

T = TypeVar("T")


def paginate(
    query: Select[T],
    order: Sequence[ColumnElement[Any] | InstrumentedAttribute[Any]],
    page: Page,
) -> Select[T]:
    """``query`` ordered by ``order`` (each column descending for newest first), one page."""
    columns = [column.desc() if page.newest_first else column for column in order]
    return query.order_by(*columns).limit(page.limit).offset(page.offset)
