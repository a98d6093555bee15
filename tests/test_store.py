from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _pg import backends
from helpers import node, unit
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_crab.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    SchemaError,
    VectorValueError,
)
from llama_index_crab.store.collections import (
    EmbeddingIdentity,
    create_collection,
    list_collections,
)
from llama_index_crab.store.copy import ROWS_PER_COPY, payload_sizes
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

DIM = 8
IDENTITY = EmbeddingIdentity("test-model.gguf@abc123", DIM, "mean", "query: ", "passage: ")
MakeStore = Callable[..., PostgresVectorStore]


@pytest.fixture
def make_store(database_url: str, collection_name: str) -> Iterator[MakeStore]:
    stores: list[PostgresVectorStore] = []

    def make(
        identity: EmbeddingIdentity | None = IDENTITY, create: bool = True, **options: Any
    ) -> PostgresVectorStore:
        store = PostgresVectorStore(database_url, collection_name, identity, **options)
        if create and not stores:
            store.create_collection()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _count(engine: sa.Engine, table: str = "crab_nodes") -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def test_add_and_get_nodes_round_trip(make_store: MakeStore, rng: np.random.Generator) -> None:
    store = make_store()
    vector = unit(rng, DIM)
    added = node("n1", vector, "the text", {"a": 1, "nested": {"b": [1, 2]}}, doc="doc1")
    assert store.add([added]) == ["n1"]
    [got] = store.get_nodes(["n1"])
    assert got.get_content() == "the text"
    assert got.metadata == {"a": 1, "nested": {"b": [1, 2]}}
    assert got.ref_doc_id == "doc1"
    assert np.allclose(got.embedding or [], vector, atol=1e-6)


def test_query_returns_nearest_with_dot_product_similarity(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    store = make_store()
    vectors = np.array([unit(rng, DIM) for _ in range(40)])
    store.add([node(f"n{i}", v) for i, v in enumerate(vectors)])
    query = unit(rng, DIM)
    result = store.query(VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=5))
    dots = vectors @ query
    expected = [f"n{i}" for i in np.argsort(-dots)[:5]]
    assert result.ids == expected
    assert np.allclose(result.similarities or [], np.sort(dots)[::-1][:5], atol=1e-5)
    assert [n.node_id for n in result.nodes or []] == expected


def test_re_adding_a_node_replaces_it(make_store: MakeStore, rng: np.random.Generator) -> None:
    store = make_store()
    store.add([node("n1", unit(rng, DIM), "old", {"v": 1}), node("n2", unit(rng, DIM))])
    new_vector = unit(rng, DIM)
    store.add([node("n1", new_vector, "new", {"v": 2})])
    nodes = {n.node_id: n for n in store.get_nodes()}
    assert sorted(nodes) == ["n1", "n2"]
    assert nodes["n1"].get_content() == "new" and nodes["n1"].metadata == {"v": 2}
    result = store.query(VectorStoreQuery(query_embedding=new_vector.tolist(), similarity_top_k=1))
    assert result.ids == ["n1"]


