"""Declare a user's table as a source of a collection: its triggers and its backfill.

The triggers call one PL/pgSQL function per source, ``crab_sync_<id>()``, which writes the
changed row's key into ``crab_sync_queue`` and sends ``NOTIFY crab_sync``: plain SQL, so it
works on any PostgreSQL that has pgvector, for a role that is not a superuser. The function
is ``SECURITY DEFINER`` (it runs as the role that declared the source, with a fixed
``search_path``), so the application's roles that write the table need no right on our
tables; once its source is gone it does nothing, so it never blocks a write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

import sqlalchemy as sa
from psycopg import sql

from ..errors import StoreError
from ..store.collections import get_collection
from ..store.db import transaction
from ..store.schema import SYNC_FUNCTION_PREFIX, sync_queue, sync_sources
from .rowfilter import Condition, Value, check_filter, filter_sql, row_filter
from .tables import Table, describe_table, execute, key_object, qualified

if TYPE_CHECKING:
    from ..store.vector_store import PostgresVectorStore

__all__ = ["CHANNEL", "Source", "backfill", "get_sources", "unvectorize", "vectorize"]

CHANNEL = "crab_sync"
SOURCES = sync_sources.name
QUEUE = sync_queue.name
BACKFILL_ROWS = 1000
_COLUMNS = (
    "s.id, c.name, s.collection_id, s.table_schema, s.table_name, s.key_columns, "
    "s.text_column, s.metadata_columns, s.row_filter, s.embed_model, s.backfill_after, "
    "s.backfilled_at, s.last_error"
)


@dataclass(frozen=True)
class Source:
    """A table declared to feed a collection (a row of ``crab_sync_sources``)."""

    id: int
    collection: str
    collection_id: int
    table_schema: str
    table_name: str
    key_columns: tuple[str, ...]
    text_column: str
    metadata_columns: tuple[str, ...]
    row_filter: tuple[Condition, ...]  # all must hold for a row to feed the collection
    embed_model: str | None
    backfill_after: dict[str, Any] | None
    backfilled_at: datetime | None
    last_error: str | None

    @property
    def label(self) -> str:
        """The table as documents name it (``name``, ``schema.name`` outside public)."""
        public = self.table_schema == "public"
        return self.table_name if public else f"{self.table_schema}.{self.table_name}"

    @property
    def where(self) -> str:
        """The filter as a person reads it (``''``: every row)."""
        return " AND ".join(c.describe() for c in self.row_filter)

    @property
    def function(self) -> str:
        return f"{SYNC_FUNCTION_PREFIX}{int(self.id)}"

    def document_id(self, key: dict[str, Any]) -> str:
        """``table:value`` (one key column) or ``table:[v1, v2]`` (several)."""
        values = [key[c] for c in self.key_columns]
        if len(values) == 1:
            value = values[0]
            return f"{self.label}:{value if isinstance(value, str) else json.dumps(value)}"
        return f"{self.label}:{json.dumps(values, ensure_ascii=False)}"


def _source(row: Sequence[Any]) -> Source:
    (id_, collection, cid, schema, name, keys, text, meta, where, model, after, done, error) = row
    conditions = tuple(Condition.from_json(c) for c in where)
    return Source(
        int(id_), collection, int(cid), schema, name, tuple(keys), text, tuple(meta),
        conditions, model, after, done, error,
    )  # fmt: skip


def get_sources(
    connection: sa.Connection,
    collections: Sequence[str] = (),
    table: str | None = None,
    *,
    ids: Sequence[int] | None = None,
    lock: bool = False,
) -> list[Source]:
    """The declared sources, of the given collections only when some are named (and of
    ``ids`` only, when given). ``lock``: hold them until the transaction ends, so that a
    declaration changing them waits for it (and it, for a declaration in progress)."""
    query = f"SELECT {_COLUMNS} FROM {SOURCES} s JOIN crab_collections c ON c.id = s.collection_id"
    if ids is not None:
        query += " WHERE s.id = ANY(:ids)"
    query += " ORDER BY s.id" + (" FOR SHARE OF s" if lock else "")
    rows = connection.execute(sa.text(query), {"ids": list(ids or ())}).all()
    sources = [_source(row) for row in rows]
    if collections:
        sources = [s for s in sources if s.collection in collections]
    if table is not None:
        sources = [s for s in sources if table in (s.label, s.table_name)]
    return sources


def vectorize(
    store: PostgresVectorStore,
    table: str,
    *,
    column: str,
    key: Sequence[str] = (),
    metadata: Sequence[str] = (),
    where: Mapping[str, Value | Sequence[Value]] | None = None,
    where_not: Mapping[str, Value | Sequence[Value]] | None = None,
    embed_model: str | None = None,
    backfill_rows: int | None = BACKFILL_ROWS,
) -> Source:
    """Keep ``store``'s collection in sync with the rows of ``table``: each row's ``column``
    becomes one document (id ``table:key``), its ``metadata`` columns its chunks' metadata.

    ``where={column: value or [values]}`` keeps only the rows whose column is one of them
    (``None``: NULL), ``where_not`` those whose column is none of them (NULL is none); every
    condition must hold. A row that leaves the filter loses its chunks, one that enters it
    is embedded. Declaring the table again with another filter (or columns) evaluates
    every row again: the backfill starts over, and the chunks of rows now outside go.

    Installs the triggers (insert, update of the watched columns, delete, truncate) and then,
    unless ``backfill_rows`` is None, queues the existing rows ``backfill_rows`` at a time
    (see :func:`backfill`). ``key``: the columns that identify a row, by default the primary
    key. ``embed_model`` is recorded for the workers (a GGUF path or ``owner/repo:file``;
    they use the bundled model otherwise). Declaring the same table again updates it.
    """
    from ..store.migrate import check

    with transaction(store.client) as connection:
        check(connection)
        collection = get_collection(connection, store.collection_name)
        described = describe_table(connection, table)
        keys = _key_columns(described, key)
        text = described.column(column, "text column")
        extra = [described.column(c, "metadata column") for c in dict.fromkeys(metadata)]
        conditions = row_filter(where, where_not)
        check_filter(connection, described, conditions)
        stored_filter = [c.to_json() for c in conditions]
        _check_privileges(connection, described)
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended('crab_sync_sources', :oid))"),
            {"oid": described.oid},
        )
        params = {"cid": collection.id, "schema": described.schema, "name": described.name}
        before = connection.execute(
            sa.text(
                f"SELECT key_columns, text_column, metadata_columns, row_filter FROM {SOURCES} "
                "WHERE collection_id = :cid AND table_schema = :schema AND table_name = :name"
            ),
            params,
        ).first()
        changed = before is None or tuple(before) != (keys, text, extra, stored_filter)
        source_id = connection.scalar(
            sa.text(
                f"INSERT INTO {SOURCES} AS s (collection_id, table_schema, table_name, "
                "key_columns, text_column, metadata_columns, row_filter, embed_model) "
                "VALUES (:cid, :schema, :name, :keys, :text, :meta, CAST(:filter AS jsonb), "
                ":model) "
                "ON CONFLICT (collection_id, table_schema, table_name) DO UPDATE SET "
                "key_columns = excluded.key_columns, text_column = excluded.text_column, "
                "metadata_columns = excluded.metadata_columns, row_filter = excluded.row_filter, "
                "embed_model = coalesce(excluded.embed_model, s.embed_model), last_error = NULL, "
                "backfill_after = CASE WHEN :changed THEN NULL ELSE s.backfill_after END, "
                "backfilled_at = CASE WHEN :changed THEN NULL ELSE s.backfilled_at END "
                "RETURNING id"
            ),
            {
                **params,
                "keys": keys,
                "text": text,
                "meta": extra,
                "filter": json.dumps(stored_filter),
                "model": embed_model,
                "changed": changed,
            },
        )
        _install_triggers(connection, described, int(source_id), keys, [text, *extra], conditions)
        if changed and _has_chunks(connection, collection.id, described.label):
            # Rows that left the filter (or whose key changed) keep chunks the backfill
            # does not reach: one item makes a worker remove them.
            connection.execute(
                sa.text(f"INSERT INTO {QUEUE} (source_id, op) VALUES (:id, 'reconcile')"),
                {"id": source_id},
            )
        (source,) = get_sources(connection, ids=[source_id])
    if backfill_rows is not None:
        backfill(store.client, source, batch_rows=backfill_rows)
    return source


def _has_chunks(connection: sa.Connection, collection_id: int, label: str) -> bool:
    return bool(
        connection.scalar(
            sa.text(
                "SELECT EXISTS (SELECT FROM crab_nodes WHERE collection_id = :cid "
                "AND metadata @> CAST(:owned AS jsonb))"
            ),
            {"cid": collection_id, "owned": json.dumps({"source_table": label})},
        )
    )


def _key_columns(table: Table, key: Sequence[str]) -> list[str]:
    if not key:
        if not table.primary_key:
            raise ValueError(
                f"table {table.label!r} has no primary key; name the column(s) that identify "
                "a row with --key (key=...)"
            )
        return list(table.primary_key)
    keys = [table.column(c, "key") for c in dict.fromkeys(key)]
    if not table.is_unique(keys):
        raise ValueError(
            f"the key {keys!r} of table {table.label!r} is not covered by a unique index, so "
            "it may name several rows; use the primary key, or add a unique index on it"
        )
    return keys


def _check_privileges(connection: sa.Connection, table: Table) -> None:
    role, name, *allowed = connection.execute(
        sa.text(
            "SELECT quote_ident(current_user), "
            "format('%I.%I', CAST(:schema AS text), CAST(:name AS text)), "
            "has_table_privilege(CAST(:oid AS oid), 'SELECT'), "
            "has_table_privilege(CAST(:oid AS oid), 'TRIGGER')"
        ),
        {"oid": table.oid, "schema": table.schema, "name": table.name},
    ).one()
    missing = [p for p, ok in zip(("SELECT", "TRIGGER"), allowed) if not ok]
    if missing:
        raise StoreError(
            f"role {role} may not {'create triggers on' if 'TRIGGER' in missing else 'read'} "
            f"table {table.label!r}; its owner can allow it: "
            f"GRANT {', '.join(missing)} ON TABLE {name} TO {role}"
        )


def _crab_schema(connection: sa.Connection) -> str:
    return str(
        connection.scalar(
            sa.text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.oid = to_regclass('{QUEUE}')"
            )
        )
    )


def _install_triggers(
    connection: sa.Connection,
    table: Table,
    source_id: int,
    keys: Sequence[str],
    watched: Sequence[str],
    conditions: Sequence[Condition],
) -> None:
    """The triggers: insert and delete fire for rows inside the filter, update for a row
    inside it before or after whose key, watched or filter columns changed. The filter
    lives in their ``WHEN``, so a row outside it costs no call of the function."""
    schema = _crab_schema(connection)
    queue = sql.Identifier(schema, QUEUE)
    function = sql.Identifier(schema, f"{SYNC_FUNCTION_PREFIX}{source_id}")
    sid = sql.Literal(source_id)
    body = sql.SQL(
        "DECLARE old_key jsonb; new_key jsonb;\n"
        "BEGIN\n"
        "  IF NOT EXISTS (SELECT FROM {sources} WHERE id = {sid}) THEN RETURN NULL; END IF;\n"
        "  IF TG_OP = 'TRUNCATE' THEN\n"
        "    INSERT INTO {queue} (source_id, op) VALUES ({sid}, 'truncate');\n"
        "  ELSE\n"
        "    IF TG_OP <> 'INSERT' THEN old_key := {old}; END IF;\n"
        "    IF TG_OP <> 'DELETE' THEN new_key := {new}; END IF;\n"
        "    IF old_key IS DISTINCT FROM new_key AND old_key IS NOT NULL THEN\n"
        "      INSERT INTO {queue} (source_id, key, op) VALUES ({sid}, old_key, 'delete');\n"
        "    END IF;\n"
        "    IF new_key IS NOT NULL THEN\n"
        "      INSERT INTO {queue} (source_id, key, op) VALUES ({sid}, new_key, lower(TG_OP));\n"
        "    END IF;\n"
        "  END IF;\n"
        "  PERFORM pg_notify({channel}, {payload});\n"
        "  RETURN NULL;\n"
        "END"
    ).format(
        sources=sql.Identifier(schema, SOURCES),
        queue=queue,
        sid=sid,
        old=key_object(keys, "old"),
        new=key_object(keys, "new"),
        channel=sql.Literal(CHANNEL),
        payload=sql.Literal(str(source_id)),
    )
    raw: Any = connection.connection.driver_connection
    fired_by = list(dict.fromkeys([*keys, *watched, *(c.column for c in conditions)]))
    changed = sql.SQL(" OR ").join(
        sql.SQL("old.{c} IS DISTINCT FROM new.{c}").format(c=sql.Identifier(c)) for c in fired_by
    )
    if conditions:
        inside = sql.SQL("{} OR {}").format(
            filter_sql(table, conditions, "old"), filter_sql(table, conditions, "new")
        )
        changed = sql.SQL("({}) AND ({})").format(changed, inside)
    columns = sql.SQL(", ").join(map(sql.Identifier, fired_by))
    name = f"{SYNC_FUNCTION_PREFIX}{source_id}"
    row_triggers = [
        sql.SQL(
            "CREATE TRIGGER {t} AFTER {op} ON {table} FOR EACH ROW {when}EXECUTE FUNCTION {f}()"
        ).format(
            t=sql.Identifier(f"{name}_{op.lower()}"),
            op=sql.SQL(op),
            table=table.ident,
            when=sql.SQL("WHEN ({}) ").format(filter_sql(table, conditions, row))
            if conditions
            else sql.SQL(""),
            f=function,
        )
        for op, row in (("INSERT", "new"), ("DELETE", "old"))
    ]
    statements = [
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(f=function, body=sql.Literal(body.as_string(raw))),
        *_drop_triggers(table, source_id),
        *row_triggers,
        sql.SQL(
            "CREATE TRIGGER {t} AFTER UPDATE OF {columns} ON {table} "
            "FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {f}()"
        ).format(
            t=sql.Identifier(f"{name}_update"),
            columns=columns,
            table=table.ident,
            changed=changed,
            f=function,
        ),
        sql.SQL(
            "CREATE TRIGGER {t} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {f}()"
        ).format(t=sql.Identifier(f"{name}_truncate"), table=table.ident, f=function),
    ]
    for statement in statements:
        execute(connection, statement)


def _drop_triggers(table: Table, source_id: int) -> list[sql.Composed]:
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {t} ON {table}").format(
            t=sql.Identifier(f"{SYNC_FUNCTION_PREFIX}{source_id}_{kind}"), table=table.ident
        )
        # "row": one trigger for insert and delete, as sources declared before filters had
        for kind in ("row", "insert", "delete", "update", "truncate")
    ]


def backfill(
    bind: str | sa.URL | sa.Engine, source: Source, *, batch_rows: int = BACKFILL_ROWS
) -> int:
    """Queue the rows of ``source``'s table not queued yet by a backfill, ``batch_rows`` per
    transaction, in key order; each transaction records how far it got, so a backfill cut
    short goes on from there when called again. Returns the rows queued."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be ≥ 1, got {batch_rows!r}")
    queued = 0
    while True:
        with transaction(bind) as connection:
            row = connection.execute(
                sa.text(
                    f"SELECT backfill_after, backfilled_at, row_filter FROM {SOURCES} "
                    "WHERE id = :id FOR UPDATE"
                ),
                {"id": source.id},
            ).first()
            if row is None or row.backfilled_at is not None:
                return queued
            table = describe_table(connection, qualified(source.table_schema, source.table_name))
            keys = source.key_columns
            order = sql.SQL(", ").join(sql.Identifier("t", c) for c in keys)
            conditions = [Condition.from_json(c) for c in row.row_filter]
            where: sql.Composable = sql.SQL("WHERE {}").format(filter_sql(table, conditions, "t"))
            if row.backfill_after is not None:
                after = sql.SQL(", ").join(
                    sql.SQL("CAST({} ->> {} AS {})").format(
                        sql.Literal(json.dumps(row.backfill_after)) + sql.SQL("::jsonb"),
                        sql.Literal(c),
                        sql.SQL(table.columns[c]),
                    )
                    for c in keys
                )
                where = sql.SQL("{} AND ROW({}) > ROW({})").format(where, order, after)
            found = execute(
                connection,
                sql.SQL("SELECT {} FROM {} AS t {} ORDER BY {} LIMIT {}").format(
                    key_object(keys, "t"), table.ident, where, order, sql.Literal(batch_rows)
                ),
            )
            batch = [json.dumps(k) for (k,) in found]
            connection.execute(
                sa.text(
                    f"INSERT INTO {QUEUE} (source_id, key, op) "
                    "SELECT :id, k, 'backfill' FROM unnest(CAST(:keys AS jsonb[])) AS k"
                ),
                {"id": source.id, "keys": batch},
            )
            done = len(batch) < batch_rows
            connection.execute(
                sa.text(
                    f"UPDATE {SOURCES} SET backfill_after = CAST(:after AS jsonb), "
                    "backfilled_at = CASE WHEN :done THEN now() END WHERE id = :id"
                ),
                {"id": source.id, "after": batch[-1] if batch else None, "done": done},
            )
            if batch:
                connection.execute(sa.select(sa.func.pg_notify(CHANNEL, str(source.id))))
        queued += len(batch)
        if done:
            return queued


