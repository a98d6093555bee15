from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from helpers import node
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_crab.store.collections import EmbeddingIdentity, build_index
from llama_index_crab.store.db import to_url
from llama_index_crab.store.search import DEFAULT_ALPHA
from llama_index_crab.store.vector_store import PostgresVectorStore

DIM = 32
ROWS = 3000
RARE_EVERY = 50  # 2% of the rows carry the rare tag


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, DIM))
    points = centers[rng.integers(0, 20, ROWS)] + 0.3 * rng.normal(size=(ROWS, DIM))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["vector", "halfvec"])
def indexed(
    request: pytest.FixtureRequest, database_url: str
) -> Iterator[tuple[PostgresVectorStore, np.ndarray]]:
    """A store with enough rows that the planner prefers the index to a scan."""
    precision = request.param
    engine = sa.create_engine(to_url(database_url))
    vectors = _data(3)
    identity = EmbeddingIdentity("m", DIM, "mean")
    store = PostgresVectorStore(engine, f"search_{precision}", identity)
    store.create_collection(precision=precision, index=False)
    store.add(
        [
            node(
                f"n{i}",
                v,
                text=f"row {i} " + ("walrus" if i % 100 == 0 else "plain"),
                metadata={"rare": i % RARE_EVERY == 0, "group": i % 7},
            )
            for i, v in enumerate(vectors)
        ]
    )
    build_index(engine, f"search_{precision}")
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE crab_nodes"))
    yield store, vectors
    store.close()
    engine.dispose()


