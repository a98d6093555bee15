"""Helpers for the reliability tests: exact snapshots of a collection and `crab` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from llama_index_crab.store.db import to_url

Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def snapshot(database_url: str, collection: str | None = None) -> Snapshot:
    """Every collection row and every node row (of ``collection``, else all), as text,
    sorted: two equal snapshots mean nothing in the data changed."""
    engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            collections = connection.execute(
                sa.text(
                    "SELECT id, name, model, dimension, pooling, precision "
                    "FROM crab_collections ORDER BY id"
                )
            ).all()
            where = "" if collection is None else "WHERE c.name = :name"
            nodes = connection.execute(
                sa.text(
                    "SELECT c.name, n.node_id, n.ref_doc_id, n.text, n.metadata::text, "
                    "n.embedding::text, n.text_search::text FROM crab_nodes n "
                    f"JOIN crab_collections c ON c.id = n.collection_id {where} "
                    "ORDER BY c.name, n.node_id"
                ),
                {"name": collection},
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in collections], [tuple(r) for r in nodes]


def crab(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the `crab` command in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "llama_index_crab.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def popen_crab(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `crab` in the background, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llama_index_crab.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
