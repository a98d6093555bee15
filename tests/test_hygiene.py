"""Resource hygiene: creating and closing stores and models again and again leaks no database
connection and no llama.cpp context."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8, RERANKER_Q8
from _pg import backends
from helpers import node, unit
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank
from llama_index_crab.errors import CollectionNotFoundError
from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

STORE_CYCLES = 1000
# Loading the q8 model with its two contexts and closing it takes ~30 ms, but the first decode
# on fresh contexts takes up to 0.7 s on a busy 2-core machine. So 300 cycles load the model
# and its contexts, and every 30th also decodes: a leaked model + contexts costs ~45 MB each.
# RSS settles after ~60 cycles (allocator arenas), so those are the warm-up.
EMBEDDER_CYCLES, EMBEDDER_WARM_UP = 300, 60
# A reranker load also dequantises its token tables (~0.9 s), hence fewer cycles.
RERANKER_CYCLES, RERANKER_WARM_UP = 12, 3
RERANKER_DECODE_EVERY = 4
RSS_GROWTH_LIMIT = 50 * 2**20
IDENTITY = EmbeddingIdentity("hygiene-model", 8, "mean")


@pytest.mark.slow
def test_store_cycles_leak_no_connections(
    database_url: str, collection_name: str, pg_server: str
) -> None:
    watcher = sa.create_engine(to_url(pg_server), poolclass=sa.NullPool)
    database = to_url(database_url).database
    with PostgresVectorStore(database_url, collection_name, IDENTITY) as store:
        store.create_collection()
        store.add([node("n1", unit(np.random.default_rng(0), 8))])
    before = backends(watcher, database)
    query = VectorStoreQuery(query_embedding=[1.0] + [0.0] * 7)
    started = time.perf_counter()
    for cycle in range(STORE_CYCLES):
        if cycle % 10 == 9:  # the error path must give its connection back too
            with (
                PostgresVectorStore(database_url, "no-such-collection") as store,
                pytest.raises(CollectionNotFoundError),
            ):
                store.get_nodes()
        elif cycle % 10 == 5:  # and so must the async engine
            store = PostgresVectorStore(database_url, collection_name, IDENTITY)
            assert len(asyncio.run(store.aquery(query)).ids or []) == 1
            store.close()
        else:
            with PostgresVectorStore(database_url, collection_name, IDENTITY) as store:
                assert len(store.query(query).ids or []) == 1
        if cycle % 250 == 249:
            # <=: a connection an earlier test left (a crab process exiting) may close
            # meanwhile; a leak shows as growth
            assert backends(watcher, database, at_most=before) <= before, f"after {cycle + 1}"
    print(f"{STORE_CYCLES} store cycles in {time.perf_counter() - started:.1f}s")
    assert backends(watcher, database, at_most=before) <= before
    watcher.dispose()


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
def test_embedding_model_cycles_leak_no_llama_context() -> None:
    def cycle(decode: bool) -> None:
        model = LlamaCppEmbedding(EMBEDDER_Q8)
        assert model.runner.info.n_embd == 384
        if decode:
            assert model.embed(["a crab walks sideways"]).shape == (1, 384)
        model.close()

    for i in range(EMBEDDER_WARM_UP):
        cycle(decode=i % 30 == 0)
    before = _rss()
    started = time.perf_counter()
    for i in range(EMBEDDER_CYCLES):
        cycle(decode=i % 30 == 0)
    growth = _rss() - before
    print(
        f"{EMBEDDER_CYCLES} embedder cycles in {time.perf_counter() - started:.1f}s, "
        f"RSS +{growth / 2**20:.1f} MB"
    )
    assert growth < RSS_GROWTH_LIMIT


@pytest.mark.slow
def test_reranker_cycles_leak_no_llama_context() -> None:
    def cycle(decode: bool) -> None:
        model = LlamaCppRerank(RERANKER_Q8)
        assert model.runner.pooling == "rank"
        if decode:
            assert len(model.score("crabs", ["a crab walks sideways", "tax law"])) == 2
        model.close()

    for i in range(RERANKER_WARM_UP):
        cycle(decode=i == 0)
    before = _rss()
    for i in range(RERANKER_CYCLES):
        cycle(decode=i % RERANKER_DECODE_EVERY == 0)
    growth = _rss() - before
    print(f"{RERANKER_CYCLES} reranker cycles, RSS +{growth / 2**20:.1f} MB")
    assert growth < RSS_GROWTH_LIMIT


def test_an_unclosed_model_is_freed_when_dropped() -> None:
    for _ in range(5):
        assert LlamaCppEmbedding(EMBEDDER_Q8).runner.info.n_embd == 384
    before = _rss()
    for _ in range(40):  # never closed: garbage collection must free the contexts
        assert LlamaCppEmbedding(EMBEDDER_Q8).runner.info.n_embd == 384
    assert _rss() - before < RSS_GROWTH_LIMIT
