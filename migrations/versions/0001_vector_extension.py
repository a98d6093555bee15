"""Enable the pgvector extension (needs pgvector >= 0.8 on the server).

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from llama_index_crab.errors import PgvectorMissingError

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MINIMUM = (0, 8)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def upgrade() -> None:
    if context.is_offline_mode():
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return
    bind = op.get_bind()
    installed = bind.scalar(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    if installed is None:
        available = bind.scalar(
            sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        )
        if available is None:
            raise PgvectorMissingError(
                "the pgvector extension is not installed on this PostgreSQL server; install "
                "pgvector >= 0.8 (https://github.com/pgvector/pgvector#installation) or use the "
                "pgvector/pgvector Docker image, then migrate again"
            )
        role, database = bind.execute(sa.text("SELECT current_user, current_database()")).one()
        try:
            op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "42501":
                raise
            raise PgvectorMissingError(
                f"role {role!r} may not create the vector extension in database {database!r}; "
                f"ask a superuser to run CREATE EXTENSION vector in {database!r}, "
                "then migrate again"
            ) from exc
        installed = available
    if _version(installed) < MINIMUM:
        raise PgvectorMissingError(
            f"pgvector {installed} is too old, 0.8 or newer is needed; upgrade pgvector on the "
            "server and run ALTER EXTENSION vector UPDATE"
        )


def downgrade() -> None:
    # Other schemas in the database may use pgvector, so the extension stays.
    pass