def test_a_node_repeated_in_one_batch_keeps_its_last_version(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    store = make_store()
    store.add([node("n1", unit(rng, DIM), "first"), node("n1", unit(rng, DIM), "second")])
    assert [n.get_content() for n in store.get_nodes()] == ["second"]


def test_a_failing_batch_writes_nothing(
    make_store: MakeStore, rng: np.random.Generator, engine: sa.Engine
) -> None:
    store = make_store()
    store.add([node("keep", unit(rng, DIM), "kept")])
    batch = [node(f"n{i}", unit(rng, DIM)) for i in range(200)]
    batch.append(node("keep", unit(rng, DIM), "replaced"))
    batch.append(node("bad", unit(rng, DIM), "NUL \x00 is not valid in PostgreSQL text"))
    with pytest.raises(Exception, match="0x00"):
        store.add(batch)
    assert [(n.node_id, n.get_content()) for n in store.get_nodes()] == [("keep", "kept")]
    assert _count(engine, "crab_staging") == 0


def test_a_batch_of_many_payloads_is_still_all_or_nothing(
    make_store: MakeStore, rng: np.random.Generator, engine: sa.Engine
) -> None:
    """A big add goes out in several COPY payloads (encoded while the server upserts the
    previous one); a bad node in the last payload still rolls back every earlier one."""
    store = make_store()
    count = 5000
    sizes = payload_sizes(count)
    assert len(sizes) > 3 and sum(sizes) == count and max(sizes) <= ROWS_PER_COPY
    batch = [node(f"n{i}", unit(rng, DIM), f"text {i}") for i in range(count)]
    store.add(batch)
    assert len(store.get_nodes()) == count
    replaced = [node(f"n{i}", unit(rng, DIM), f"new {i}") for i in range(count)]
    replaced[-1] = node("n4999", unit(rng, DIM) * 2)  # in the last payload
    with pytest.raises(VectorValueError, match="'n4999'"):
        store.add(replaced)
    got = {n.node_id: n.get_content() for n in store.get_nodes()}
    assert got == {f"n{i}": f"text {i}" for i in range(count)}
    assert _count(engine, "crab_staging") == 0
    store.add(replaced[:-1])
    assert {n.get_content() for n in store.get_nodes([f"n{i}" for i in range(4998)])} == {
        f"new {i}" for i in range(4998)
    }


def test_an_invalid_vector_rejects_the_whole_batch(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    store = make_store()
    with pytest.raises(VectorValueError, match="'bad'"):
        store.add([node("good", unit(rng, DIM)), node("bad", unit(rng, DIM) * 2)])
    assert store.get_nodes() == []


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([float("nan")] + [0.0] * (DIM - 1), "NaN or infinite"),
        ([float("inf")] + [0.0] * (DIM - 1), "NaN or infinite"),
        ([1.0] + [0.0] * DIM, f"{DIM + 1} dimensions"),
        ([0.5] * DIM, "norm"),
        ([1.002] + [0.0] * (DIM - 1), "norm"),
    ],
)
def test_bad_vectors_are_refused(make_store: MakeStore, vector: list[float], message: str) -> None:
    store = make_store()
    with pytest.raises(VectorValueError, match=message):
        store.add([node("n1", vector)])
    with pytest.raises(VectorValueError, match=message):
        store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=1))


def test_norm_within_tolerance_is_accepted(make_store: MakeStore) -> None:
    store = make_store()
    assert store.add([node("n1", [1.0005] + [0.0] * (DIM - 1))]) == ["n1"]


def test_normalize_option_normalises(make_store: MakeStore) -> None:
    store = make_store(normalize=True)
    store.add([node("n1", [3.0, 4.0] + [0.0] * (DIM - 2))])
    [got] = store.get_nodes()
    assert np.allclose(got.embedding or [], [0.6, 0.8] + [0.0] * (DIM - 2), atol=1e-6)
    result = store.query(VectorStoreQuery(query_embedding=[6.0, 8.0] + [0.0] * (DIM - 2)))
    assert result.similarities == pytest.approx([1.0], abs=1e-5)


def test_a_node_without_embedding_is_refused(make_store: MakeStore) -> None:
    store = make_store()
    bare = node("n1", [1.0] + [0.0] * (DIM - 1))
    bare.embedding = None
    with pytest.raises(VectorValueError, match="no embedding"):
        store.add([bare])


@pytest.mark.parametrize(
    "other",
    [
        EmbeddingIdentity("other-model.gguf@ffff", DIM, "mean", "query: ", "passage: "),
        EmbeddingIdentity("test-model.gguf@abc123", 16, "mean", "query: ", "passage: "),
        EmbeddingIdentity("test-model.gguf@abc123", DIM, "cls", "query: ", "passage: "),
        EmbeddingIdentity("test-model.gguf@abc123", DIM, "mean", "", "passage: "),
    ],
)
def test_another_model_is_refused(
    make_store: MakeStore, rng: np.random.Generator, other: EmbeddingIdentity
) -> None:
    make_store().add([node("n1", unit(rng, DIM))])
    intruder = make_store(other)
    with pytest.raises(CollectionMismatchError, match="re-embed"):
        intruder.add([node("n2", unit(rng, other.dimension))])
    with pytest.raises(CollectionMismatchError):
        intruder.query(VectorStoreQuery(query_embedding=unit(rng, other.dimension).tolist()))


