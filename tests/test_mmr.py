"""MMR query mode: LlamaIndex's ``mmr_threshold`` semantics on candidates from the index."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from _models import EMBEDDER_Q8
from helpers import node
from llama_index.core import VectorStoreIndex
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_crab import LlamaCppEmbedding, PostgresVectorStore
from llama_index_crab.store import mmr as _mmr
from llama_index_crab.store.collections import EmbeddingIdentity

DIM = 24
TOPICS = 12
COPIES = 8  # near-duplicates per topic


def _corpus(seed: int = 11) -> np.ndarray:
    """TOPICS clusters of COPIES near-duplicates each, unit length."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(TOPICS, DIM))
    points = np.repeat(centers, COPIES, axis=0) + 0.08 * rng.normal(size=(TOPICS * COPIES, DIM))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corpus(database_url: str) -> Iterator[tuple[PostgresVectorStore, np.ndarray]]:
    """The corpus in the store (HNSW index) and the vectors as stored (float32)."""
    vectors = _corpus()
    store = PostgresVectorStore(database_url, "mmr_corpus", EmbeddingIdentity("m", DIM, "mean"))
    store.create_collection(exist_ok=True)
    store.clear()
    store.add(
        [
            node(
                f"t{i // COPIES:02d}-{i % COPIES}",
                v,
                metadata={"parity": "odd" if i % 2 else "even"},
            )
            for i, v in enumerate(vectors)
        ]
    )
    stored = {n.node_id: np.asarray(n.embedding) for n in store.get_nodes()}
    yield store, np.stack([stored[f"t{i // COPIES:02d}-{i % COPIES}"] for i in range(len(vectors))])
    store.close()


def _ids(n: int) -> list[str]:
    return [f"t{i // COPIES:02d}-{i % COPIES}" for i in range(n)]


def _query(seed: int = 5) -> np.ndarray:
    vectors = _corpus()
    rng = np.random.default_rng(seed)
    q = vectors[3 * COPIES] + 0.6 * vectors[7 * COPIES] + 0.05 * rng.normal(size=DIM)
    return q / np.linalg.norm(q)


def _llamaindex_mmr(
    query: np.ndarray, vectors: np.ndarray, ids: list[str], k: int, lam: float
) -> tuple[list[str], list[float]]:
    scores, picked = get_top_k_mmr_embeddings(
        query.tolist(), vectors.tolist(), similarity_top_k=k, embedding_ids=ids, mmr_threshold=lam
    )
    return list(picked), list(scores)


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
def test_select_matches_llamaindex_mmr(lam: float) -> None:
    rng = np.random.default_rng(int(lam * 10))
    vectors = _corpus(int(lam * 100))
    query = rng.normal(size=DIM)
    ids = _ids(len(vectors))
    ours = _mmr.select(query, vectors, 10, lam)
    expected_ids, expected_scores = _llamaindex_mmr(query, vectors, ids, 10, lam)
    assert [ids[i] for i, _ in ours] == expected_ids
    assert np.allclose([s for _, s in ours], expected_scores, atol=1e-9)


def test_mmr_differs_from_top_k_on_near_duplicates(
    corpus: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, _ = corpus
    query = _query().tolist()
    plain = store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=5))
    mmr = store.query(
        VectorStoreQuery(query_embedding=query, similarity_top_k=5, mode="mmr", mmr_threshold=0.5)
    )
    assert {i.split("-")[0] for i in plain.ids or []} == {"t03"}  # five copies of one topic
    assert {i.split("-")[0] for i in mmr.ids or []} >= {"t03", "t07"}
    assert (mmr.ids or [])[0] == (plain.ids or [])[0]


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9])
def test_mmr_matches_numpy_mmr_over_the_same_candidates(
    corpus: tuple[PostgresVectorStore, np.ndarray], lam: float
) -> None:
    store, stored = corpus
    query = _query()
    k = 6
    result = store.query(
        VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=k, mode="mmr"),
        mmr_threshold=lam,
    )
    # Candidates: the k × 4 nearest (the default prefetch factor), from the stored vectors.
    nearest = np.argsort(-(stored @ query), kind="stable")[: k * 4]
    ids = _ids(len(stored))
    expected_ids, expected_scores = _llamaindex_mmr(
        query, stored[nearest], [ids[i] for i in nearest], k, lam
    )
    assert result.ids == expected_ids
    assert np.allclose(result.similarities or [], expected_scores, atol=1e-6)


def test_threshold_one_is_plain_relevance(corpus: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, _ = corpus
    query = _query(9).tolist()
    plain = store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=7))
    mmr = store.query(
        VectorStoreQuery(query_embedding=query, similarity_top_k=7, mode="mmr"), mmr_threshold=1.0
    )
    assert mmr.ids == plain.ids
    assert np.allclose(mmr.similarities or [], plain.similarities or [], atol=1e-6)


