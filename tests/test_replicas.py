"""Read replicas on two real servers: an embedded primary and a pg_basebackup -R standby."""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from _models import ROOT
from _pg import new_database
from _replication import Replication, replication
from click.testing import CliRunner
from helpers import node, unit
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_crab import EmbeddingIdentity, PostgresVectorStore, ReplicaWarning
from llama_index_crab.cli import main
from llama_index_crab.store import migrate

pytestmark = pytest.mark.slow
IDENTITY = EmbeddingIdentity("replica-test", 8, "mean")
CORPUS = ROOT / "examples" / "corpus" / "python-reference"
LENIENT = {"replica_max_lag": 3600.0}  # a paused replica must not count as lagging here


@pytest.fixture(scope="module")
def servers() -> Iterator[Replication]:
    yield from replication()


@pytest.fixture(scope="module")
def urls(servers: Replication) -> Iterator[tuple[str, str]]:
    """(primary, replica) URLs of one migrated database."""
    with new_database(servers.primary_server) as primary:
        migrate.upgrade(primary)
        servers.wait_replayed()
        yield primary, servers.on(servers.replica_server, sa.make_url(primary).database or "")


@pytest.fixture
def where_ran() -> Iterator[list[bool]]:
    """``pg_is_in_recovery()`` on the connection of every statement that reads crab_nodes."""
    seen: list[bool] = []

    def record(conn: sa.Connection, _c: Any, statement: str, *_: Any) -> None:
        raw = conn.connection.dbapi_connection
        if "FROM crab_nodes" in statement and isinstance(raw, psycopg.Connection):
            row = raw.execute("SELECT pg_is_in_recovery()").fetchone()
            seen.append(bool(row and row[0]))

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


def _store(urls: tuple[str, str], **fields: Any) -> PostgresVectorStore:
    primary, replica = urls
    name = f"test_{uuid.uuid4().hex[:12]}"
    store = PostgresVectorStore(primary, name, IDENTITY, read_urls=[replica], **fields)
    store.create_collection()
    return store


def _vector(seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed), IDENTITY.dimension)


def _ids(store: PostgresVectorStore, seed: int = 0, **kwargs: Any) -> list[str]:
    query = VectorStoreQuery(query_embedding=list(_vector(seed)), similarity_top_k=10)
    return list(store.query(query, **kwargs).ids or [])


def test_queries_and_get_nodes_run_on_the_replica(
    urls: tuple[str, str], servers: Replication, where_ran: list[bool]
) -> None:
    with _store(urls, **LENIENT) as store:
        store.add([node("a", _vector(1))])
        servers.wait_replayed()
        where_ran.clear()
        assert _ids(store) == ["a"]
        assert [n.node_id for n in store.get_nodes(["a"])] == ["a"]
        assert where_ran and all(where_ran)


def test_reads_see_the_replica_state_not_the_primary(
    urls: tuple[str, str], servers: Replication
) -> None:
    with _store(urls, **LENIENT) as store:
        store.add([node("a", _vector(1))])
        servers.wait_replayed()
        servers.pause_replay()
        try:
            store.add([node("b", _vector(2))])
            assert _ids(store) == ["a"]  # b is on the primary only
            assert [n.node_id for n in asyncio.run(store.aget_nodes(["a", "b"]))] == ["a"]
        finally:
            servers.resume_replay()


def test_read_your_writes_waits_for_the_replica(
    urls: tuple[str, str], servers: Replication, where_ran: list[bool]
) -> None:
    with _store(urls, read_your_writes=True, read_your_writes_timeout=60.0, **LENIENT) as store:
        servers.pause_replay()
        resume = threading.Timer(0.3, servers.resume_replay)
        try:
            store.add([node("fresh", _vector(3))])
            where_ran.clear()
            resume.start()
            assert _ids(store, seed=3)[0] == "fresh"
        finally:
            resume.join()
            servers.resume_replay()
        assert where_ran and all(where_ran)


def test_read_your_writes_times_out_to_the_primary(
    urls: tuple[str, str], servers: Replication, where_ran: list[bool]
) -> None:
    with _store(urls, read_your_writes=True, read_your_writes_timeout=0.2, **LENIENT) as store:
        servers.pause_replay()
        try:
            store.add([node("fresh", _vector(4))])
            where_ran.clear()
            assert _ids(store, seed=4)[0] == "fresh"
            assert where_ran and not any(where_ran)
        finally:
            servers.resume_replay()


def test_a_lagging_replica_is_skipped_with_one_warning(
    urls: tuple[str, str], servers: Replication, where_ran: list[bool]
) -> None:
    with _store(urls, replica_max_lag=0.001) as store:
        store.add([node("a", _vector(5))])
        servers.wait_replayed()
        servers.pause_replay()
        try:
            store.add([node("b", _vector(6))])
            servers.wait_received()
            where_ran.clear()
            with pytest.warns(ReplicaWarning, match="lags") as warned:
                assert sorted(_ids(store)) == ["a", "b"]
                assert sorted(_ids(store)) == ["a", "b"]
            assert len(warned) == 1
            assert where_ran and not any(where_ran)
        finally:
            servers.resume_replay()


def test_a_stopped_replica_falls_back_to_the_primary_with_one_warning(
    urls: tuple[str, str], servers: Replication
) -> None:
    with _store(urls, **LENIENT) as store:
        store.add([node("a", _vector(7))])
        servers.stop_replica()
        try:
            with pytest.warns(ReplicaWarning, match="skipping read replica") as warned:
                assert _ids(store) == ["a"]
                assert [n.node_id for n in store.get_nodes()] == ["a"]
                query = VectorStoreQuery(query_embedding=list(_vector(0)), similarity_top_k=1)
                assert asyncio.run(store.aquery(query)).ids == ["a"]
            assert len(warned) == 1
        finally:
            servers.start_replica()


def test_read_urls_must_be_a_list(urls: tuple[str, str]) -> None:
    with pytest.raises(TypeError, match="list of URLs"):
        PostgresVectorStore(urls[0], "x", IDENTITY, read_urls=urls[1])  # type: ignore[arg-type]


def test_cli_query_reads_from_read_url_while_the_primary_is_down(
    urls: tuple[str, str], servers: Replication, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = urls
    monkeypatch.setenv("CRAB_DATABASE_URL", primary)
    monkeypatch.setenv("CRAB_COLLECTION", f"test_{uuid.uuid4().hex[:12]}")
    for topic in ("with", "yield"):
        shutil.copy(CORPUS / f"{topic}.md", tmp_path / f"{topic}.md")
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(tmp_path)]).exit_code == 0
    servers.wait_replayed()
    search = ["query", "the with statement", "--no-rerank", "--top-n", "3"]
    servers.stop_primary()
    try:
        without = runner.invoke(main, search)
        with_option = runner.invoke(main, [*search, "--read-url", replica])
        monkeypatch.setenv("CRAB_READ_URLS", replica)
        from_env = runner.invoke(main, search)
    finally:
        servers.start_primary()
    assert without.exit_code == 1 and "connection" in without.output
    assert with_option.exit_code == 0, with_option.output
    assert "with.md" in with_option.output
    assert from_env.exit_code == 0 and "with.md" in from_env.output
