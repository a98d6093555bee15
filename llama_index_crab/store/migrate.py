"""Run the package's Alembic migrations, with the Alembic ``Config`` built in code.

The migrations keep their own version table (``crab_alembic_version``) so they can
live in a database beside the host application's own Alembic history.

Command line: ``python -m llama_index_crab.store.migrate {upgrade,downgrade,current,heads}
[--url URL]`` (the URL defaults to ``$CRAB_DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import CrabError, PgvectorMissingError, SchemaError
from .db import mask_url, transaction
from .identity import HNSW_INDEX_PREFIX, TEXT_INDEX_PREFIX
from .schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_head",
    "check",
    "check_pgvector",
    "current",
    "downgrade",
    "ensure_current",
    "head",
    "include_object",
    "upgrade",
]

# The revision the database is at: whether the version table exists, then its rows.
HAS_VERSION_TABLE = "SELECT to_regclass(:name)"
VERSIONS = f"SELECT version_num FROM {VERSION_TABLE}"


def migrations_dir() -> Path:
    """The migrations shipped in the wheel, or the repository's top-level ``migrations/``."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(
        f"the migrations directory was not found next to {here}; reinstall the package"
    )


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave our version table and the per-collection HNSW and full-text indexes (created
    at run time) out of autogenerate comparisons."""
    if type_ == "table":
        return name != VERSION_TABLE
    per_collection = (name or "").startswith((HNSW_INDEX_PREFIX, TEXT_INDEX_PREFIX))
    return not (type_ == "index" and reflected and per_collection)


def _config(connection: sa.Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def upgrade(url_or_engine: str | sa.URL | sa.Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    from alembic import command

    with transaction(url_or_engine) as connection:
        # Concurrent first runs (several `crab` commands started at once) take turns.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('crab migrate'))"))
        with _known_revision(revision):
            command.upgrade(_config(connection), revision)


def downgrade(url_or_engine: str | sa.URL | sa.Engine, revision: str = "base") -> None:
    """Migrate the database down to ``revision``; ``"base"`` drops every table of the package."""
    from alembic import command

    with transaction(url_or_engine) as connection, _known_revision(revision):
        command.downgrade(_config(connection), revision)


@contextmanager
def _known_revision(revision: str) -> Iterator[None]:
    """Turn Alembic's error for a revision it does not know into a :class:`SchemaError`."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise SchemaError(
            f"cannot migrate to revision {revision!r}: {' '.join(str(exc).split())}; use "
            f"'head' (now {head()!r}), 'base', or a revision of "
            "`python -m llama_index_crab.store.migrate heads`"
        ) from exc


def ensure_current(url_or_engine: str | sa.URL | sa.Engine) -> None:
    """Migrate to the newest revision unless the database is there already: one query
    (and no Alembic import) in the common case."""
    with transaction(url_or_engine) as connection:
        if current(connection) == head():
            return
    upgrade(url_or_engine)


def current(url_or_engine: str | sa.URL | sa.Engine | sa.Connection) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""
    if not isinstance(url_or_engine, sa.Connection):
        with transaction(url_or_engine) as connection:
            return current(connection)
    table = url_or_engine.scalar(sa.text(HAS_VERSION_TABLE), {"name": VERSION_TABLE})
    if table is None:
        return None
    rows = url_or_engine.scalars(sa.text(VERSIONS)).all()
    if len(rows) <= 1:
        return str(rows[0]) if rows else None
    from alembic.runtime.migration import MigrationContext  # several heads: Alembic says

    context = MigrationContext.configure(url_or_engine, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


_REVISION = re.compile(r"""^revision(?:\s*:[^=]+)?\s*=\s*["']([^"']+)["']""", re.M)
_DOWN_REVISION = re.compile(
    r"""^down_revision(?:\s*:[^=]+)?\s*=\s*(?:None|["']([^"']+)["'])""", re.M
)


@functools.cache
def head() -> str:
    """The newest revision shipped with the package: read from the migration files (the
    revision no other one follows), through Alembic only when they are not that simple."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        text = path.read_text()
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return alembic_head()
        revisions.add(revision.group(1))
        if down.group(1):
            followed.add(down.group(1))
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else alembic_head()


def alembic_head() -> str:
    """The newest revision as Alembic's script directory gives it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    revision = ScriptDirectory.from_config(config).get_current_head()
    if revision is None:
        raise SchemaError(f"no migrations found in {migrations_dir()}; reinstall the package")
    return revision


def check(connection: sa.Connection) -> None:
    """Raise :class:`SchemaError` unless the database is at the package's newest revision."""
    at, newest = current(connection), head()
    if at != newest:
        raise SchemaError(
            f"database {mask_url(connection.engine.url)} is at migration {at!r} but this "
            f"version of llama_index_crab needs {newest!r}; "
            "run `crab migrate`"
        )


PGVECTOR_MINIMUM = (0, 8)  # iterative index scans


def check_pgvector(connection: sa.Connection) -> str:
    """The pgvector version created in the database; :class:`PgvectorMissingError` naming the
    fix when it is not installed on the server, not created, or older than 0.8."""
    installed = connection.scalar(
        sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    )
    if installed is None:
        available = connection.scalar(
            sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        )
        if available is None:
            raise PgvectorMissingError(
                "the pgvector extension is not installed on this PostgreSQL server; install "
                "pgvector >= 0.8 or use the pgvector/pgvector Docker image, then run "
                "`crab migrate`"
            )
        raise PgvectorMissingError(
            f"pgvector {available} is available but not created in this database; "
            "run `crab migrate`"
        )
    if tuple(int(x) for x in str(installed).split(".")[:2]) < PGVECTOR_MINIMUM:
        raise PgvectorMissingError(
            f"pgvector {installed} is too old, 0.8 or newer is needed; upgrade pgvector on the "
            "server and run ALTER EXTENSION vector UPDATE"
        )
    return str(installed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_index_crab.store.migrate")
    parser.add_argument("action", choices=["upgrade", "downgrade", "current", "heads"])
    parser.add_argument(
        "revision", nargs="?", help="target revision (upgrade: head, downgrade: base)"
    )
    parser.add_argument("--url", default=os.environ.get("CRAB_DATABASE_URL"))
    args = parser.parse_args(argv)
    if args.action == "heads":
        print(head())
        return 0
    if not args.url:
        parser.error("give --url or set CRAB_DATABASE_URL")
    try:
        if args.action == "upgrade":
            upgrade(args.url, args.revision or "head")
        elif args.action == "downgrade":
            downgrade(args.url, args.revision or "base")
        print(current(args.url) or "base")
    except (CrabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
