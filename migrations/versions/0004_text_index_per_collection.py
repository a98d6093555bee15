"""One full-text (GIN) index per collection, partial like its HNSW index, instead of one
for the whole table: a term's index scan then reads only its collection's rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# As llama_index_crab.store.collections.text_index_ddl makes it for new collections.
CREATE = (
    "CREATE INDEX IF NOT EXISTS crab_nodes_text_{id} ON crab_nodes "
    "USING gin (text_search) WHERE collection_id = {id}"
)


def _collection_ids() -> list[int]:
    rows = op.get_bind().exec_driver_sql("SELECT id FROM crab_collections ORDER BY id")
    return [int(row[0]) for row in rows]


def upgrade() -> None:
    for collection_id in _collection_ids():
        op.execute(CREATE.format(id=collection_id))
    op.execute("DROP INDEX IF EXISTS crab_nodes_text_search_idx")


def downgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS crab_nodes_text_search_idx ON crab_nodes "
        "USING gin (text_search)"
    )
    for collection_id in _collection_ids():
        op.execute(f"DROP INDEX IF EXISTS crab_nodes_text_{collection_id}")
