"""Move LlamaIndex's ``_node_content`` out of the jsonb metadata into its own text column,
and let each ingest find its staged rows by transaction id (an index, not a table scan).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("crab_nodes", sa.Column("node_content", sa.Text, nullable=True))
    op.execute(
        "UPDATE crab_nodes SET node_content = coalesce(metadata->>'_node_content', '{}'), "
        "metadata = metadata - '_node_content'"
    )
    op.alter_column("crab_nodes", "node_content", nullable=False)
    # Empty outside an ingesting transaction.
    op.execute("DELETE FROM crab_staging")
    op.add_column("crab_staging", sa.Column("node_content", sa.Text, nullable=False))
    op.execute(
        "ALTER TABLE crab_staging ADD COLUMN xact xid8 NOT NULL DEFAULT pg_current_xact_id()"
    )
    op.create_index("crab_staging_xact_idx", "crab_staging", ["xact"])


def downgrade() -> None:
    op.drop_index("crab_staging_xact_idx", "crab_staging")
    op.drop_column("crab_staging", "xact")
    op.drop_column("crab_staging", "node_content")
    op.execute(
        "UPDATE crab_nodes SET metadata = metadata || "
        "jsonb_build_object('_node_content', node_content)"
    )
    op.drop_column("crab_nodes", "node_content")
