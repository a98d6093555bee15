"""Edge cases LlamaIndex users meet: deleting nothing, closing inside an event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from _pg import backends
from helpers import node, unit
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

DIM = 8
IDENTITY = EmbeddingIdentity("edges.gguf@0", DIM, "mean")


@pytest.fixture
def store(database_url: str, collection_name: str) -> Iterator[PostgresVectorStore]:
    store = PostgresVectorStore(database_url, collection_name, IDENTITY)
    store.create_collection()
    rng = np.random.default_rng(3)
    store.add([node(f"n{i}", unit(rng, DIM), metadata={"k": i}) for i in range(4)])
    yield store
    store.close()


def _ids(store: PostgresVectorStore) -> list[str]:
    return [n.node_id for n in store.get_nodes()]


@pytest.mark.parametrize(
    "selection",
    [
        {},
        {"node_ids": None, "filters": None},
        {"node_ids": []},
        {"filters": MetadataFilters(filters=[])},
        {"node_ids": [], "filters": MetadataFilters(filters=[MetadataFilter(key="k", value=1)])},
    ],
    ids=["no-arguments", "both-none", "empty-ids", "empty-filters", "empty-ids-with-filter"],
)
def test_delete_nodes_with_nothing_selected_deletes_nothing(
    store: PostgresVectorStore, selection: dict[str, object]
) -> None:
    store.delete_nodes(**selection)  # type: ignore[arg-type]
    assert _ids(store) == ["n0", "n1", "n2", "n3"]
    asyncio.run(store.adelete_nodes(**selection))  # type: ignore[arg-type]
    assert _ids(store) == ["n0", "n1", "n2", "n3"]


def test_delete_nodes_still_deletes_what_is_selected(store: PostgresVectorStore) -> None:
    store.delete_nodes(["n0"])
    only_two = MetadataFilters(filters=[MetadataFilter(key="k", value=2)])
    asyncio.run(store.adelete_nodes(filters=only_two))
    assert _ids(store) == ["n1", "n3"]


def test_close_inside_a_running_event_loop(
    store: PostgresVectorStore, database_url: str, pg_server: str
) -> None:
    watcher = sa.create_engine(to_url(pg_server), poolclass=sa.NullPool)
    database = to_url(database_url).database
    store.close()
    before = backends(watcher, database, at_most=0, within=1)  # once the store's have left
    query = VectorStoreQuery(query_embedding=[1.0] + [0.0] * (DIM - 1), similarity_top_k=2)

    async def scenario() -> tuple[int, int, list[str]]:
        await store.aquery(query)
        opened = backends(watcher, database)
        store.close()  # the sync close, called from a coroutine
        closed = backends(watcher, database, at_most=before)
        again = await store.aquery(query)  # the store still works: a new pool opens
        await store.aclose()
        return opened, closed, again.ids or []

    opened, closed, ids = asyncio.run(scenario())
    assert opened > before
    assert closed <= before
    assert len(ids) == 2
    assert backends(watcher, database, at_most=before) <= before
    watcher.dispose()


def test_close_twice_and_outside_a_loop(store: PostgresVectorStore) -> None:
    asyncio.run(store.aget_nodes())
    store.close()
    store.close()
    assert _ids(store) == ["n0", "n1", "n2", "n3"]
