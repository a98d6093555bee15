"""Concurrent use: several `crab ingest` processes on overlapping documents while others
query. No duplicates, nothing lost, no half-written document ever visible, no deadlock."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8, ROOT
from _robust import crab, popen_crab
from helpers import node, unit
from llama_index.core.vector_stores.types import VectorStoreQuery
from test_cli import rows

from llama_index_crab import LlamaCppEmbedding
from llama_index_crab.ingest.local import ingest_paths
from llama_index_crab.store.collections import EmbeddingIdentity, create_collection
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
WRITERS = 3


def _consistent_rows(engine: sa.Engine, collection: str) -> list[tuple[str, str, int]]:
    """The collection's rows read in one statement, i.e. from one snapshot."""
    with engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT n.ref_doc_id, n.text, (n.metadata->>'chunk')::int FROM crab_nodes n "
                "JOIN crab_collections c ON c.id = n.collection_id WHERE c.name = :name"
            ),
            {"name": collection},
        ).all()
    return sorted((r[0], r[1], r[2]) for r in found)


def _in_threads(target: Callable[[], None], count: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a thread is stuck"
    return errors


def test_racing_create_collection_makes_one_collection(database_url: str) -> None:
    identity = EmbeddingIdentity("race-model", 8, "mean")
    for _ in range(3):
        name = f"race_{uuid.uuid4().hex[:8]}"
        errors = _in_threads(
            lambda name=name: create_collection(database_url, name, identity, exist_ok=True), 6
        )
        assert errors == []  # used to be UniqueViolation for all but one
        engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
        with engine.connect() as connection:
            count = connection.scalar(
                sa.text("SELECT count(*) FROM crab_collections WHERE name = :n"), {"n": name}
            )
        engine.dispose()
        assert count == 1


def test_threads_sharing_one_store_write_and_read(database_url: str, collection_name: str) -> None:
    identity = EmbeddingIdentity("threads-model", 8, "mean")
    with PostgresVectorStore(database_url, collection_name, identity) as store:
        store.create_collection()
        counter = iter(range(10_000))
        lock = threading.Lock()

        def work() -> None:
            rng = np.random.default_rng()
            for _ in range(20):
                with lock:
                    batch = [next(counter) for _ in range(5)]
                store.add([node(f"n{i}", unit(rng, 8), doc=f"d{i % 7}") for i in batch])
                result = store.query(VectorStoreQuery(query_embedding=unit(rng, 8).tolist()))
                assert len(result.ids or []) == 1

        assert _in_threads(work, 6) == []
        ids = sorted(n.node_id for n in store.get_nodes())
        assert ids == sorted(f"n{i}" for i in range(6 * 20 * 5))


@pytest.mark.slow
def test_overlapping_ingests_while_others_query(
    tmp_path: Path, database_url: str, collection_name: str
) -> None:
    pool = tmp_path / "docs"
    pool.mkdir()
    files = sorted(CORPUS.glob("*.md"), key=lambda p: (p.stat().st_size, p.name))[:15]
    for path in files:
        shutil.copy(path, pool / path.name)
    names = sorted(p.name for p in pool.iterdir())
    # Each writer gets 10 of the 15 documents; every document goes to two writers.
    shares = [names[0:10], names[5:15], names[10:15] + names[0:5]]

    with (
        LlamaCppEmbedding(EMBEDDER_Q8) as model,
        PostgresVectorStore(database_url, f"{collection_name}_ref", model.identity()) as ref,
    ):
        ref.create_collection()
        ingest_paths([pool], model, ref, chunk_size=64, batch_chunks=4)
    expected = rows(database_url, f"{collection_name}_ref")
    per_doc = {doc: [r for r in expected if r[0] == doc] for doc in {r[0] for r in expected}}
    assert len(per_doc) == 15

    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    done = threading.Event()
    problems: list[str] = []
    reads = {"snapshots": 0, "store queries": 0}
    engine = sa.create_engine(to_url(database_url), pool_size=2)

    def watch() -> None:  # no snapshot may show a document half old or half written
        while not done.is_set():
            found = _consistent_rows(engine, collection_name)
            reads["snapshots"] += 1
            if len(found) != len(set(found)):
                problems.append(f"duplicate chunks: {len(found) - len(set(found))}")
            for doc in {r[0] for r in found}:
                if [r for r in found if r[0] == doc] != per_doc.get(doc):
                    problems.append(f"partial document {doc}")
            time.sleep(0.05)

    def query() -> None:
        rng = np.random.default_rng()
        with PostgresVectorStore(database_url, collection_name) as store:
            while not done.is_set():
                try:
                    hits = store.query(
                        VectorStoreQuery(
                            query_embedding=unit(rng, 384).tolist(), similarity_top_k=10
                        )
                    )
                except Exception as exc:
                    if "no collection named" not in str(exc):  # not created yet
                        problems.append(f"query failed: {exc!r}")
                    time.sleep(0.05)
                    continue
                reads["store queries"] += 1
                if len(set(hits.ids or [])) != len(hits.ids or []):
                    problems.append("a query returned one node twice")
                time.sleep(0.05)  # leave the two cores to the writers

    readers = [threading.Thread(target=f) for f in (watch, query, query)]
    for reader in readers:
        reader.start()
    writers = [
        popen_crab(
            "ingest",
            *(str(pool / name) for name in share),
            "--batch-chunks",
            "4",
            "--chunk-size",
            "64",
            env=env,
            log=tmp_path / f"writer{i}.log",
        )
        for i, share in enumerate(shares)
    ]
    try:
        codes = [writer.wait(timeout=300) for writer in writers]
    finally:
        done.set()
        for writer in writers:
            writer.kill()
            writer.wait()
        for reader in readers:
            reader.join(timeout=120)
        engine.dispose()
    assert not any(reader.is_alive() for reader in readers), "a reader is stuck"
    logs = [(tmp_path / f"writer{i}.log").read_text() for i in range(WRITERS)]
    assert codes == [0] * WRITERS, logs
    assert problems == [], problems[:5]
    assert reads["snapshots"] > 10 and reads["store queries"] > 10, reads
    print(f"concurrent reads during ingest: {reads}")

    assert rows(database_url, collection_name) == expected  # nothing lost, nothing twice
    found = crab("query", "loops and conditions", "--json", "--no-rerank", env=env)
    assert found.returncode == 0 and len(json.loads(found.stdout)["results"]) == 5
    again = crab("ingest", str(pool), "--chunk-size", "64", env=env)
    assert again.returncode == 0 and "0 added, 0 updated, 15 unchanged" in again.stdout, (
        again.stdout + again.stderr
    )
