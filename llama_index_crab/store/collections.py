"""Create, inspect and drop collections, and build their HNSW indexes.

A collection records the identity of the embedding model that fills it, so vectors
from another model are refused. Each collection has its own partial HNSW index on
``((embedding::vector(N)) vector_ip_ops) WHERE collection_id = ID``; the store queries
with the very same cast and predicate so the planner can use it. This module is the
only place that runs DDL, and only when called explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import CollectionNotFoundError
from .copy import check_storable
from .db import transaction
from .identity import (
    HNSW_INDEX_PREFIX,
    PRECISIONS,
    TEXT_INDEX_PREFIX,
    Collection,
    EmbeddingIdentity,
    collection_from_row,
)
from .schema import SYNC_FUNCTION_PREFIX, collections, nodes, sync_sources

__all__ = [
    "Collection",
    "CollectionInfo",
    "EmbeddingIdentity",
    "build_index",
    "by_name",
    "collection_exists",
    "create_collection",
    "drop_collection",
    "drop_index",
    "get_collection",
    "list_collections",
]

# PostgreSQL's btree index on the name holds entries up to ~2700 bytes.
MAX_NAME_BYTES = 2000
Bind = str | sa.URL | sa.Engine


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    dimension: int
    count: int
    indexed: bool


def _check_name(name: object) -> None:
    """Names are only ever bound values, but PostgreSQL text cannot hold NUL or surrogates."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"collection name must be a non-empty string, got {name!r}")
    check_storable(name, f"collection name {name!r}")
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"collection name {name[:40]!r}... is {size} bytes long; "
            f"use a name of at most {MAX_NAME_BYTES} bytes"
        )


def by_name(name: str) -> sa.Select[Any]:
    """The collection row whose name is the parameter ``name``."""
    return sa.select(collections).where(collections.c.name == sa.bindparam("name", name))


def get_collection(connection: sa.Connection, name: str) -> Collection:
    _check_name(name)
    row = connection.execute(by_name(name)).first()
    if row is None:
        raise CollectionNotFoundError(
            f"no collection named {name!r}; see `crab collections`, or create it by "
            f"ingesting into it: `crab ingest PATH --collection {name!r}` "
            "(from Python: store.create_collection())"
        )
    return collection_from_row(row._mapping)


def create_collection(
    bind: Bind | sa.Connection,
    name: str,
    identity: EmbeddingIdentity,
    *,
    precision: str = "vector",
    m: int = 16,
    ef_construction: int = 64,
    text_search_config: str = "english",
    index: bool = True,
    exist_ok: bool = False,
) -> Collection:
    """Create collection ``name`` for vectors of ``identity`` and, unless ``index=False``,
    its (empty) HNSW index. For a bulk load pass ``index=False`` and call
    :func:`build_index` afterwards: building once is much faster than growing the graph.
    ``bind`` may be a connection: the collection is then made in its transaction.
    """
    _check_name(name)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not 2 <= m <= 100 or not 4 <= ef_construction <= 1000 or ef_construction < 2 * m:
        raise ValueError(
            f"need 2 <= m <= 100 and 2*m <= ef_construction <= 1000, got m={m!r}, "
            f"ef_construction={ef_construction!r}"
        )
    from .migrate import check  # not at import: `python -m ...migrate` must load it first

    with transaction(bind) as connection:
        check(connection)  # on an old schema, change nothing and say to run `crab migrate`
        # Concurrent creators of one name wait here, then find the first one's collection.
        lock = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")
        connection.execute(lock, {"name": f"crab_collections:{name}"})
        existing = connection.execute(
            sa.select(collections.c.id).where(collections.c.name == name)
        ).first()
        if existing is not None:
            if not exist_ok:
                raise ValueError(
                    f"collection {name!r} already exists; pass exist_ok=True to reuse it"
                )
            collection = get_collection(connection, name)
            collection.check(identity)
            return collection
        known = sa.text("SELECT count(*) FROM pg_ts_config WHERE cfgname = :name")
        if not connection.scalar(known, {"name": text_search_config}):
            raise ValueError(
                f"unknown text search configuration {text_search_config!r}; "
                "use e.g. 'simple' or 'english'"
            )
        connection.execute(
            collections.insert().values(
                name=name,
                model=identity.model,
                dimension=identity.dimension,
                pooling=identity.pooling,
                query_prefix=identity.query_prefix,
                text_prefix=identity.text_prefix,
                precision=precision,
                hnsw_m=m,
                hnsw_ef_construction=ef_construction,
                text_search_config=text_search_config,
            )
        )
        collection = get_collection(connection, name)
        connection.execute(sa.text(text_index_ddl(collection.id)))
        if index:
            _create_index(connection, collection, "64MB")
        return collection