def _plans(store: PostgresVectorStore, query: VectorStoreQuery) -> list[str]:
    """Run ``query``, then replay its transaction: its settings as they were sent, and
    EXPLAIN for every statement with an ORDER BY, with the same parameters."""
    seen: list[tuple[str, object]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    sa.event.listen(store.client, "before_cursor_execute", remember)
    try:
        store.query(query)
    finally:
        sa.event.remove(store.client, "before_cursor_execute", remember)
    plans = []
    with store.client.begin() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:
            for statement, parameters in seen:
                if "set_config" in statement:
                    cursor.execute(statement, parameters)
                elif "ORDER BY" in statement:
                    cursor.execute("EXPLAIN " + statement, parameters)
                    plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans


def _index_name(store: PostgresVectorStore) -> str:
    with store.client.connect() as connection:
        return store._load(connection).index_name


def test_explain_plain_query_uses_the_hnsw_index(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    [plan] = _plans(
        store, VectorStoreQuery(query_embedding=vectors[5].tolist(), similarity_top_k=10)
    )
    assert f"Index Scan using {_index_name(store)}" in plan, plan


def test_explain_filtered_query_uses_the_hnsw_index(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    # Matches 6/7 of the rows: more than exact_threshold, so the index path is taken.
    filters = MetadataFilters(filters=[MetadataFilter(key="group", value=3, operator="!=")])
    query = VectorStoreQuery(
        query_embedding=vectors[5].tolist(), similarity_top_k=10, filters=filters
    )
    probe, plan = _plans(store, query)
    assert "count(*) OVER" in probe or "WindowAgg" in probe
    assert f"Index Scan using {_index_name(store)}" in plan, plan
    assert "Filter" in plan


def test_selective_filter_takes_the_exact_path(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    filters = MetadataFilters(filters=[MetadataFilter(key="group", value=3)])  # 1/7 of rows
    query = VectorStoreQuery(
        query_embedding=vectors[5].tolist(), similarity_top_k=10, filters=filters
    )
    [plan] = _plans(store, query)
    assert _index_name(store) not in plan
    mask = np.arange(ROWS) % 7 == 3
    assert store.query(query).ids == _exact(vectors, vectors[5], 10, mask)


def test_explain_uses_the_precision_of_the_collection(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    [plan] = _plans(store, VectorStoreQuery(query_embedding=vectors[0].tolist()))
    with store.client.connect() as connection:
        precision = store._load(connection).precision
        definition = connection.scalar(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
            {"n": _index_name(store)},
        )
    assert f"{precision}_ip_ops" in definition
    assert f"::{precision}({DIM})" in plan


def _exact(
    vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None
) -> list[str]:
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return [f"n{i}" for i in np.argsort(-scores)[:k] if np.isfinite(scores[i])]


def test_recall_against_exact_search(indexed: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, vectors = indexed
    hits = 0
    for i in range(0, 400, 20):
        result = store.query(
            VectorStoreQuery(query_embedding=vectors[i].tolist(), similarity_top_k=10)
        )
        hits += len(set(result.ids or []) & set(_exact(vectors, vectors[i], 10)))
    assert hits / (20 * 10) >= 0.9


def test_selective_filter_still_returns_k_rows(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    mask = np.arange(ROWS) % RARE_EVERY == 0
    filters = MetadataFilters(filters=[MetadataFilter(key="rare", value=1, operator="==")])
    # JSON true is not the number 1: nothing matches, and the exact fallback says so.
    assert (
        store.query(VectorStoreQuery(query_embedding=vectors[1].tolist(), filters=filters)).ids
        == []
    )
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="group", value=[0], operator="in"),
            MetadataFilter(key="rare", value="x", operator="!="),
        ]
    )
    mask = np.arange(ROWS) % 7 == 0
    hits = 0
    for i in range(1, 200, 20):
        result = store.query(
            VectorStoreQuery(
                query_embedding=vectors[i].tolist(), similarity_top_k=10, filters=filters
            )
        )
        assert len(result.ids or []) == 10
        assert all(int(n.metadata["group"]) == 0 for n in result.nodes or [])
        hits += len(set(result.ids or []) & set(_exact(vectors, vectors[i], 10, mask)))
    assert hits / 100 >= 0.9


def test_exact_path_for_very_selective_filters(
    indexed: tuple[PostgresVectorStore, np.ndarray],
) -> None:
    store, vectors = indexed
    wanted = ["n7", "n1234", "n2999"]
    filters = MetadataFilters(
        filters=[MetadataFilter(key="group", value=[0, 1, 2, 3, 4, 5, 6], operator="in")]
    )
    result = store.query(
        VectorStoreQuery(
            query_embedding=vectors[7].tolist(),
            similarity_top_k=5,
            node_ids=wanted,
            filters=filters,
        )
    )
    assert sorted(result.ids or []) == sorted(wanted)
    result = store.query(
        VectorStoreQuery(query_embedding=vectors[7].tolist(), similarity_top_k=5), exact=True
    )
    assert result.ids == _exact(vectors, vectors[7], 5)


def test_text_search_mode(indexed: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, _ = indexed
    result = store.query(
        VectorStoreQuery(query_str="walrus", similarity_top_k=100, mode="text_search")
    )
    assert sorted(result.ids or [], key=lambda s: int(s[1:])) == [
        f"n{i}" for i in range(0, ROWS, 100)
    ]
    assert all(s > 0 for s in result.similarities or [])


def test_hybrid_fuses_ranks(indexed: tuple[PostgresVectorStore, np.ndarray]) -> None:
    store, vectors = indexed
    # n3 is the nearest vector but never says walrus; n0 says walrus.
    query = VectorStoreQuery(
        query_embedding=vectors[3].tolist(),
        query_str="walrus",
        similarity_top_k=5,
        mode="hybrid",
        alpha=0.5,
    )
    dense = store.query(VectorStoreQuery(query_embedding=vectors[3].tolist(), similarity_top_k=5))
    text = store.query(VectorStoreQuery(query_str="walrus", similarity_top_k=5, mode="text_search"))
    fused = store.query(query)
    assert (dense.ids or [])[0] == "n3"
    scores = {}
    for ids, weight in ((dense.ids or [], 0.5), (text.ids or [], 0.5)):
        for rank, node_id in enumerate(ids, start=1):
            scores[node_id] = scores.get(node_id, 0.0) + weight / (60 + rank)
    expected = sorted(scores, key=lambda k: (-scores[k], k))[:5]
    assert fused.ids == expected
    assert fused.similarities == pytest.approx([scores[k] for k in expected])
    assert set(fused.ids or []) & set(text.ids or []) and set(fused.ids or []) & set(
        dense.ids or []
    )


def test_fusion_uses_ranks_weighted_by_alpha() -> None:
    from llama_index_crab.store.search import fuse

    dense = [("a", "", {}, 0.9), ("b", "", {}, 0.8)]
    text = [("c", "", {}, 7.0), ("b", "", {}, 5.0)]
    assert [h[0] for h in fuse(dense, text, 3, 0.5)] == ["b", "a", "c"]
    assert [h[0] for h in fuse(dense, text, 2, 1.0)] == ["a", "b"]
    assert [h[0] for h in fuse(dense, text, 2, 0.0)] == ["c", "b"]
    assert fuse(dense, text, 1, 0.5)[0][3] == pytest.approx(0.5 / 62 + 0.5 / 62)
    assert fuse(dense, text, 1, None)[0][3] == pytest.approx(
        fuse(dense, text, 1, DEFAULT_ALPHA)[0][3]
    )
