"""What we need to know about a user's table, read from the catalog, and safe SQL for it.

Every identifier of the user's table goes into SQL through psycopg's ``sql.Identifier``
(quoted, escaped) and every name inside a string through ``sql.Literal``; no user-given
name is ever formatted into SQL by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql

__all__ = ["Table", "describe_table", "execute", "key_match", "key_object", "qualified"]


@dataclass(frozen=True)
class Table:
    """A user's table: where it is, its columns (name -> SQL type) and its primary key."""

    oid: int
    schema: str
    name: str
    columns: dict[str, str]
    primary_key: tuple[str, ...]
    unique_keys: tuple[frozenset[str], ...]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def label(self) -> str:
        """How documents and hits name the table: ``name``, or ``schema.name`` outside public."""
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    def column(self, name: str, role: str) -> str:
        """``name`` if the table has that column, else a ValueError saying which it has."""
        if name in self.columns:
            return name
        folded = [c for c in self.columns if c.lower() == name.lower()]
        hint = f"; did you mean {folded[0]!r}?" if folded else ""
        raise ValueError(
            f"table {self.label!r} has no column {name!r} (the {role}); its columns are "
            f"{', '.join(map(repr, self.columns))}{hint}"
        )

    def is_unique(self, key: Sequence[str]) -> bool:
        """Whether the columns ``key`` identify at most one row (a unique index covers them)."""
        return any(index <= set(key) for index in self.unique_keys)


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, each part quoted as ``quote_ident`` would (for ``to_regclass``)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


def describe_table(connection: sa.Connection, name: str) -> Table:
    """The table ``name`` (``table`` or ``schema.table``, resolved as PostgreSQL resolves it,
    quotes and all), or a ValueError when there is none."""
    row = connection.execute(
        sa.text(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:name)"
        ),
        {"name": name},
    ).first()
    if row is None:
        raise ValueError(
            f"no table named {name!r} (searched the schemas on the search path); "
            "give it as TABLE or SCHEMA.TABLE"
        )
    oid, schema, relname, kind = row
    if kind not in ("r", "p"):
        raise ValueError(f"{name!r} is not a table (only tables have triggers to keep in sync)")
    columns: dict[str, str] = dict(
        connection.execute(
            sa.text(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"oid": oid},
        ).all()
    )
    indexes = connection.execute(
        sa.text(
            "SELECT i.indisprimary, array_agg(a.attname ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = :oid AND i.indisunique AND i.indpred IS NULL "
            "AND i.indexprs IS NULL GROUP BY i.indexrelid, i.indisprimary"
        ),
        {"oid": oid},
    ).all()
    primary = next((tuple(cols) for is_primary, cols in indexes if is_primary), ())
    if primary:  # in the table's column order, not alphabetical
        primary = tuple(c for c in columns if c in primary)
    unique = tuple(frozenset(cols) for _, cols in indexes)
    return Table(int(oid), schema, relname, columns, primary, unique)


def key_object(columns: Sequence[str], row: str) -> sql.Composed:
    """``jsonb_build_object('col', row."col", ...)``: a row's key as the queue stores it."""
    parts = [sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier(row, c)) for c in columns]
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(parts))


def key_match(table: Table, columns: Sequence[str], row: str, key: sql.Composable) -> sql.Composed:
    """``row."col" = CAST(key->>'col' AS type) AND ...``: the row whose key is the jsonb
    ``key``, in a form the table's index on the key serves."""
    parts = [
        sql.SQL("{} = CAST({} ->> {} AS {})").format(
            sql.Identifier(row, c), key, sql.Literal(c), sql.SQL(table.columns[c])
        )
        for c in columns
    ]
    return sql.SQL(" AND ").join(parts)


def execute(connection: sa.Connection, statement: sql.Composable) -> list[tuple[Any, ...]]:
    """Run ``statement`` (values in it as ``sql.Literal``) in ``connection``'s transaction
    and return its rows. It goes to the driver without parameters, so nothing in a quoted
    name or value is read as a placeholder."""
    raw: Any = connection.connection.driver_connection
    with raw.cursor() as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall()) if cursor.description is not None else []
