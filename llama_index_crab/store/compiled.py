"""The SQL text of the statements a plain query runs, for psycopg without SQLAlchemy.

A cold `crab query` pays more for importing SQLAlchemy than for its search. Its statements
are still built in one place, the SQLAlchemy builders (``search``, ``collections``,
``migrate``): compiled by them on first use and kept in the cache, in a file named by a hash
of those modules, the migrations and the installed SQLAlchemy and pgvector, so any change
to them compiles the statements again. A statement is its SQL, with ``%(name)s``
parameters for what a query varies (``query``, ``k``, ``vector``, ...), plus the values of
its fixed parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .identity import Collection

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Statement", "ef_search_for", "for_collection", "shared"]

# SQL with %(name)s parameters, and the values of the fixed ones.
Statement = tuple[str, dict[str, Any]]
# PostgresVectorStore's defaults, which the plain query runs with.
EF_SEARCH = 64
ITERATIVE_SCAN: Final = "relaxed_order"
HNSW_MAX_EF_SEARCH = 1000  # pgvector refuses a larger hnsw.ef_search
_SOURCES = ("compiled.py", "search.py", "schema.py", "collections.py", "identity.py", "migrate.py")


def ef_search_for(fetch: int, ef_search: int = EF_SEARCH) -> int:
    """``hnsw.ef_search`` for fetching ``fetch`` rows: at least ``fetch``, at most pgvector's
    limit."""
    return min(max(ef_search, fetch), HNSW_MAX_EF_SEARCH)


def shared() -> dict[str, Any]:
    """Statements that need no collection: ``has_version_table``, ``versions``,
    ``collection`` (by ``name``), ``has_terms`` (``config``, ``text``), plus ``head``, the
    newest migration."""
    return _entry("shared", _compile_shared)


def for_collection(collection: Collection) -> dict[str, Any]:
    """A collection's search statements: ``custom_plans``, ``text`` (``query``, ``k``),
    ``settings`` (``ef_search``) and ``dense`` (``vector``, ``k``)."""
    key = (
        f"{collection.id} {collection.precision} {collection.dimension} "
        f"{collection.text_search_config}"
    )
    return _entry(key, lambda: _compile_collection(collection))


def _entry(key: str, compile_: Any) -> dict[str, Any]:
    path = _cache_file()
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    if isinstance(kept.get(key), dict):
        return kept[key]  # type: ignore[no-any-return]
    kept[key] = compile_()
    try:  # a cache that cannot be written costs a compile next time, nothing else
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(kept))
        partial.replace(path)
    except OSError:
        pass
    return kept[key]  # type: ignore[no-any-return]


def _cache_file() -> Path:
    """``sql/<hash>.json`` in the cache; the hash covers all the compiled output depends on."""
    from ..models.gguf import cache_root

    return cache_root() / "sql" / f"{_sources_digest()}.json"


@cache  # once per process: the sources do not change while it runs
def _sources_digest() -> str:
    from importlib.util import find_spec

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    versions = here.parent / "migrations" / "versions"
    if not versions.is_dir():
        versions = here.parents[1] / "migrations" / "versions"
    for path in sorted(versions.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    for package in ("sqlalchemy", "pgvector"):
        spec = find_spec(package)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is not None:
            st = origin.stat()
            digest.update(f"{origin} {st.st_size} {st.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _compiled(statement: sa.ClauseElement) -> Statement:
    from sqlalchemy.dialects.postgresql import psycopg

    compiled = statement.compile(dialect=psycopg.dialect())  # type: ignore[no-untyped-call]
    return str(compiled), dict(compiled.params)


def _compile_shared() -> dict[str, Any]:
    import sqlalchemy as sa

    from . import migrate, search
    from .collections import by_name
    from .schema import VERSION_TABLE

    return {
        "has_version_table": _compiled(
            sa.text(migrate.HAS_VERSION_TABLE).bindparams(name=VERSION_TABLE)
        ),
        "versions": _compiled(sa.text(migrate.VERSIONS)),
        "collection": _compiled(by_name("")),
        "has_terms": _compiled(sa.text(search.HAS_TERMS)),
        "head": migrate.head(),
    }


def _compile_collection(collection: Collection) -> dict[str, Any]:
    import numpy as np
    import sqlalchemy as sa

    from . import search

    predicate, _ = search.where(collection, None)
    vector = np.zeros(collection.dimension, dtype=np.float32)
    return {
        "custom_plans": _compiled(sa.select(search.CUSTOM_PLANS)),
        "text": _compiled(search.text(collection, "", 1, predicate)),
        "settings": _compiled(search.settings(EF_SEARCH, ITERATIVE_SCAN, None)),
        "dense": _compiled(search.dense(collection, vector, 1, predicate, exact=False)),
    }
