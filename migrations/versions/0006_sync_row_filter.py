"""Synced tables may feed their collection only some of their rows.

``crab_sync_sources.row_filter`` holds the declared conditions (a jsonb list, ``[]``: every
row) so that workers anywhere apply the same filter; a queue item ``reconcile`` (no key)
makes a worker remove the chunks of rows gone or outside the filter after a declaration
changed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHECK = "crab_sync_queue_op_check"


def upgrade() -> None:
    op.add_column(
        "crab_sync_sources",
        sa.Column("row_filter", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.drop_constraint(CHECK, "crab_sync_queue", type_="check")
    op.create_check_constraint(
        CHECK,
        "crab_sync_queue",
        "op IN ('insert', 'update', 'delete', 'truncate', 'backfill', 'reconcile')",
    )


def downgrade() -> None:
    # A reconcile item does what a truncate's does (remove the chunks of rows gone). The
    # triggers keep their filter until the table is declared again.
    op.execute("UPDATE crab_sync_queue SET op = 'truncate' WHERE op = 'reconcile'")
    op.drop_constraint(CHECK, "crab_sync_queue", type_="check")
    op.create_check_constraint(
        CHECK, "crab_sync_queue", "op IN ('insert', 'update', 'delete', 'truncate', 'backfill')"
    )
    op.drop_column("crab_sync_sources", "row_filter")
