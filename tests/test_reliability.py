"""Faults: the database restarting mid-run, ingests killed at random points, a full disk and
unusable data directories. Each is reported clearly and leaves every document whole or absent."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8, ROOT
from _robust import popen_crab, snapshot
from click.testing import CliRunner
from helpers import node, unit
from test_cli import rows

from llama_index_crab import LlamaCppEmbedding
from llama_index_crab.cli import main
from llama_index_crab.errors import DatabaseUnavailableError
from llama_index_crab.ingest.local import ingest_paths
from llama_index_crab.server import postgres as server
from llama_index_crab.store import migrate
from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
DIM = 8
IDENTITY = EmbeddingIdentity("reliability-model", DIM, "mean")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 short documents; at --chunk-size 64 (none kept whole) they make about 48 chunks, 3
    per document."""
    folder = tmp_path_factory.mktemp("docs")
    files = sorted(CORPUS.glob("*.md"), key=lambda p: (p.stat().st_size, p.name))[:16]
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def expected(small_corpus: Path, database_url: str) -> list[tuple[str, str, int]]:
    """What one clean ingest of the corpus stores, made in-process."""
    collection = f"reliability_ref_{os.getpid()}"
    with (
        LlamaCppEmbedding(EMBEDDER_Q8) as model,
        PostgresVectorStore(database_url, collection, model.identity()) as store,
    ):
        store.create_collection()
        ingest_paths([small_corpus], model, store, chunk_size=64, batch_chunks=4, whole=False)
    found = rows(database_url, collection)
    assert len({r[0] for r in found}) == 16 and len(found) > 32
    return found


def assert_whole_or_absent(
    partial: list[tuple[str, str, int]], expected: list[tuple[str, str, int]]
) -> None:
    assert len(partial) == len(set(partial)), "a chunk is stored twice"
    for doc in {r[0] for r in partial}:
        assert [r for r in partial if r[0] == doc] == [r for r in expected if r[0] == doc], doc


def staging_rows(database_url: str) -> int:
    engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        count = int(connection.scalar(sa.text("SELECT count(*) FROM crab_staging")) or 0)
    engine.dispose()
    return count


# -- a server of our own, to stop and start ---------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[tuple[Path, str]]:
    """A dedicated embedded server to stop and start, shared by this module's restart tests
    (short path: Unix socket paths are limited to 107 bytes)."""
    parent = Path(tempfile.mkdtemp(prefix="crab-rel-"))
    pgdata = parent / "pgdata"
    try:
        url = server.start(pgdata)
        migrate.upgrade(url)
        yield pgdata, url
    finally:
        server.stop(pgdata)
        shutil.rmtree(parent, ignore_errors=True)


def _block_the_upsert(url: str, collection_id: int, node_id: str) -> sa.Connection:
    """An open transaction holding an uncommitted row that the next upsert will wait for."""
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    connection = engine.connect()
    connection.execute(
        sa.text(
            "INSERT INTO crab_nodes (collection_id, node_id, text, metadata, node_content, "
            "embedding, text_search) VALUES (:cid, :nid, 'blocker', '{}', '{}', :vector, '')"
        ),
        {"cid": collection_id, "nid": node_id, "vector": str([1.0] + [0.0] * (DIM - 1))},
    )
    return connection


def _waiting_upserts(url: str) -> int:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        found = connection.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'WITH staged%'"
            )
        )
    engine.dispose()
    return int(found or 0)