def test_collections_of_different_dimensions_share_the_database(
    database_url: str, collection_name: str, rng: np.random.Generator
) -> None:
    small = EmbeddingIdentity("small", 4, "mean")
    large = EmbeddingIdentity("large", 12, "cls")
    with (
        PostgresVectorStore(database_url, collection_name + "_s", small) as store_s,
        PostgresVectorStore(database_url, collection_name + "_l", large) as store_l,
    ):
        store_s.create_collection()
        store_l.create_collection(precision="halfvec")
        store_s.add([node("same-id", unit(rng, 4), "small")])
        store_l.add([node("same-id", unit(rng, 12), "large")])
        got_s = store_s.query(VectorStoreQuery(query_embedding=unit(rng, 4).tolist()))
        got_l = store_l.query(VectorStoreQuery(query_embedding=unit(rng, 12).tolist()))
        assert [n.get_content() for n in got_s.nodes or []] == ["small"]
        assert [n.get_content() for n in got_l.nodes or []] == ["large"]
        with pytest.raises(VectorValueError, match="stores 4-dim"):
            store_s.add([node("x", unit(rng, 12))])
    infos = {info.name: info for info in list_collections(database_url)}
    assert (infos[collection_name + "_l"].model, infos[collection_name + "_l"].dimension) == (
        "large",
        12,
    )
    assert infos[collection_name + "_s"].count == 1


def test_store_without_identity_uses_the_collections(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    make_store().add([node("n1", unit(rng, DIM))])
    anonymous = make_store(None)
    assert anonymous.query(VectorStoreQuery(query_embedding=unit(rng, DIM).tolist())).ids == ["n1"]


def test_delete_by_document_ids_filters_and_clear(
    make_store: MakeStore, rng: np.random.Generator
) -> None:
    store = make_store()
    store.add(
        [
            node("a1", unit(rng, DIM), doc="A", metadata={"k": 1}),
            node("a2", unit(rng, DIM), doc="A", metadata={"k": 2}),
            node("b1", unit(rng, DIM), doc="B", metadata={"k": 1}),
            node("b2", unit(rng, DIM), doc="B", metadata={"k": 2}),
            node("c1", unit(rng, DIM), doc="C", metadata={"k": 3}),
        ]
    )
    store.delete("A")
    assert [n.node_id for n in store.get_nodes()] == ["b1", "b2", "c1"]
    store.delete_nodes(["b1"])
    assert [n.node_id for n in store.get_nodes()] == ["b2", "c1"]
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="k", value=3)]))
    assert [n.node_id for n in store.get_nodes()] == ["b2"]
    store.delete_nodes()  # selects nothing, as in LlamaIndex's stores
    assert [n.node_id for n in store.get_nodes()] == ["b2"]
    store.clear()
    assert store.get_nodes() == []


def test_clear_leaves_other_collections_alone(
    database_url: str, collection_name: str, rng: np.random.Generator
) -> None:
    with (
        PostgresVectorStore(database_url, collection_name + "_1", IDENTITY) as one,
        PostgresVectorStore(database_url, collection_name + "_2", IDENTITY) as two,
    ):
        one.create_collection()
        two.create_collection()
        one.add([node("n", unit(rng, DIM))])
        two.add([node("n", unit(rng, DIM))])
        one.clear()
        assert one.get_nodes() == [] and len(two.get_nodes()) == 1


def test_missing_collection_is_an_error(database_url: str) -> None:
    with (
        PostgresVectorStore(database_url, "no-such-collection") as store,
        pytest.raises(CollectionNotFoundError, match="create_collection"),
    ):
        store.get_nodes()


def test_store_never_creates_collections_implicitly(make_store: MakeStore) -> None:
    store = make_store(create=False)
    with pytest.raises(CollectionNotFoundError):
        store.add([node("n1", [1.0] + [0.0] * (DIM - 1))])


def test_unmigrated_database_is_a_schema_error(empty_database: str) -> None:
    with (
        PostgresVectorStore(empty_database, "c") as store,
        pytest.raises(SchemaError, match="migrate"),
    ):
        store.get_nodes()


def test_collection_creation_validates_and_refuses_duplicates(
    database_url: str, collection_name: str
) -> None:
    create_collection(database_url, collection_name, IDENTITY)
    with pytest.raises(ValueError, match="exist_ok"):
        create_collection(database_url, collection_name, IDENTITY)
    assert create_collection(database_url, collection_name, IDENTITY, exist_ok=True).name
    other = EmbeddingIdentity("other", DIM, "mean")
    with pytest.raises(CollectionMismatchError):
        create_collection(database_url, collection_name, other, exist_ok=True)
    with pytest.raises(ValueError, match="text search configuration"):
        create_collection(database_url, collection_name + "x", IDENTITY, text_search_config="xx")
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingIdentity("m", 8, "max")


