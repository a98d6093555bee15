"""LlamaIndex ``MetadataFilters`` -> a SQLAlchemy boolean clause over a JSONB column.

Keys and values are always bound parameters. The semantics follow LlamaIndex's own
in-memory store: a missing key or JSON ``null`` matches only ``!=``, ``nin`` and
``is_empty``; comparisons are typed (``5`` never equals ``"5"``, numbers and
strings are never ordered against each other, strings compare by code point).
``contains``, ``any`` and ``all`` look into lists, and into strings for substrings.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["to_clause"]

_COMPARISONS = {
    FilterOperator.GT: "__gt__",
    FilterOperator.GTE: "__ge__",
    FilterOperator.LT: "__lt__",
    FilterOperator.LTE: "__le__",
}
_LIST_OPERATORS = (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL)


def to_clause(filters: MetadataFilters, column: ColumnElement[Any]) -> ColumnElement[bool]:
    """Translate ``filters`` (nested AND / OR / NOT allowed) to a clause on ``column``."""
    parts = [
        to_clause(item, column) if isinstance(item, MetadataFilters) else _one(item, column)
        for item in filters.filters
    ]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return sa.and_(sa.true(), *parts)
    if condition == FilterCondition.OR:
        return sa.or_(sa.false(), *parts)
    if condition == FilterCondition.NOT:
        # A leaf on a missing key may be NULL rather than false; NOT NULL would drop the row.
        return sa.not_(sa.func.coalesce(sa.or_(sa.false(), *parts), False))
    raise ValueError(f"unsupported filter condition {condition!r}; use and, or or not")


def _jsonb(value: Any) -> ColumnElement[Any]:
    return sa.cast(sa.literal(json.dumps(value), sa.Text), JSONB)


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"filter values must be str, int or float, got {value!r}")
    return "string" if isinstance(value, str) else "number"


def _one(item: MetadataFilter, column: ColumnElement[Any]) -> ColumnElement[bool]:
    op, value = FilterOperator(item.operator), item.value
    # JSON null behaves like a missing key, as in LlamaIndex's SimpleVectorStore.
    field = sa.func.nullif(column[sa.literal(item.key, sa.Text)], _jsonb(None))
    typeof = sa.func.jsonb_typeof(field)

    if op == FilterOperator.IS_EMPTY:
        return sa.or_(field.is_(None), field == _jsonb(""), field == _jsonb([]))
    if value is None:
        raise ValueError(f"filter on {item.key!r} with operator {op.value!r} needs a value")
    if op in _LIST_OPERATORS:
        if not isinstance(value, list):
            raise ValueError(f"operator {op.value!r} needs a list value, got {value!r}")
        for element in value:
            _json_type(element)
    elif isinstance(value, list):
        raise ValueError(f"operator {op.value!r} needs a single value, got the list {value!r}")

    if op == FilterOperator.EQ:
        exact = sa.and_(typeof == _json_type(value), field == _jsonb(value))
        # Implied by the test above, but it can use the GIN (jsonb_path_ops) index.
        return sa.and_(column.op("@>")(_jsonb({item.key: value})), exact)
    if op == FilterOperator.NE:
        return sa.not_(
            sa.func.coalesce(sa.and_(typeof == _json_type(value), field == _jsonb(value)), False)
        )
    if op in _COMPARISONS:
        if isinstance(value, str):
            # jsonb orders strings by the database collation; "C" orders by code point, as Python.
            text = column[sa.literal(item.key, sa.Text)].astext.collate("C")
            return sa.and_(typeof == "string", getattr(text, _COMPARISONS[op])(value))
        compare = getattr(field, _COMPARISONS[op])
        return sa.and_(typeof == _json_type(value), compare(_jsonb(value)))
    if isinstance(value, list) and op == FilterOperator.IN:
        hint = sa.or_(sa.false(), *(column.op("@>")(_jsonb({item.key: v})) for v in value))
        inside = sa.func.coalesce(_jsonb(value).op("@>")(sa.func.jsonb_build_array(field)), False)
        return sa.and_(hint, inside)
    if op == FilterOperator.NIN:
        return sa.not_(
            sa.func.coalesce(_jsonb(value).op("@>")(sa.func.jsonb_build_array(field)), False)
        )
    if op == FilterOperator.CONTAINS:
        return _has(item.key, column, field, value)
    if isinstance(value, list) and op == FilterOperator.ANY:
        return sa.or_(sa.false(), *(_has(item.key, column, field, v) for v in value))
    if isinstance(value, list) and op == FilterOperator.ALL:
        return sa.and_(field.is_not(None), *(_has(item.key, column, field, v) for v in value))
    if op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(value, str):
            raise ValueError(f"operator {op.value!r} needs a string value, got {value!r}")
        text = column[sa.literal(item.key, sa.Text)].astext
        match = (
            text.contains(value, autoescape=True)
            if op == FilterOperator.TEXT_MATCH
            else text.icontains(value, autoescape=True)
        )
        return sa.and_(typeof == "string", match)
    raise ValueError(f"unsupported filter operator {op!r}")


def _has(
    key: str, column: ColumnElement[Any], field: ColumnElement[Any], value: Any
) -> ColumnElement[bool]:
    """A list value holds ``value``, or a string value holds it as a substring."""
    typeof = sa.func.jsonb_typeof(field)
    in_array = sa.and_(typeof == "array", field.op("@>")(_jsonb([value])))
    if _json_type(value) != "string":
        return in_array
    text = column[sa.literal(key, sa.Text)].astext
    return sa.or_(in_array, sa.and_(typeof == "string", text.contains(value, autoescape=True)))
