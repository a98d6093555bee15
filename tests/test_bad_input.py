"""Bad input: every refusal is a clear error and leaves the rows exactly as they were."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import EMBEDDER_Q8, RERANKER_Q8
from _robust import crab, snapshot
from click.testing import CliRunner
from helpers import node, unit
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank
from llama_index_crab.cli import main
from llama_index_crab.errors import (
    CollectionNotFoundError,
    InputTooLongError,
    ModelError,
    TruncationWarning,
    VectorValueError,
)
from llama_index_crab.pipeline import Pipeline
from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.vector_store import PostgresVectorStore

DIM = 8
IDENTITY = EmbeddingIdentity("bad-input-model", DIM, "mean")

# Odd but valid: each must round-trip exactly and be findable by an exact filter.
ODD_TEXTS = {
    "control": "bell \x07 escape \x1b[31m tab\t cr\r form\x0c unit\x1f del\x7f",
    "emoji": "crab 🦀 family 👨‍👩‍👧 flag 🇫🇷 skin 👍🏽",
    "rtl": "שלום עולם — مرحبا بالعالم \u202eoverride\u202c",
    "zero-width": "zero\u200bwidth\u200djoiner\ufeffbom",
    "combining": "e\u0301 vs é, Å vs A\u030a",
    "sql": "'); DROP TABLE crab_nodes; -- $$ $1 %s :name",
    "json": '{"a": [1, {"b": null}]} $.a[0] @> \'{"x":1}\'',
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
}

# Keys that look like SQL, JSON path or jsonb operators; they are only ever bound values.
HOSTILE_KEYS = [
    "a'b",
    'a"b',
    "$.a",
    "$[0]",
    "a->>'b'",
    "a.b",
    "{a,b}",
    "a,b",
    "?|",
    "@>",
    "'; DROP TABLE crab_nodes; --",
    "(SELECT 1)",
    "%s",
    "%(x)s",
    ":name",
    "\\",
    "",
    "שלום",
    "🦀",
]


@pytest.fixture
def store(database_url: str, collection_name: str) -> Iterator[PostgresVectorStore]:
    rng = np.random.default_rng(3)
    with PostgresVectorStore(database_url, collection_name, IDENTITY) as store:
        store.create_collection()
        seed = [
            node(f"odd-{label}", unit(rng, DIM), text, {"label": label, "value": text}, doc="d1")
            for label, text in ODD_TEXTS.items()
        ]
        seed += [
            node(f"key-{i}", unit(rng, DIM), f"hostile key {i}", {key: i}, doc="d2")
            for i, key in enumerate(HOSTILE_KEYS)
        ]
        store.add(seed)
        yield store


def _bad(vector: list[float] | None = None, text: str = "x", **metadata: Any) -> TextNode:
    n = node("new-bad", vector if vector is not None else [1.0] + [0.0] * (DIM - 1), text)
    n.metadata = metadata
    return n


BAD_NODES: list[tuple[str, Callable[[], TextNode], type[Exception], str]] = [
    ("nan", lambda: _bad([math.nan] + [0.0] * (DIM - 1)), VectorValueError, "NaN"),
    ("inf", lambda: _bad([math.inf] + [0.0] * (DIM - 1)), VectorValueError, "infinite"),
    ("-inf", lambda: _bad([0.0] * (DIM - 1) + [-math.inf]), VectorValueError, "infinite"),
    ("zero norm", lambda: _bad([0.0] * DIM), VectorValueError, "norm 0"),
    ("norm 2", lambda: _bad([2.0] + [0.0] * (DIM - 1)), VectorValueError, "norm 2"),
    ("dimension 7", lambda: _bad([1.0] + [0.0] * (DIM - 2)), VectorValueError, "7 dimensions"),
    ("dimension 9", lambda: _bad([1.0] + [0.0] * DIM), VectorValueError, "9 dimensions"),
    ("no dimensions", lambda: _bad([]), VectorValueError, "0 dimensions"),
    ("NUL in text", lambda: _bad(text="a\x00b"), ValueError, "NUL"),
    ("NUL in value", lambda: _bad(k="a\x00b"), ValueError, "NUL"),
    ("NUL in key", lambda: _bad(**{"k\x00": 1}), ValueError, "NUL"),
    ("NUL in list", lambda: _bad(k=["ok", "\x00"]), ValueError, "NUL"),
    ("surrogate text", lambda: _bad(text="a\ud800b"), ValueError, "not valid Unicode"),
    ("surrogate value", lambda: _bad(k="\udcff"), ValueError, "not valid Unicode"),
    ("surrogate key", lambda: _bad(**{"\udc80": 1}), ValueError, "not valid Unicode"),
    ("NaN value", lambda: _bad(k=math.nan), ValueError, "nan"),
    ("Inf nested", lambda: _bad(k={"deep": [1, math.inf]}), ValueError, "inf"),
]


@pytest.mark.parametrize(
    ("maker", "error", "message"),
    [case[1:] for case in BAD_NODES],
    ids=[case[0] for case in BAD_NODES],
)
@pytest.mark.parametrize("way", ["add", "async_add"])
def test_bad_node_is_refused_and_the_batch_writes_nothing(
    store: PostgresVectorStore,
    database_url: str,
    way: str,
    maker: Callable[[], TextNode],
    error: type[Exception],
    message: str,
) -> None:
    rng = np.random.default_rng(5)
    before = snapshot(database_url)
    batch = [
        node("new-good", unit(rng, DIM), "fine"),
        node("odd-emoji", unit(rng, DIM), "would replace a seed row"),
        maker(),
    ]
    with pytest.raises(error, match=message):
        if way == "add":
            store.add(batch)
        else:
            asyncio.run(store.async_add(batch))
    assert snapshot(database_url) == before


def test_odd_text_and_metadata_round_trip_exactly(store: PostgresVectorStore) -> None:
    got = {n.node_id: n for n in store.get_nodes(filters=_eq("label", *ODD_TEXTS))}
    assert len(got) == len(ODD_TEXTS)
    for label, text in ODD_TEXTS.items():
        found = got[f"odd-{label}"]
        assert found.get_content() == text
        assert found.metadata == {"label": label, "value": text}


def _eq(key: str, *values: Any) -> MetadataFilters:
    if len(values) == 1:
        return MetadataFilters(filters=[MetadataFilter(key=key, value=values[0])])
    return MetadataFilters(filters=[MetadataFilter(key=key, value=list(values), operator="in")])


@pytest.mark.parametrize("label", list(ODD_TEXTS))
def test_odd_values_are_found_by_every_string_operator(
    store: PostgresVectorStore, database_url: str, label: str
) -> None:
    before = snapshot(database_url)
    text = ODD_TEXTS[label]
    for operator in ("==", "in", "contains", "text_match", "text_match_insensitive"):
        value: Any = [text] if operator == "in" else text
        filters = MetadataFilters(
            filters=[MetadataFilter(key="value", value=value, operator=operator)]
        )
        assert [n.node_id for n in store.get_nodes(filters=filters)] == [f"odd-{label}"]
    assert snapshot(database_url) == before


def test_sql_and_json_path_keys_are_plain_keys(
    store: PostgresVectorStore, database_url: str
) -> None:
    before = snapshot(database_url)
    query = [1.0] + [0.0] * (DIM - 1)
    for i, key in enumerate(HOSTILE_KEYS):
        assert [n.node_id for n in store.get_nodes(filters=_eq(key, i))] == [f"key-{i}"], key
        for operator in ("!=", ">=", "in", "nin", "is_empty"):
            value = None if operator == "is_empty" else [i] if "in" in operator else i
            filters = MetadataFilters(
                filters=[MetadataFilter(key=key, value=value, operator=operator)]
            )
            store.query(
                VectorStoreQuery(query_embedding=query, similarity_top_k=50, filters=filters)
            )
    assert snapshot(database_url) == before
    store.delete_nodes(
        filters=_eq(
            "'; DROP TABLE crab_nodes; --", HOSTILE_KEYS.index("'; DROP TABLE crab_nodes; --")
        )
    )
    after = snapshot(database_url)
    assert len(after[1]) == len(before[1]) - 1  # exactly that node, and the table is still there


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.add([node("n", [1.0] + [0.0] * (DIM - 1))]),
        lambda s: s.query(VectorStoreQuery(query_embedding=[1.0] + [0.0] * (DIM - 1))),
        lambda s: s.get_nodes(),
        lambda s: s.delete("d1"),
        lambda s: s.delete_nodes(["odd-rtl"]),
        lambda s: s.clear(),
        lambda s: asyncio.run(s.aquery(VectorStoreQuery(query_embedding=[1.0] + [0.0] * 7))),
        lambda s: asyncio.run(s.aclear()),
    ],
    ids=["add", "query", "get_nodes", "delete", "delete_nodes", "clear", "aquery", "aclear"],
)
def test_unknown_collection_is_refused_and_nothing_is_created(
    store: PostgresVectorStore, database_url: str, call: Callable[[PostgresVectorStore], Any]
) -> None:
    before = snapshot(database_url)
    for name in ("no-such-collection", store.collection_name.upper(), store.collection_name + " "):
        with (
            PostgresVectorStore(database_url, name, IDENTITY) as other,
            pytest.raises(CollectionNotFoundError, match="create_collection"),
        ):
            call(other)
    assert snapshot(database_url) == before


@pytest.mark.parametrize("k", [0, -1, -(10**9), True])
def test_absurd_small_top_k_is_a_value_error(
    store: PostgresVectorStore, database_url: str, k: int
) -> None:
    before = snapshot(database_url)
    for mode in ("default", "hybrid", "text_search"):
        query = VectorStoreQuery(
            query_embedding=[1.0] + [0.0] * (DIM - 1),
            query_str="crab",
            similarity_top_k=k,
            mode=VectorStoreQueryMode(mode),
        )
        with pytest.raises(ValueError, match="similarity_top_k must be a positive integer"):
            store.query(query)
    assert snapshot(database_url) == before


@pytest.mark.parametrize("field", ["sparse_top_k", "hybrid_top_k"])
def test_negative_sparse_and_hybrid_top_k_are_value_errors(
    store: PostgresVectorStore, field: str
) -> None:
    query = VectorStoreQuery(
        query_embedding=[1.0] + [0.0] * (DIM - 1), query_str="crab", mode="hybrid", **{field: -5}
    )
    with pytest.raises(ValueError, match=field):
        store.query(query)


@pytest.mark.parametrize("iterative_scan", ["relaxed_order", "off"])
@pytest.mark.parametrize("k", [1001, 10**7])
def test_huge_top_k_returns_every_row_again_and_again(
    database_url: str, collection_name: str, k: int, iterative_scan: str
) -> None:
    # The second query on a pooled connection used to fail: hnsw.ef_search stops at 1000.
    with PostgresVectorStore(
        database_url, collection_name, IDENTITY, iterative_scan=iterative_scan
    ) as store:
        store.create_collection()
        rng = np.random.default_rng(9)
        store.add([node(f"n{i}", unit(rng, DIM)) for i in range(30)])
        vector = unit(rng, DIM).tolist()
        exact = store.query(
            VectorStoreQuery(query_embedding=vector, similarity_top_k=30), exact=True
        )
        for _ in range(3):
            result = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=k))
            assert result.ids == exact.ids and len(result.ids or []) == 30


# -- the models, the pipeline and the CLI ---------------------------------------------------


@pytest.fixture(scope="module")
def q8() -> Iterator[LlamaCppEmbedding]:
    with LlamaCppEmbedding(EMBEDDER_Q8) as model:
        yield model


@pytest.fixture(scope="module")
def pipeline(q8: LlamaCppEmbedding, database_url: str) -> Iterator[Pipeline]:
    texts = [f"passage {i} about {topic}" for i, topic in enumerate(["crabs", "SQL", "🦀", "שלום"])]
    texts += list(ODD_TEXTS.values())
    store = PostgresVectorStore(database_url, f"bad_input_{uuid.uuid4().hex[:8]}", q8.identity())
    store.create_collection()
    nodes = [TextNode(id_=f"p{i}", text=t) for i, t in enumerate(texts)]
    for n, vector in zip(nodes, q8.embed(texts)):
        n.embedding = vector.tolist()
    store.add(nodes)
    yield Pipeline(q8, store, None, similarity_top_k=5, top_n=5)
    store.close()


@pytest.mark.parametrize("text", ["", " ", "\n\t  \u3000"])
def test_empty_texts_are_value_errors(q8: LlamaCppEmbedding, text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        q8.get_text_embedding(text)
    with pytest.raises(ValueError, match="empty"):
        q8.get_query_embedding(text)


def test_empty_search_changes_nothing(pipeline: Pipeline, database_url: str) -> None:
    before = snapshot(database_url)
    for text in ("", "   ", "\n"):
        with pytest.raises(ValueError, match="empty"):
            pipeline.search(text)
    assert snapshot(database_url) == before


def test_text_far_beyond_the_context(q8: LlamaCppEmbedding, pipeline: Pipeline) -> None:
    huge = "crab " * 50_000 + "🦀 שלום " * 5_000
    with pytest.warns(TruncationWarning):
        hits = pipeline.search(huge).hits
    assert len(hits) == 5
    with (
        LlamaCppEmbedding(EMBEDDER_Q8, truncate=False) as strict,
        pytest.raises(InputTooLongError, match="truncate"),
    ):
        strict.get_query_embedding(huge)


@pytest.mark.parametrize("k", [0, -1, -(10**7)])
def test_pipeline_search_refuses_small_top_k(pipeline: Pipeline, database_url: str, k: int) -> None:
    before = snapshot(database_url)
    with pytest.raises(ValueError, match="top_k and top_n must be ≥ 1"):
        pipeline.search("crabs", top_k=k)
    with pytest.raises(ValueError, match="top_k and top_n must be ≥ 1"):
        pipeline.search("crabs", top_n=k)
    assert snapshot(database_url) == before


def test_pipeline_search_with_huge_top_k_returns_everything(pipeline: Pipeline) -> None:
    for _ in range(2):
        hits = pipeline.search("crabs", top_k=10**7, top_n=10**7).hits
        assert len(hits) == 4 + len(ODD_TEXTS)


@pytest.fixture
def cli_env(pipeline: Pipeline, database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CRAB_DATABASE_URL", database_url)
    monkeypatch.setenv("CRAB_COLLECTION", pipeline.store.collection_name)
    return CliRunner()


@pytest.mark.parametrize("option", ["--top-k", "--top-n"])
@pytest.mark.parametrize("value", ["0", "-1", "-10000000", "ten"])
def test_cli_refuses_absurd_top_k_before_touching_anything(
    cli_env: CliRunner, database_url: str, option: str, value: str
) -> None:
    before = snapshot(database_url)
    result = cli_env.invoke(main, ["query", "crabs", "--no-rerank", option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output
    assert snapshot(database_url) == before


def test_cli_huge_top_k_returns_every_row(cli_env: CliRunner) -> None:
    args = ["query", "crabs", "--json", "--no-rerank", "--top-k", "10000000", "--top-n", "10000000"]
    for _ in range(2):
        result = cli_env.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)["results"]) == 4 + len(ODD_TEXTS)


def _cuts(model: Path) -> dict[str, bytes]:
    from gguf import GGUFReader

    data = model.read_bytes()
    end = max(t.data_offset + t.n_bytes for t in GGUFReader(model).tensors)
    return {
        "empty": b"",
        "magic only": data[:4],
        "header": data[:100],
        "metadata": data[:10_000],
        "half": data[: len(data) // 2],
        "last byte of weights": data[: end - 1],
        "text": b"not a model at all\n",
        "random": np.random.default_rng(0).bytes(5000),
    }


@pytest.mark.parametrize("model", [EMBEDDER_Q8, RERANKER_Q8], ids=["embedder", "reranker"])
def test_broken_model_files_are_model_errors(tmp_path: Path, model: Path) -> None:
    for name, content in _cuts(model).items():
        path = tmp_path / f"{name.replace(' ', '-')}.gguf"
        path.write_bytes(content)
        for load in (
            lambda p: LlamaCppEmbedding(p).embed(["x"]),
            lambda p: LlamaCppRerank(p).score("q", ["d"]),
        ):
            with pytest.raises(ModelError):
                load(path)


def test_swapped_models_are_refused_with_a_pointer() -> None:
    with pytest.raises(ModelError, match="LlamaCppRerank"):
        LlamaCppEmbedding(RERANKER_Q8).embed(["x"])
    with pytest.raises(ModelError, match="LlamaCppEmbedding"):
        LlamaCppRerank(EMBEDDER_Q8).score("q", ["d"])


def test_cli_broken_and_swapped_models_are_one_line_errors(
    cli_env: CliRunner, tmp_path: Path, database_url: str
) -> None:
    before = snapshot(database_url)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(EMBEDDER_Q8.read_bytes()[:10_000])
    commands = [
        ["embed", "x", "--embed-model", str(cut)],
        ["embed", "x", "--embed-model", str(RERANKER_Q8)],
        ["rerank", "q", "d", "--rerank-model", str(cut)],
        ["rerank", "q", "d", "--rerank-model", str(EMBEDDER_Q8)],
        ["query", "x", "--embed-model", str(RERANKER_Q8)],
        ["query", "x", "--rerank-model", str(EMBEDDER_Q8)],
        ["ingest", str(tmp_path), "--embed-model", str(cut)],
    ]
    for args in commands:
        result = cli_env.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
    assert snapshot(database_url) == before


def test_crab_ingest_of_odd_files(tmp_path: Path, database_url: str, collection_name: str) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    files = {
        "good.md": b"# Crabs\n\nCrabs walk sideways.\n",
        "invalid-utf8.txt": b"before \xff\xfe\xc3\x28 after \xed\xa0\x80 end\n",
        "nul.txt": b"nul \x00 inside \x00 text\n",
        "utf16.txt": "hello wide world".encode("utf-16"),
        "binary.txt": np.random.default_rng(1).bytes(4000),
        "control.md": b"bell \x07 esc \x1b[31m red \x1b[0m\n",
        "rtl-emoji.md": "\ufeffשלום 🦀 مرحبا \u202eevil.exe\n".encode(),
        "empty.txt": b"",
        "blank.txt": b" \n\t\n",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}

    first = crab("ingest", str(folder), env=env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    # NUL bytes or random bytes make a file binary (as git decides): skipped, not stored.
    assert "5 added, 0 updated, 0 unchanged, 2 empty skipped, 2 skipped" in first.stdout
    assert "nul.txt: skipped: binary content (NUL bytes)" in first.stderr
    _, rows = snapshot(database_url, collection_name)
    by_file = {Path(r[2]).name for r in rows}
    assert by_file == set(files) - {"empty.txt", "blank.txt", "nul.txt", "binary.txt"}
    assert all("\x00" not in r[3] for r in rows)
    text = {Path(r[2]).name: r[3] for r in rows}
    assert text["utf16.txt"].strip() == "hello wide world"  # decoded by its BOM
    assert text["good.md"].startswith("# Crabs")
    assert "שלום 🦀" in text["rtl-emoji.md"]

    again = crab("ingest", str(folder), env=env)
    assert again.returncode == 0, again.stderr
    assert "0 added, 0 updated, 5 unchanged, 2 empty skipped, 2 skipped" in again.stdout
    assert snapshot(database_url, collection_name)[1] == rows