def unvectorize(store: PostgresVectorStore, table: str, *, drop_collection: bool = False) -> bool:
    """Stop keeping ``store``'s collection in sync with ``table``: its triggers, function,
    declaration and queued work go; the chunks stay unless ``drop_collection``. Returns
    whether the table was a source."""
    from ..store.collections import drop_collection as drop

    with transaction(store.client) as connection:
        sources = get_sources(connection, [store.collection_name], table)
        if not sources:
            described = describe_table(connection, table)
            sources = [
                s
                for s in get_sources(connection, [store.collection_name])
                if (s.table_schema, s.table_name) == (described.schema, described.name)
            ]
        schema = _crab_schema(connection)
        for source in sources:
            # The declaration first: it waits for workers' batches on this source, before
            # dropping the triggers locks the table their batches read.
            connection.execute(sa.text(f"DELETE FROM {SOURCES} WHERE id = :id"), {"id": source.id})
            name = qualified(source.table_schema, source.table_name)
            exists = connection.scalar(sa.select(sa.func.to_regclass(name)))
            if exists is not None:
                for statement in _drop_triggers(_named(source), source.id):
                    execute(connection, statement)
            execute(
                connection,
                sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(
                    sql.Identifier(schema, source.function)
                ),
            )
    if drop_collection:
        drop(store.client, store.collection_name)
    return bool(sources)


def _named(source: Source) -> Table:
    return Table(0, source.table_schema, source.table_name, {}, (), ())
