"""Conditions on a JSON ``value`` column, as LangGraph's stores filter items: one rule in SQL.

A filter maps a top-level key of the value to a value it must equal, or to operators:
``{"$eq": v}``, ``{"$ne": v}``, ``{"$gt": v}``, ``{"$gte": v}``, ``{"$lt": v}``, ``{"$lte": v}``.
Comparisons are PostgreSQL's ``jsonb`` ones (numbers as numbers, strings as strings); a key the
item lacks matches no condition but ``$ne``. A nested object as the value matches items whose
key contains it (``@>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from memfuse.errors import ValidationError

OPERATORS = {
    "$eq": "=",
    "$ne": "IS DISTINCT FROM",
    "$gt": ">",
    "$gte": ">=",
    "$lt": "<",
    "$lte": "<=",
}
MAX_CONDITIONS = 32


def value_filter_sql(
    conditions: Mapping[str, Any], *, column: str, prefix: str
) -> tuple[str, dict[str, Any]]:
    """SQL (``AND``-ed conditions on ``column``) and its bound parameters, named
    ``{prefix}_path_N`` / ``{prefix}_value_N``; ``("TRUE", {})`` for no conditions."""
    if not isinstance(conditions, Mapping):
        raise ValidationError(
            f"must be a dict of field -> value, got {type(conditions).__name__}", field="filter"
        )
    clauses: list[str] = []
    parameters: dict[str, Any] = {}
    for field, wanted in conditions.items():
        if not isinstance(field, str) or not field:
            raise ValidationError("field names must be non-empty strings", field="filter")
        path = [field]  # a literal key, as LangGraph's stores read it (no dotted paths)
        if isinstance(wanted, Mapping) and wanted and all(str(k).startswith("$") for k in wanted):
            pairs = list(wanted.items())
        elif isinstance(wanted, Mapping):
            pairs = [("@>", wanted)]
        else:
            pairs = [("$eq", wanted)]
        for operator, operand in pairs:
            if operator != "@>" and operator not in OPERATORS:
                raise ValidationError(
                    f"unknown operator {operator!r} for {field!r}; use {sorted(OPERATORS)}",
                    field="filter",
                )
            n = len(clauses)
            if n >= MAX_CONDITIONS:
                raise ValidationError(f"more than {MAX_CONDITIONS} conditions", field="filter")
            try:
                operand_json = json.dumps(operand, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise ValidationError(
                    f"{field!r}: not a JSON value ({error})", field="filter"
                ) from None
            path_name, value_name = f"{prefix}_path_{n}", f"{prefix}_value_{n}"
            parameters[path_name] = path
            parameters[value_name] = operand_json
            target = f"({column} #> CAST(:{path_name} AS text[]))"
            sql_operator = "@>" if operator == "@>" else OPERATORS[operator]
            clauses.append(f"{target} {sql_operator} CAST(:{value_name} AS jsonb)")
    return (" AND ".join(clauses) or "TRUE"), parameters