@pytest.mark.slow
def test_restart_mid_transaction_loses_nothing_and_the_store_reconnects(
    own_server: tuple[Path, str],
) -> None:
    pgdata, url = own_server
    assert server.start(pgdata) == url  # running, even if an earlier test failed mid-restart
    rng = np.random.default_rng(11)
    old = [node(f"doc-{i}", unit(rng, DIM), f"old {i}", doc="doc") for i in range(5)]
    new = [node(f"doc-{i}", unit(rng, DIM), f"new {i}", doc="doc") for i in range(10)]
    store = PostgresVectorStore(url, "restart", IDENTITY)
    collection = store.create_collection()
    store.replace_documents({"doc": old, "other": [node("other", unit(rng, DIM), doc="other")]})
    before = snapshot(url)

    blocker = _block_the_upsert(url, collection.id, "doc-9")
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            store.replace_documents({"doc": new})
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=replace)
    writer.start()
    # The writer has deleted the old chunks and staged the new ones, and now waits.
    wait_for(lambda: _waiting_upserts(url) == 1, 60, "the upsert to block")
    assert server.stop(pgdata)
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], DatabaseUnavailableError), errors
    assert "cannot connect" in str(errors[0])
    blocker.invalidate()  # its server went away; nothing to roll back
    blocker.close()

    with pytest.raises(DatabaseUnavailableError, match="server is running"):
        store.get_nodes()
    down = CliRunner().invoke(main, ["query", "x", "--no-rerank"], env={"CRAB_DATABASE_URL": url})
    assert down.exit_code == 1 and down.output.startswith("error: cannot connect"), down.output
    assert len(down.output.strip().splitlines()) == 1

    assert server.start(pgdata) == url
    assert snapshot(url) == before  # the old document, whole; nothing of the new one
    assert staging_rows(url) == 0
    store.replace_documents({"doc": new})  # the same store object simply reconnects
    assert sorted(n.get_content() for n in store.get_nodes() if n.ref_doc_id == "doc") == sorted(
        f"new {i}" for i in range(10)
    )
    store.close()


@pytest.mark.slow
def test_restart_during_crab_ingest_fails_clearly_and_a_rerun_completes(
    own_server: tuple[Path, str], small_corpus: Path, expected: list[tuple[str, str, int]]
) -> None:
    pgdata, url = own_server
    assert server.start(pgdata) == url  # running, even if an earlier test failed mid-restart
    env = {"CRAB_DATABASE_URL": url, "CRAB_COLLECTION": "victim"}
    args = ("ingest", str(small_corpus), "--batch-chunks", "4", "--chunk-size", "64", "--no-whole")
    log = pgdata.parent / "ingest.log"
    victim = popen_crab(*args, env=env, log=log)
    try:
        wait_for(lambda: rows(url, "victim") or victim.poll() is not None, 120, "a first commit")
        assert server.stop(pgdata)
        assert victim.wait(timeout=120) == 1
    finally:
        victim.kill()
        victim.wait()
    output = log.read_text()
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].startswith("error: cannot connect"), output

    server.start(pgdata)
    partial = rows(url, "victim")
    assert 0 < len(partial) < len(expected), "the restart should land mid-ingest"
    assert_whole_or_absent(partial, expected)
    rerun = popen_crab(*args, env=env, log=log)
    assert rerun.wait(timeout=240) == 0, log.read_text()
    assert rows(url, "victim") == expected