def test_prefetch_k_bounds_the_candidates(corpus: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, _ = corpus
    query = _query().tolist()
    # Only the 5 nearest (all copies of topic 3) are candidates: no room for diversity.
    narrow = store.query(
        VectorStoreQuery(query_embedding=query, similarity_top_k=5, mode="mmr"), mmr_prefetch_k=5
    )
    wide = store.query(
        VectorStoreQuery(query_embedding=query, similarity_top_k=5, mode="mmr"),
        mmr_prefetch_factor=10,
    )
    assert {i.split("-")[0] for i in narrow.ids or []} == {"t03"}
    assert {i.split("-")[0] for i in wide.ids or []} != {"t03"}


def test_mmr_respects_filters(corpus: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, stored = corpus
    query = _query()
    even = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    result = store.query(
        VectorStoreQuery(
            query_embedding=query.tolist(), similarity_top_k=5, mode="mmr", filters=even
        ),
        mmr_threshold=0.4,
    )
    ids = _ids(len(stored))
    assert result.ids and all(int(i.split("-")[1]) % 2 == 0 for i in result.ids)
    rows = [i for i in range(len(stored)) if i % 2 == 0]
    nearest = sorted(rows, key=lambda i: -float(stored[i] @ query))[:20]
    expected, _ = _llamaindex_mmr(query, stored[nearest], [ids[i] for i in nearest], 5, 0.4)
    assert result.ids == expected


def test_async_mmr_equals_sync(corpus: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, _ = corpus
    query = VectorStoreQuery(query_embedding=_query().tolist(), similarity_top_k=4, mode="mmr")
    sync = store.query(query, mmr_threshold=0.3)

    async def run() -> list[str]:
        result = await store.aquery(query, mmr_threshold=0.3)
        await store.aclose()
        return result.ids or []

    assert asyncio.run(run()) == sync.ids


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mmr_threshold": 1.5}, "mmr_threshold"),
        ({"mmr_threshold": -0.1}, "mmr_threshold"),
        ({"mmr_prefetch_k": 0}, "mmr_prefetch_k"),
        ({"mmr_prefetch_factor": 0.5}, "mmr_prefetch_factor"),
        ({"mmr_prefetch_k": 10, "mmr_prefetch_factor": 2}, "not both"),
    ],
)
def test_bad_mmr_options_are_refused(
    corpus: tuple[PostgresVectorStore, np.ndarray], options: dict[str, float], message: str
) -> None:
    store, _ = corpus
    with pytest.raises(ValueError, match=message):
        store.query(VectorStoreQuery(query_embedding=_query().tolist(), mode="mmr"), **options)


SENTENCES = [
    "The cat sat on the mat.",
    "A cat was sitting on the mat.",
    "On the mat sat a cat.",
    "The cat is sitting on a rug.",
    "PostgreSQL stores table rows in pages of eight kilobytes.",
    "Dogs bark loudly at night.",
    "The stock market fell sharply on Monday.",
    "Fresh bread is baked every morning.",
]


def test_retriever_mmr_matches_llamaindex_in_memory(
    database_url: str, collection_name: str
) -> None:
    with LlamaCppEmbedding(str(EMBEDDER_Q8)) as embed:
        vectors = embed.get_text_embedding_batch(SENTENCES)
        nodes = [
            TextNode(id_=f"s{i}", text=text, embedding=vector)
            for i, (text, vector) in enumerate(zip(SENTENCES, vectors))
        ]
        with PostgresVectorStore(database_url, collection_name, embed.identity()) as store:
            store.create_collection()
            store.add(nodes)
            ours = VectorStoreIndex.from_vector_store(store, embed_model=embed)
            memory = VectorStoreIndex(
                [n.model_copy() for n in nodes], embed_model=embed
            )  # LlamaIndex's SimpleVectorStore

            def ids(index: VectorStoreIndex, **kwargs: object) -> list[str]:
                retriever = index.as_retriever(similarity_top_k=3, **kwargs)
                return [hit.node.node_id for hit in retriever.retrieve("a cat on the mat")]

            mmr = {"vector_store_query_mode": "mmr", "vector_store_kwargs": {"mmr_threshold": 0.5}}
            assert ids(ours, **mmr) == ids(memory, **mmr)
            assert ids(ours, vector_store_query_mode="mmr") == ids(
                memory, vector_store_query_mode="mmr"
            )
            assert ids(ours) == ids(memory)
            assert ids(ours, **mmr) != ids(ours)  # the near-duplicates make way
