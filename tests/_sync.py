"""What the table sync tests share: a user's table, a collection declared to follow it, and
helpers to change rows, drain the queue and read back the chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8

from llama_index_crab import LlamaCppEmbedding, PostgresVectorStore
from llama_index_crab.sync import Source, SourceStatus, Worker, WorkerReport, sync_status, vectorize

MODEL = str(EMBEDDER_Q8)


@pytest.fixture(scope="module")
def embedder() -> Iterator[LlamaCppEmbedding]:
    with LlamaCppEmbedding(EMBEDDER_Q8) as model:
        yield model


@pytest.fixture
def table(engine: sa.Engine) -> Iterator[str]:
    name = f"tickets_{uuid.uuid4().hex[:8]}"
    run(
        engine,
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text, title text, n int, status text)",
    )
    yield name
    run(engine, f"DROP TABLE IF EXISTS {name}")


def run(engine: sa.Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        result = connection.execute(sa.text(statement), params)
        return result.all() if result.returns_rows else []


def new_store(
    url: str, name: str, embedder: LlamaCppEmbedding, *, index: bool = True
) -> PostgresVectorStore:
    store = PostgresVectorStore(url, name, identity=embedder.identity())
    store.create_collection(exist_ok=True, index=index)
    return store


def docs(engine: sa.Engine, collection: str) -> dict[str, list[str]]:
    """``{document id: its chunks' texts}`` of ``collection``."""
    rows = run(
        engine,
        "SELECT n.ref_doc_id, n.text FROM crab_nodes n JOIN crab_collections c "
        "ON c.id = n.collection_id WHERE c.name = :c ORDER BY n.ref_doc_id, n.node_id",
        c=collection,
    )
    out: dict[str, list[str]] = {}
    for ref, text in rows:
        out.setdefault(ref, []).append(text)
    return out


def drain(url: str, collection: str, **options: Any) -> WorkerReport:
    worker = Worker(url, [collection], retry_seconds=0.05, **options)
    try:
        return worker.run(once=True)
    finally:
        worker.close()


@dataclass
class Synced:
    """The fixture's table and collection (empty, not declared yet)."""

    url: str
    engine: sa.Engine
    table: str
    collection: str
    store: PostgresVectorStore

    def sql(self, statement: str, **params: Any) -> list[Any]:
        return run(self.engine, statement, **params)

    def declare(self, **options: Any) -> Source:
        """``vectorize`` the table: text ``body``, the bundled test model, unless told."""
        return vectorize(
            self.store, self.table, **{"column": "body", "embed_model": MODEL, **options}
        )

    def drain(self, **options: Any) -> WorkerReport:
        return drain(self.url, self.collection, **options)

    def docs(self) -> dict[str, list[str]]:
        return docs(self.engine, self.collection)

    def status(self) -> SourceStatus:
        (found,) = sync_status(self.url, [self.collection])
        return found

    def queued_keys(self) -> list[Any]:
        """The keys waiting in the queue, in order (``None``: a whole-table item)."""
        rows = self.sql(
            "SELECT q.key FROM crab_sync_queue q JOIN crab_sync_sources s ON s.id = q.source_id "
            "JOIN crab_collections c ON c.id = s.collection_id WHERE c.name = :c ORDER BY q.id",
            c=self.collection,
        )
        return [k for (k,) in rows]


@pytest.fixture
def synced(
    database_url: str,
    engine: sa.Engine,
    table: str,
    collection_name: str,
    embedder: LlamaCppEmbedding,
) -> Iterator[Synced]:
    store = new_store(database_url, collection_name, embedder)
    yield Synced(database_url, engine, table, collection_name, store)
    store.close()
