"""SQLAlchemy table definitions: the single source of truth for the migrations.

One ``crab_nodes`` table holds every collection; its ``embedding`` column is a
dimensionless ``vector`` so collections of different models share it. Each
collection gets its own partial HNSW expression index (see
:mod:`llama_index_crab.store.collections`), which is why those indexes are not declared here.
"""

from __future__ import annotations

import sqlalchemy as sa
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id type."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# So that reflection (alembic's drift check) knows the type, as pgvector does for vector.
ischema_names["xid8"] = XID8


VERSION_TABLE = "crab_alembic_version"
# A 384-dim vector plus the node JSON passes the default 2 kB TOAST threshold, and
# trying to compress incompressible floats costs a third of the ingest time.
NO_TOAST = {"toast_tuple_target": 8160}

metadata = sa.MetaData(
    naming_convention={
        "ix": "%(table_name)s_%(column_0_N_name)s_idx",
        "uq": "%(table_name)s_%(column_0_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "pk": "%(table_name)s_pkey",
    }
)

collections = sa.Table(
    "crab_collections",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("pooling", sa.Text, nullable=False),
    sa.Column("query_prefix", sa.Text, nullable=False, server_default=""),
    sa.Column("text_prefix", sa.Text, nullable=False, server_default=""),
    sa.Column("precision", sa.Text, nullable=False, server_default="vector"),
    sa.Column("hnsw_m", sa.Integer, nullable=False, server_default="16"),
    sa.Column("hnsw_ef_construction", sa.Integer, nullable=False, server_default="64"),
    sa.Column("text_search_config", sa.Text, nullable=False, server_default="simple"),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.CheckConstraint("dimension BETWEEN 1 AND 16000", name="dimension"),
    sa.CheckConstraint("pooling IN ('mean', 'cls', 'last')", name="pooling"),
    sa.CheckConstraint("precision IN ('vector', 'halfvec')", name="precision"),
    sa.CheckConstraint("hnsw_m BETWEEN 2 AND 100", name="hnsw_m"),
    sa.CheckConstraint("hnsw_ef_construction BETWEEN 4 AND 1000", name="hnsw_ef_construction"),
)

nodes = sa.Table(
    "crab_nodes",
    metadata,
    sa.Column(
        "collection_id",
        sa.Integer,
        sa.ForeignKey("crab_collections.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("ref_doc_id", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("metadata", JSONB, nullable=False),
    # LlamaIndex's ``_node_content`` (the node as JSON, without text and vector), kept out
    # of ``metadata``: parsing and indexing it as jsonb was a fifth of the ingest time.
    sa.Column("node_content", sa.Text, nullable=False),
    sa.Column("embedding", VECTOR(), nullable=False),
    sa.Column("text_search", TSVECTOR, nullable=False),
    sa.Index(None, "collection_id", "ref_doc_id"),
    sa.Index(
        None, "metadata", postgresql_using="gin", postgresql_ops={"metadata": "jsonb_path_ops"}
    ),
    postgresql_with=NO_TOAST,
)

# Rows live here only inside the ingesting transaction, which deletes them before it
# commits, so concurrent ingests never see each other's rows. Each transaction finds its
# rows through the index on ``xact``: a sequential scan would also read the dead rows of
# every earlier ingest until autovacuum comes by (at 100k rows, half the ingest time).
staging = sa.Table(
    "crab_staging",
    metadata,
    sa.Column(
        "xact", XID8, nullable=False, server_default=sa.text("pg_current_xact_id()"), index=True
    ),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("ref_doc_id", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("metadata", JSONB, nullable=False),
    sa.Column("node_content", sa.Text, nullable=False),
    sa.Column("embedding", VECTOR(), nullable=False),
    prefixes=["UNLOGGED"],
    postgresql_with=NO_TOAST,
)

# The trigger function of a synced table is this prefix + its source id.
SYNC_FUNCTION_PREFIX = "crab_sync_"

# Tables of users' databases kept in sync with collections (llama_index_crab.sync): what
# `crab vectorize` declared, and the row keys its triggers queue for the workers. A source
# goes with its collection, its queued work with the source.
sync_sources = sa.Table(
    "crab_sync_sources",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "collection_id",
        sa.Integer,
        sa.ForeignKey("crab_collections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("table_schema", sa.Text, nullable=False),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("key_columns", ARRAY(sa.Text), nullable=False),
    sa.Column("text_column", sa.Text, nullable=False),
    sa.Column("metadata_columns", ARRAY(sa.Text), nullable=False, server_default="{}"),
    # The conditions a row must meet to feed the collection ([]: every row), as
    # llama_index_crab.sync.rowfilter.Condition.to_json gives them.
    sa.Column("row_filter", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("embed_model", sa.Text, nullable=True),
    # The key of the last row the backfill queued (NULL: none yet); done when backfilled_at.
    sa.Column("backfill_after", JSONB, nullable=True),
    sa.Column("backfilled_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.UniqueConstraint("collection_id", "table_schema", "table_name"),
)

sync_queue = sa.Table(
    "crab_sync_queue",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "source_id",
        sa.Integer,
        sa.ForeignKey("crab_sync_sources.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # The row's key columns as a jsonb object; NULL for a TRUNCATE of the whole table.
    sa.Column("key", JSONB, nullable=True),
    sa.Column("op", sa.Text, nullable=False),
    sa.Column(
        "enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column(
        "next_attempt_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.now(),
    ),
    # reconcile (no key): remove the chunks of rows gone or outside the filter
    sa.CheckConstraint(
        "op IN ('insert', 'update', 'delete', 'truncate', 'backfill', 'reconcile')", name="op"
    ),
    sa.Index(None, "source_id", "id"),
)
