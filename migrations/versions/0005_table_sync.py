"""Keep collections in sync with users' tables: the declared sources and the work queue.

``crab_sync_sources`` holds what ``crab vectorize`` declared (table, key, text and
metadata columns, the backfill's position); ``crab_sync_queue`` the row keys that the
sources' triggers (plain PL/pgSQL functions ``crab_sync_<id>``, made at run time by
:mod:`llama_index_crab.sync`) enqueue for the workers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crab_sync_sources",
        sa.Column("id", sa.Integer, sa.Identity(always=True), nullable=False),
        sa.Column("collection_id", sa.Integer, nullable=False),
        sa.Column("table_schema", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("key_columns", ARRAY(sa.Text), nullable=False),
        sa.Column("text_column", sa.Text, nullable=False),
        sa.Column("metadata_columns", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("embed_model", sa.Text, nullable=True),
        sa.Column("backfill_after", JSONB, nullable=True),
        sa.Column("backfilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="crab_sync_sources_pkey"),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["crab_collections.id"],
            name="crab_sync_sources_collection_id_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "collection_id",
            "table_schema",
            "table_name",
            name="crab_sync_sources_collection_id_key",
        ),
    )
    op.create_table(
        "crab_sync_queue",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("source_id", sa.Integer, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="crab_sync_queue_pkey"),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["crab_sync_sources.id"],
            name="crab_sync_queue_source_id_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "op IN ('insert', 'update', 'delete', 'truncate', 'backfill')",
            name="crab_sync_queue_op_check",
        ),
    )
    op.create_index("crab_sync_queue_source_id_id_idx", "crab_sync_queue", ["source_id", "id"])


def downgrade() -> None:
    # The triggers on users' tables call these functions: dropping them (CASCADE drops the
    # triggers) keeps those tables writable once the queue is gone. All of them, also any
    # whose source went without them.
    bind = op.get_bind()
    functions = bind.exec_driver_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = current_schema()::regnamespace "
        "AND p.proname ~ '^crab_sync_[0-9]+$' AND p.pronargs = 0"
    )
    for (function,) in functions.all():
        op.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")
    op.drop_table("crab_sync_queue")
    op.drop_table("crab_sync_sources")