@pytest.mark.slow
def test_ingest_killed_at_random_points_keeps_whole_documents(
    small_corpus: Path,
    expected: list[tuple[str, str, int]],
    database_url: str,
    collection_name: str,
    tmp_path: Path,
) -> None:
    seed = random.randrange(1_000_000)
    print(f"kill schedule seed {seed}")
    chance = random.Random(seed)

    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    args = ("ingest", str(small_corpus), "--batch-chunks", "4", "--chunk-size", "64", "--no-whole")
    # The first kill lands during start-up; the others once the run has stored a random number
    # of chunks (within the first half of what is left, so the next runs have work too), plus
    # a random delay so they hit embedding, COPY or commit. A fast ingest may finish before its
    # signal comes; then the collection is emptied so the next run has work again, and runs go
    # on until three signals (SIGINT among them) landed mid-ingest.
    landed: list[signal.Signals] = []
    for number in range(16):
        mid_ingest = number > 0
        signum = signal.SIGINT if number % 3 == 1 else signal.SIGKILL
        if len(rows(database_url, collection_name)) == len(expected):
            with PostgresVectorStore(database_url, collection_name) as store:
                store.clear()
        start = len(rows(database_url, collection_name))
        target = chance.randint(start + 1, max(start + 1, (start + len(expected)) // 2))
        log = tmp_path / f"run{number}.log"
        victim = popen_crab(*args, env=env, log=log)
        try:
            if mid_ingest:
                wait_for(
                    lambda target=target, victim=victim: (
                        len(rows(database_url, collection_name)) >= target
                        or victim.poll() is not None
                    ),
                    120,
                    f"{target} chunks",
                )
                time.sleep(chance.uniform(0.0, 0.1))
            else:
                time.sleep(chance.uniform(0.2, 1.5))
            victim.send_signal(signum)
            code = victim.wait(timeout=60)
        finally:
            victim.kill()
            victim.wait()
        output = log.read_text()
        partial = rows(database_url, collection_name)
        assert_whole_or_absent(partial, expected)
        assert staging_rows(database_url) == 0
        finished = " unchanged; " in output  # the run ended before the signal came
        if signum == signal.SIGINT and not finished:
            assert code == 130 and "interrupted" in output and "Traceback" not in output, output
        if mid_ingest and not finished and start < len(partial) < len(expected):
            landed.append(signum)
        if len(landed) >= 3 and signal.SIGINT in landed:
            break
    assert len(landed) >= 3 and signal.SIGINT in landed, (
        f"landed mid-ingest: {landed} (seed {seed})"
    )

    final = popen_crab(*args, env=env, log=tmp_path / "final.log")
    assert final.wait(timeout=240) == 0, (tmp_path / "final.log").read_text()
    assert rows(database_url, collection_name) == expected  # exactly one copy of every chunk


# -- disks and directories ---------------------------------------------------------------------


@pytest.fixture
def tmpfs() -> Iterator[object]:
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix="crab-fs-"))
        opts = ",".join([f"size={size}", *options])
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        server.stop(path / "pgdata")
        subprocess.run(["umount", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _cli_db_start(pgdata: Path) -> object:
    env = {"CRAB_PGDATA": str(pgdata), "CRAB_DATABASE_URL": ""}
    return CliRunner().invoke(main, ["db", "start"], env=env)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("pgdata is a file", "Not a directory"),
        ("parent is a file", "File exists|Not a directory"),
        ("read-only disk", "Read-only file system"),
        ("disk too small", "No space left on device"),
    ],
)
def test_unusable_data_directory_is_a_clear_error(
    case: str, reason: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if case == "pgdata is a file":
        pgdata = tmp_path / "pgdata"
        pgdata.write_text("not a directory")
    elif case == "parent is a file":
        (tmp_path / "parent").write_text("not a directory")
        pgdata = tmp_path / "parent" / "pgdata"
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs")
        mount = request.getfixturevalue("tmpfs")
        disk = mount("4m", "ro") if case == "read-only disk" else mount("12m")
        pgdata = disk / "pgdata"
    with pytest.raises(DatabaseUnavailableError, match=reason) as raised:
        server.start(pgdata)
    assert "CRAB_PGDATA" in str(raised.value)
    result = _cli_db_start(pgdata)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the embedded PostgreSQL"), lines


@ROOT_ONLY
@pytest.mark.slow
def test_disk_full_is_reported_and_writes_nothing(tmpfs: object) -> None:
    disk = tmpfs("80m")  # type: ignore[operator]
    url = server.start(disk / "pgdata")
    migrate.upgrade(url)
    rng = np.random.default_rng(2)
    with PostgresVectorStore(url, "full", IDENTITY) as store:
        store.create_collection()
        store.add([node(f"a{i}", unit(rng, DIM)) for i in range(10)])
        before = snapshot(url)
        filler = disk / "filler"
        with filler.open("wb") as out:
            free = shutil.disk_usage(disk).free
            try:
                out.write(b"\0" * free)
            except OSError:
                pass
        batch = [node(f"b{i}", unit(rng, DIM), "x" * 2000) for i in range(300)]
        for _ in range(2):
            with pytest.raises(DatabaseUnavailableError, match="No space left on device"):
                store.add(batch)
        assert snapshot(url) == before

        result = CliRunner().invoke(
            main,
            ["ingest", str(CORPUS / "pass.md"), "--collection", "new"],
            env={"CRAB_DATABASE_URL": url},
        )
        assert result.exit_code == 1
        assert result.output.startswith("error: the database server at") and (
            "No space left on device" in result.output
        ), result.output
        assert "Traceback" not in result.output

        filler.unlink()
        store.add(batch)  # space again: the same store carries on
        assert len(snapshot(url)[1]) == 10 + len(batch)
