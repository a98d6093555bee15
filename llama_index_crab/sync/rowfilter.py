"""Which rows of a synced table feed its collection, declared without SQL.

A filter is conditions that must all hold. A condition keeps the rows whose column is one
of some values (``None`` among them: or NULL), or, negated, the rows whose column is none
of them (a NULL column is none of the values, as ``IS DISTINCT FROM`` has it). Values go
into SQL as literals cast to the column's own type; names as quoted identifiers.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import sqlalchemy as sa
from psycopg import sql

from .tables import Table, execute

__all__ = ["Condition", "Value", "check_filter", "filter_sql", "row_filter"]

Value: TypeAlias = (
    str | int | float | bool | decimal.Decimal | datetime.date | datetime.time | uuid.UUID | None
)


@dataclass(frozen=True)
class Condition:
    """``column`` is one of ``values`` (``None``: NULL), or with ``negate`` none of them."""

    column: str
    values: tuple[str | None, ...]
    negate: bool = False

    def describe(self) -> str:
        """The condition as a person reads it: ``status = 'published'``, ``n IS NOT NULL``."""
        name = self.column
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            name = '"' + name.replace('"', '""') + '"'
        known = [v for v in self.values if v is not None]
        parts = []
        if len(known) == 1:
            parts.append(f"{name} {'<>' if self.negate else '='} {_quote(known[0])}")
        elif known:
            listed = ", ".join(map(_quote, known))
            parts.append(f"{name} {'NOT IN' if self.negate else 'IN'} ({listed})")
        if None in self.values:
            parts.append(f"{name} IS {'NOT ' if self.negate else ''}NULL")
        return f" {'AND' if self.negate else 'OR'} ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "values": list(self.values), "negate": self.negate}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Condition:
        return cls(str(data["column"]), tuple(data["values"]), bool(data.get("negate", False)))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _text(value: Value) -> str | None:
    """``value`` as the text PostgreSQL's input function of the column's type reads."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, int | float | decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(
        f"filter value {value!r} is a {type(value).__name__}; give a str, number, bool, date, "
        "time, UUID or None"
    )


def row_filter(
    where: Mapping[str, Value | Sequence[Value]] | None = None,
    where_not: Mapping[str, Value | Sequence[Value]] | None = None,
) -> tuple[Condition, ...]:
    """The conditions of ``where={column: value or values}`` (the column is one of them;
    ``None`` matches NULL) and ``where_not`` (it is none of them)."""
    conditions = []
    for negate, mapping in ((False, where or {}), (True, where_not or {})):
        for column, given in mapping.items():
            listed: Sequence[Value] = (
                given if isinstance(given, Sequence) and not isinstance(given, str) else [given]
            )
            values = tuple(dict.fromkeys(_text(v) for v in listed))
            if not values:
                raise ValueError(f"the filter on column {column!r} lists no value; give one")
            conditions.append(Condition(column, values, negate))
    return tuple(conditions)


def _cast(table: Table, column: str, value: str) -> sql.Composed:
    table.column(column, "filter column")
    return sql.SQL("CAST({} AS {})").format(sql.Literal(value), sql.SQL(table.columns[column]))


def filter_sql(table: Table, conditions: Sequence[Condition], row: str) -> sql.Composable:
    """The filter as a boolean that is never NULL, on the columns of ``row`` (an alias, or
    ``new`` / ``old`` in a trigger); ``true`` when there is no condition."""
    if not conditions:
        return sql.SQL("true")
    parts = []
    for condition in conditions:
        column = sql.Identifier(row, table.column(condition.column, "filter column"))
        tests = []
        known = [v for v in condition.values if v is not None]
        if known:
            values = sql.SQL(", ").join(_cast(table, condition.column, v) for v in known)
            tests.append(sql.SQL("{} IN ({})").format(column, values))
        if None in condition.values:
            tests.append(sql.SQL("{} IS NULL").format(column))
        test = sql.SQL(" OR ").join(tests)
        parts.append(
            sql.SQL("({}) IS {}TRUE").format(test, sql.SQL("NOT " if condition.negate else ""))
        )
    return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))


def check_filter(connection: sa.Connection, table: Table, conditions: Sequence[Condition]) -> None:
    """A ValueError saying what to do when a condition names a column ``table`` lacks, or
    a value that its column's type does not read."""
    import psycopg

    for condition in conditions:
        table.column(condition.column, "filter column")
    for condition in conditions:
        for value in condition.values:
            if value is None:
                continue
            try:
                execute(
                    connection, sql.SQL("SELECT {}").format(_cast(table, condition.column, value))
                )
            except psycopg.Error as exc:
                reason = exc.diag.message_primary or str(exc).splitlines()[0]
                raise ValueError(
                    f"the filter value {value!r} does not fit column {condition.column!r} of "
                    f"table {table.label!r} (type {table.columns[condition.column]}): {reason}; "
                    "give a value of that type"
                ) from exc
