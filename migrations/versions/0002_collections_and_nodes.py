"""Collections, nodes and the ingest staging table.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crab_collections",
        sa.Column("id", sa.Integer, sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="crab_collections_pkey"),
        sa.UniqueConstraint("name", name="crab_collections_name_key"),
        sa.CheckConstraint(
            "dimension BETWEEN 1 AND 16000", name="crab_collections_dimension_check"
        ),
        sa.CheckConstraint(
            "pooling IN ('mean', 'cls', 'last')", name="crab_collections_pooling_check"
        ),
        sa.CheckConstraint(
            "precision IN ('vector', 'halfvec')", name="crab_collections_precision_check"
        ),
        sa.CheckConstraint("hnsw_m BETWEEN 2 AND 100", name="crab_collections_hnsw_m_check"),
        sa.CheckConstraint(
            "hnsw_ef_construction BETWEEN 4 AND 1000",
            name="crab_collections_hnsw_ef_construction_check",
        ),
    )
    op.create_table(
        "crab_nodes",
        sa.Column("collection_id", sa.Integer, nullable=False),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("ref_doc_id", sa.Text, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("metadata", JSONB, nullable=False),
        sa.Column("embedding", VECTOR(), nullable=False),
        sa.Column("text_search", TSVECTOR, nullable=False),
        sa.PrimaryKeyConstraint("collection_id", "node_id", name="crab_nodes_pkey"),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["crab_collections.id"],
            name="crab_nodes_collection_id_fkey",
            ondelete="CASCADE",
        ),
        postgresql_with={"toast_tuple_target": 8160},
    )
    op.create_index(
        "crab_nodes_collection_id_ref_doc_id_idx", "crab_nodes", ["collection_id", "ref_doc_id"]
    )
    op.create_index(
        "crab_nodes_text_search_idx", "crab_nodes", ["text_search"], postgresql_using="gin"
    )
    op.create_index(
        "crab_nodes_metadata_idx",
        "crab_nodes",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "crab_staging",
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("ref_doc_id", sa.Text, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("metadata", JSONB, nullable=False),
        sa.Column("embedding", VECTOR(), nullable=False),
        prefixes=["UNLOGGED"],
        postgresql_with={"toast_tuple_target": 8160},
    )


def downgrade() -> None:
    op.drop_table("crab_staging")
    op.drop_table("crab_nodes")
    op.drop_table("crab_collections")
