"""Table sync on a real server: triggers, queue, workers (several at once, killed), backfill,
and a role that is not a superuser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _sync import MODEL, Synced, embedder, synced, table
from _sync import docs as _docs
from _sync import drain as _drain
from _sync import new_store as _store
from _sync import run as _sql

from llama_index_crab import LlamaCppEmbedding, PostgresVectorStore
from llama_index_crab.errors import StoreError
from llama_index_crab.store import migrate
from llama_index_crab.store.db import to_url
from llama_index_crab.sync import backfill, sync_status, unvectorize, vectorize

__all__ = ["embedder", "synced", "table"]  # the shared fixtures, used by name

REPO = Path(__file__).resolve().parents[1]


def test_insert_update_delete_truncate_reach_the_collection(synced: Synced) -> None:
    t = synced.table
    synced.sql(f"INSERT INTO {t} VALUES (1, 'the printer is on fire', 'fire', 1)")
    synced.declare(metadata=["title"])
    synced.drain()
    assert synced.docs() == {f"{t}:1": ["the printer is on fire"]}

    synced.sql(f"INSERT INTO {t} VALUES (2, 'wifi drops every hour', 'wifi', 1)")
    synced.sql(f"UPDATE {t} SET body = 'the printer is fixed' WHERE id = 1")
    synced.drain()
    assert synced.docs() == {
        f"{t}:1": ["the printer is fixed"],
        f"{t}:2": ["wifi drops every hour"],
    }
    synced.sql(f"DELETE FROM {t} WHERE id = 1")
    synced.drain()
    assert list(synced.docs()) == [f"{t}:2"]

    with synced.engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {t}"))
        connection.execute(sa.text(f"INSERT INTO {t} VALUES (3, 'new after truncate', 'x', 1)"))
    synced.drain()
    assert synced.docs() == {f"{t}:3": ["new after truncate"]}


def test_hits_carry_the_source_table_and_key(synced: Synced, embedder: LlamaCppEmbedding) -> None:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    synced.sql(f"INSERT INTO {synced.table} VALUES (7, 'reset my password', 'login', 1)")
    synced.declare(metadata=["title"])
    synced.drain()
    query = VectorStoreQuery(query_embedding=embedder.get_query_embedding("password"))
    hit = synced.store.query(query).nodes[0]  # type: ignore[index]
    assert hit.metadata["source_table"] == synced.table
    assert hit.metadata["source_key"] == {"id": 7}
    assert hit.metadata["title"] == "login"


def test_unchanged_text_is_not_embedded_again_and_empty_text_is_skipped(synced: Synced) -> None:
    t = synced.table
    synced.sql(f"INSERT INTO {t} VALUES (1, 'a', 't', 1), (2, NULL, 't', 1), (3, '', 't', 1)")
    synced.declare(metadata=["title"])
    first = synced.drain()
    assert (first.embedded, first.empty) == (1, 2)
    synced.sql(f"UPDATE {t} SET n = 2")  # not a watched column: nothing queued
    assert synced.status().queued == 0
    synced.sql(f"UPDATE {t} SET title = 'u' WHERE id = 1")  # metadata only
    synced.sql(f"UPDATE {t} SET body = body || '' WHERE id = 1")  # same text
    again = synced.drain()
    assert (again.embedded, again.reused) == (0, 1)
    synced.sql(f"UPDATE {t} SET body = 'filled' WHERE id = 2")
    assert synced.drain().embedded == 1
    assert set(synced.docs()) == {f"{t}:1", f"{t}:2"}


def test_a_table_without_primary_key_needs_a_unique_key(synced: Synced) -> None:
    name = f"nokey_{uuid.uuid4().hex[:8]}"
    synced.sql(f'CREATE TABLE {name} ("Code" text, body text)')
    store = synced.store
    try:
        with pytest.raises(ValueError, match="no primary key; name the column"):
            vectorize(store, name, column="body")
        with pytest.raises(ValueError, match="not covered by a unique index"):
            vectorize(store, name, column="body", key=["Code"])
        synced.sql(f'CREATE UNIQUE INDEX ON {name} ("Code")')
        synced.sql(f"INSERT INTO {name} VALUES ('a''b', 'quoted key')")
        vectorize(store, name, column="body", key=["Code"], embed_model=MODEL)
        synced.drain()
        assert synced.docs() == {f"{name}:a'b": ["quoted key"]}
    finally:
        synced.sql(f"DROP TABLE {name}")


def test_a_dropped_watched_column_is_a_recorded_error_not_a_crash(synced: Synced) -> None:
    t = synced.table
    synced.declare(column="title")
    synced.sql(f"INSERT INTO {t} VALUES (1, 'b', 't', 1)")
    synced.sql(f"ALTER TABLE {t} RENAME COLUMN title TO heading")
    report = synced.drain()
    assert report.failed >= 1 and report.done == 0
    status = synced.status()
    assert status.queued == 1 and status.failing == 1
    assert "has no column 'title'" in (status.source_error or "")
    assert "crab vectorize" in status.errors[0][1]
    synced.declare(column="heading")
    time.sleep(0.2)  # past the retry delay
    synced.drain()
    assert synced.docs() == {f"{t}:1": ["t"]}
    assert unvectorize(synced.store, t)
    synced.sql(f"INSERT INTO {t} VALUES (2, 'b', 't', 1)")  # no trigger left
    assert sync_status(synced.url, [synced.collection]) == []


def test_dropping_the_collection_removes_the_triggers(synced: Synced) -> None:
    from llama_index_crab import drop_collection

    synced.declare()
    drop_collection(synced.url, synced.collection)
    triggers = f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{synced.table}'::regclass"
    assert synced.sql(triggers)[0][0] == 0
    synced.sql(f"INSERT INTO {synced.table} VALUES (1, 'b', 't', 1)")


WORKER = """
import sys
from llama_index_crab.sync import Worker
url, collection, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(Worker(url, [collection], batch_rows=batch).run(once=True).done)
"""


def _worker(url: str, collection: str, batch: int = 256) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, collection, str(batch)],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
    )


def _fill(engine: sa.Engine, table: str, rows: int) -> None:
    _sql(
        engine,
        f"INSERT INTO {table} SELECT i, 'row ' || i || ' text', 't' || (i % 7), i "
        "FROM generate_series(1, :rows) AS i",
        rows=rows,
    )


def _queued(engine: sa.Engine) -> int:
    return int(_sql(engine, "SELECT count(*) FROM crab_sync_queue")[0][0])


def test_three_workers_at_once_write_every_row_exactly_once(
    database_url: str,
    engine: sa.Engine,
    table: str,
    collection_name: str,
    embedder: LlamaCppEmbedding,
) -> None:
    rows = 10_000
    _fill(engine, table, rows)
    # No HNSW index: what is tested is the queue, and the graph insert would double the time.
    store = _store(database_url, collection_name, embedder, index=False)
    source = vectorize(store, table, column="body", embed_model=MODEL)
    workers = [_worker(database_url, collection_name, batch=500) for _ in range(3)]
    done = [int(w.communicate(timeout=300)[0]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0]
    assert sum(done) == rows and min(done) > 0  # all three took part, no item twice
    counts = _sql(
        engine,
        "SELECT count(*), count(DISTINCT ref_doc_id) FROM crab_nodes n JOIN crab_collections c "
        "ON c.id = n.collection_id WHERE c.name = :c",
        c=collection_name,
    )[0]
    assert tuple(counts) == (rows, rows)
    assert sync_status(database_url, [collection_name])[0].queued == 0
    assert source.id


def test_a_worker_killed_mid_batch_then_restarted_gives_the_same_rows(
    database_url: str, engine: sa.Engine, table: str, embedder: LlamaCppEmbedding
) -> None:
    rows = 1000
    _fill(engine, table, rows)
    killed, whole = f"killed_{uuid.uuid4().hex[:8]}", f"whole_{uuid.uuid4().hex[:8]}"
    stores = {n: _store(database_url, n, embedder, index=False) for n in (killed, whole)}
    vectorize(stores[whole], table, column="body", metadata=["title"], embed_model=MODEL)
    _drain(database_url, whole, batch_rows=100)
    vectorize(stores[killed], table, column="body", metadata=["title"], embed_model=MODEL)
    worker = _worker(database_url, killed, batch=100)
    deadline = time.monotonic() + 120
    while _count(engine, killed) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(worker.pid, signal.SIGKILL)  # while it embeds or writes its next batch
    worker.wait()
    assert 0 < _count(engine, killed) < rows  # killed mid-way, the batches so far kept
    _drain(database_url, killed, batch_rows=100)
    assert _rows(engine, killed) == _rows(engine, whole)


def _count(engine: sa.Engine, collection: str) -> int:
    return int(
        _sql(
            engine,
            "SELECT count(*) FROM crab_nodes n JOIN crab_collections c "
            "ON c.id = n.collection_id WHERE c.name = :c",
            c=collection,
        )[0][0]
    )


def _rows(engine: sa.Engine, collection: str) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in _sql(
            engine,
            "SELECT n.node_id, n.ref_doc_id, n.text, n.metadata FROM crab_nodes n "
            "JOIN crab_collections c ON c.id = n.collection_id WHERE c.name = :c "
            "ORDER BY n.node_id",
            c=collection,
        )
    ]


BACKFILL = """
import sys
from llama_index_crab import PostgresVectorStore
from llama_index_crab.sync import vectorize
store = PostgresVectorStore(sys.argv[1], sys.argv[2])
vectorize(store, sys.argv[3], column="body", backfill_rows=50)
"""


def test_a_backfill_killed_midway_resumes_without_gaps_or_duplicates(
    database_url: str,
    engine: sa.Engine,
    table: str,
    collection_name: str,
    embedder: LlamaCppEmbedding,
) -> None:
    rows = 20_000
    _fill(engine, table, rows)
    store = _store(database_url, collection_name, embedder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", BACKFILL, database_url, collection_name, table], env=env
    )
    deadline = time.monotonic() + 60
    while _queued(engine) < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    partial = _queued(engine)
    assert 0 < partial < rows
    source = vectorize(store, table, column="body", backfill_rows=None)
    assert source.backfilled_at is None and source.backfill_after is not None
    assert backfill(database_url, source, batch_rows=5000) == rows - partial
    keys = _sql(engine, "SELECT count(*), count(DISTINCT key) FROM crab_sync_queue")[0]
    assert tuple(keys) == (rows, rows)
    _sql(engine, "DELETE FROM crab_sync_queue")


@pytest.fixture
def managed(pg_server: str) -> Iterator[tuple[str, str, sa.Engine]]:
    """A database as a managed service gives it: pgvector installed by the provider, an
    owner role that is not a superuser, and an application role with table rights only."""
    from _pg import new_database

    owner, app = f"crab_owner_{uuid.uuid4().hex[:6]}", f"crab_app_{uuid.uuid4().hex[:6]}"
    server = sa.create_engine(
        to_url(pg_server), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )
    with server.connect() as connection:
        for role in (owner, app):
            connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
    try:
        with new_database(pg_server) as url:
            admin = sa.create_engine(
                to_url(url), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
            )
            with admin.connect() as connection:
                connection.execute(sa.text("CREATE EXTENSION vector"))
                connection.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {owner}"))
                connection.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {app}"))
            try:
                yield (
                    to_url(url).set(username=owner, password="pw").render_as_string(False),
                    to_url(url).set(username=app, password="pw").render_as_string(False),
                    admin,
                )
            finally:
                with admin.connect() as connection:
                    for role in (owner, app):
                        connection.execute(sa.text(f"DROP OWNED BY {role}"))
                admin.dispose()
    finally:
        with server.connect() as connection:
            for role in (owner, app):
                connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        server.dispose()


def test_a_role_that_is_not_superuser_with_only_pgvector(
    managed: tuple[str, str, sa.Engine], embedder: LlamaCppEmbedding
) -> None:
    owner_url, app_url, _ = managed
    migrate.upgrade(owner_url)
    owner = sa.create_engine(to_url(owner_url), poolclass=sa.NullPool)
    app = sa.create_engine(to_url(app_url), poolclass=sa.NullPool)
    app_role = to_url(app_url).username
    try:
        assert not _sql(owner, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]
        _sql(owner, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
        _sql(owner, f"GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {app_role}")
        _sql(owner, f"GRANT SELECT ON crab_alembic_version, crab_collections TO {app_role}")
        _sql(app, "INSERT INTO notes VALUES (1, 'written before the sync')")
        store = _store(owner_url, "notes", embedder)
        vectorize(store, "notes", column="body", embed_model=MODEL)
        _sql(app, "INSERT INTO notes VALUES (2, 'written by the application role')")
        _drain(owner_url, "notes")
        assert set(_docs(owner, "notes")) == {"notes:1", "notes:2"}

        app_store = PostgresVectorStore(app_url, "notes")
        with pytest.raises(StoreError, match=f"GRANT TRIGGER ON TABLE public.notes TO {app_role}"):
            vectorize(app_store, "notes", column="body")
        app_store.close()
        store.close()
    finally:
        owner.dispose()
        app.dispose()


def test_the_three_commands(
    database_url: str, engine: sa.Engine, table: str, collection_name: str
) -> None:
    from click.testing import CliRunner

    from llama_index_crab.cli import main

    env = {"CRAB_DATABASE_URL": database_url, "CRAB_EMBED_MODEL": MODEL}
    run = CliRunner().invoke
    _sql(engine, f"INSERT INTO {table} VALUES (1, 'the printer jams', 'printer', 1)")
    declare = ["vectorize", table, "--column", "body", "--metadata", "title,n"]
    declared = run(main, [*declare, "-c", collection_name], env=env)
    assert declared.exit_code == 0, declared.output
    assert "1 existing rows queued" in declared.output
    status = run(main, ["vectorize", "--status", "-c", collection_name], env=env)
    assert "1 queued, 0 failing" in status.output
    worked = run(main, ["worker", "--once", "-c", collection_name], env=env)
    assert worked.exit_code == 0, worked.output
    assert "1 rows embedded" in worked.output
    found = run(main, ["query", "printer", "-c", collection_name, "--json"], env=env)
    assert f'"source": "{table}:1"' in found.output
    dropped = run(main, ["vectorize", table, "-c", collection_name, "--drop"], env=env)
    assert dropped.exit_code == 0 and "no longer kept in sync" in dropped.output
    usage = run(main, ["vectorize", table], env=env)
    assert usage.exit_code == 2 and "--column COLUMN" in usage.output