def test_async_variants(make_store: MakeStore, rng: np.random.Generator) -> None:
    store = make_store()
    vectors = [unit(rng, DIM) for _ in range(6)]

    async def scenario() -> None:
        batch = [node(f"n{i}", v, doc="D" if i < 2 else "E") for i, v in enumerate(vectors)]
        assert await store.async_add(batch) == [f"n{i}" for i in range(6)]
        result = await store.aquery(VectorStoreQuery(query_embedding=vectors[3].tolist()))
        assert result.ids == ["n3"]
        await store.adelete("D")
        await store.adelete_nodes(["n2"])
        assert [n.node_id for n in await store.aget_nodes()] == ["n3", "n4", "n5"]
        await store.aclear()
        assert await store.aget_nodes() == []
        await store.aclose()

    asyncio.run(scenario())


def test_async_add_rolls_back_on_failure(make_store: MakeStore, rng: np.random.Generator) -> None:
    store = make_store()
    batch = [node(f"n{i}", unit(rng, DIM)) for i in range(50)] + [node("x", unit(rng, DIM), "\x00")]

    async def scenario() -> None:
        with pytest.raises(Exception, match="0x00"):
            await store.async_add(batch)
        assert await store.aget_nodes() == []
        await store.aclose()

    asyncio.run(scenario())


def test_close_leaves_no_connections(
    database_url: str, collection_name: str, rng: np.random.Generator, pg_server: str
) -> None:
    watcher = sa.create_engine(to_url(pg_server), poolclass=sa.NullPool)
    database = to_url(database_url).database
    before = backends(watcher, database)
    store = PostgresVectorStore(database_url, collection_name, IDENTITY)
    store.create_collection()
    store.add([node("n1", unit(rng, DIM))])
    asyncio.run(store.aget_nodes())
    assert backends(watcher, database) > before
    store.close()
    assert backends(watcher, database, at_most=before) <= before
    watcher.dispose()


def test_an_engine_passed_in_stays_open(
    engine: sa.Engine, collection_name: str, rng: np.random.Generator
) -> None:
    with PostgresVectorStore(engine, collection_name, IDENTITY) as store:
        store.create_collection()
        store.add([node("n1", unit(rng, DIM))])
        assert store.client is engine
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT 1")) == 1


def test_hnsw_settings_are_local_to_the_query(make_store: MakeStore, engine: sa.Engine) -> None:
    store = make_store(ef_search=123)
    store.add([node("n1", [1.0] + [0.0] * (DIM - 1))])
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT '[1]'::vector"))  # loads pgvector in the session
        default = connection.scalar(sa.text("SHOW hnsw.ef_search"))
    store.query(VectorStoreQuery(query_embedding=[1.0] + [0.0] * (DIM - 1)))
    with store.client.connect() as connection:
        assert connection.scalar(sa.text("SHOW hnsw.ef_search")) == default
    assert default != "123"


def test_unsupported_mode_and_missing_inputs(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="svm"):
        store.query(VectorStoreQuery(query_embedding=[1.0] + [0.0] * (DIM - 1), mode="svm"))
    with pytest.raises(ValueError, match="query_embedding"):
        store.query(VectorStoreQuery(query_str="x"))
    with pytest.raises(ValueError, match="query_str"):
        store.query(VectorStoreQuery(query_embedding=[1.0] + [0.0] * (DIM - 1), mode="hybrid"))


def test_drop_collection_removes_nodes_and_index(
    database_url: str, collection_name: str, rng: np.random.Generator, engine: sa.Engine
) -> None:
    from llama_index_crab.store.collections import build_index, drop_collection, drop_index

    with PostgresVectorStore(database_url, collection_name, IDENTITY) as store:
        collection = store.create_collection(index=False)
        store.add([node("n1", unit(rng, DIM))])
        assert not {i.name: i for i in list_collections(engine)}[collection_name].indexed
        build_index(engine, collection_name)
        assert {i.name: i for i in list_collections(engine)}[collection_name].indexed
        drop_index(engine, collection_name)
        build_index(engine, collection_name)
        drop_collection(engine, collection_name)
    with engine.connect() as connection:
        index = connection.scalar(sa.text(f"SELECT to_regclass('{collection.index_name}')"))
        text = connection.scalar(sa.text(f"SELECT to_regclass('{collection.text_index_name}')"))
        rows = connection.scalar(
            sa.text("SELECT count(*) FROM crab_nodes WHERE collection_id = :c"),
            {"c": collection.id},
        )
    assert (index, text, rows) == (None, None, 0)
    assert collection_name not in {i.name for i in list_collections(engine)}
    with pytest.raises(CollectionNotFoundError):
        drop_collection(engine, collection_name)