def text_index_ddl(collection_id: int) -> str:
    """CREATE INDEX for a collection's own full-text index (partial, like its HNSW index)."""
    return (
        f"CREATE INDEX IF NOT EXISTS {TEXT_INDEX_PREFIX}{int(collection_id)} ON {nodes.name} "
        f"USING gin (text_search) WHERE collection_id = {int(collection_id)}"
    )


def _create_index(connection: sa.Connection, collection: Collection, work_mem: str) -> None:
    connection.execute(sa.select(sa.func.set_config("maintenance_work_mem", work_mem, True)))
    kind, m, ef = collection.precision, collection.hnsw_m, collection.hnsw_ef_construction
    # Every interpolated value is an int or a constant from this module, never user text.
    connection.execute(
        sa.text(
            f"CREATE INDEX {collection.index_name} ON {nodes.name} USING hnsw "
            f"((embedding::{kind}({int(collection.dimension)})) {kind}_ip_ops) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef)}) "
            f"WHERE collection_id = {int(collection.id)}"
        )
    )


def collection_exists(bind: Bind, name: str) -> bool:
    """Whether a collection named ``name`` exists."""
    _check_name(name)
    with transaction(bind) as connection:
        query = sa.select(collections.c.id).where(collections.c.name == name)
        return connection.execute(query).first() is not None


def build_index(bind: Bind, name: str, *, maintenance_work_mem: str = "1GB") -> None:
    """(Re)build the HNSW index of collection ``name``, raising ``maintenance_work_mem``
    for the build so the graph is built in memory."""
    with transaction(bind) as connection:
        collection = get_collection(connection, name)
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {collection.index_name}"))
        _create_index(connection, collection, maintenance_work_mem)


def drop_index(bind: Bind, name: str) -> None:
    """Drop the HNSW index of collection ``name`` (e.g. before a bulk load)."""
    with transaction(bind) as connection:
        collection = get_collection(connection, name)
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {collection.index_name}"))


def drop_collection(bind: Bind, name: str) -> None:
    """Delete collection ``name``, its nodes and its indexes, and the triggers that fed it
    from tables kept in sync (``crab vectorize``)."""
    with transaction(bind) as connection:
        collection = get_collection(connection, name)
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {collection.index_name}"))
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {collection.text_index_name}"))
        sources = sa.select(sync_sources.c.id).where(sync_sources.c.collection_id == collection.id)
        for source_id in connection.scalars(sources):
            # CASCADE drops the triggers on the user's table that call it.
            connection.execute(
                sa.text(f"DROP FUNCTION IF EXISTS {SYNC_FUNCTION_PREFIX}{int(source_id)}() CASCADE")
            )
        connection.execute(collections.delete().where(collections.c.id == collection.id))


def list_collections(bind: Bind) -> list[CollectionInfo]:
    """Every collection with its model, dimension, node count and whether it is indexed."""
    count = (
        sa.select(sa.func.count())
        .where(nodes.c.collection_id == collections.c.id)
        .scalar_subquery()
    )
    indexed = sa.func.to_regclass(
        sa.func.concat(HNSW_INDEX_PREFIX, sa.cast(collections.c.id, sa.Text))
    ).is_not(None)
    query = sa.select(
        collections.c.name, collections.c.model, collections.c.dimension, count, indexed
    ).order_by(collections.c.name)
    with transaction(bind) as connection:
        return [CollectionInfo(*row) for row in connection.execute(query)]
