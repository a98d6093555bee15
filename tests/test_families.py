"""The model families users bring, against PyTorch references (tests/data/families/).

Small random models of each architecture, converted by llama.cpp's own converter and made by
benchmarks/tools/make_families.py, plus the real all-MiniLM-L6-v2 in the k-quant types made
here from the bundled bf16 file. A wrong tokenizer, pooling, prompt or pair format moves
the outputs far past these bars (random weights make every token count).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import EMBEDDER_BF16

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank

# The two long texts are cut at the context, as the references are.
pytestmark = pytest.mark.filterwarnings("ignore::llama_index_crab.errors.TruncationWarning")

DATA = Path(__file__).parent / "data" / "families"


def of_kind(kind: str) -> list[str]:
    """The families in DATA of this kind ("embedder" or "reranker"): each is a GGUF there
    with its reference beside it, so adding a family is adding its two files."""
    files = sorted(DATA.glob("*.gguf"))
    return [p.stem for p in files if json.loads(p.with_suffix(".json").read_text())["kind"] == kind]


EMBEDDERS, RERANKERS = of_kind("embedder"), of_kind("reranker")
# (type, min cosine, max |score difference|): the committed files hold the weights exactly
# (f16, token table q4_0); the others are made here with llama.cpp's quantize API. The
# 32-wide models cannot hold k-quants (rows must be 256 wide): q4_k_m falls back to
# q5_0/q5_1/q8_0 per tensor. Measured values are in the README ("Bring your model").
TYPES = [("f16", 0.9999, 0.002), ("q8_0", 0.997, 0.02), ("q4_k_m", 0.97, 0.08)]
# The real all-MiniLM-L6-v2 in the k-quant types (the bundled q8_0 has its own parity tests).
MINILM_TYPES = [("q6_k", 0.995), ("q5_k_m", 0.975), ("q4_k_m", 0.96)]


@cache
def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def quantize(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("quantized")
    made: dict[tuple[Path, str], Path] = {}

    def make(src: Path, kind: str) -> Path:
        if kind in ("f16", "bf16"):
            return src
        if (src, kind) not in made:
            import llama_cpp

            dst = folder / f"{src.stem}-{kind}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
            params.allow_requantize = True  # the token tables are q4_0 already
            params.nthread = 2
            assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0
            made[src, kind] = dst
        return made[src, kind]

    return make


def _embedder(path: Path, **kwargs: Any) -> LlamaCppEmbedding:
    # weights="file": each row measures the type it names, not a copy "auto" may choose
    return LlamaCppEmbedding(path, allow_empty=True, n_contexts=1, weights="file", **kwargs)


def _cosines(got: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
    want = np.array([r["vector"] for r in rows], dtype=np.float64)
    return np.einsum("ij,ij->i", got.astype(np.float64), want)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_embedder_tokens_match_pytorch(name: str) -> None:
    ref = reference(name)
    with _embedder(DATA / ref["gguf"]) as emb:
        for row in ref["texts"]:
            assert emb.tokenize(row["text"]) == row["ids"], row["text"]
        for row in ref["queries"]:
            assert emb.tokenize(row["text"], query=True) == row["ids"], row["text"]


@pytest.mark.parametrize("kind,bar,_", TYPES, ids=[t[0] for t in TYPES])
@pytest.mark.parametrize("name", EMBEDDERS)
def test_embedder_matches_pytorch(
    name: str, kind: str, bar: float, _: float, quantize: Any
) -> None:
    ref = reference(name)
    with _embedder(quantize(DATA / ref["gguf"], kind)) as emb:
        assert emb.resolved_pooling == ref["pooling"]
        texts = emb.get_text_embedding_batch([r["text"] for r in ref["texts"]])
        queries = [emb.get_query_embedding(r["text"]) for r in ref["queries"]]
    assert _cosines(np.array(texts), ref["texts"]).min() >= bar
    assert _cosines(np.array(queries), ref["queries"]).min() >= bar


@pytest.mark.parametrize("name", EMBEDDERS)
def test_family_prompts_come_from_the_gguf(name: str) -> None:
    ref = reference(name)
    emb = _embedder(DATA / ref["gguf"])
    assert (emb.prompts.query, emb.prompts.text) == (ref["query_prefix"], ref["text_prefix"])


def test_prompts_can_be_turned_off_or_replaced() -> None:
    ref = reference("multilingual-e5-tiny-random")
    with _embedder(DATA / ref["gguf"], query_prefix="", text_prefix="") as emb:
        assert (emb.prompts.query, emb.prompts.text) == ("", "")
        bare = np.array(emb.get_query_embedding("café recipes"))
    with _embedder(DATA / ref["gguf"], query_prefix="passage: ") as emb:
        swapped = np.array(emb.get_query_embedding("café recipes"))
        assert emb.prompts.text == "passage: "
    want = np.array(next(r["vector"] for r in ref["queries"] if r["text"] == "café recipes"))
    assert bare @ want < 0.999 and swapped @ want < 0.999


@pytest.mark.parametrize("kind,_,bar", TYPES, ids=[t[0] for t in TYPES])
@pytest.mark.parametrize("name", RERANKERS)
def test_reranker_matches_pytorch(
    name: str, kind: str, _: float, bar: float, quantize: Any
) -> None:
    ref = reference(name)
    rerank = LlamaCppRerank(quantize(DATA / ref["gguf"], kind), n_contexts=1, weights="file")
    by_query: dict[str, list[dict[str, Any]]] = {}
    for p in ref["pairs"]:
        by_query.setdefault(p["query"], []).append(p)
    for query, pairs in by_query.items():
        got = rerank.score(query, [p["document"] for p in pairs])
        assert np.abs(np.array(got) - [p["score"] for p in pairs]).max() <= bar, query
    rerank.close()


@pytest.mark.parametrize("name", RERANKERS)
def test_reranker_pair_tokens_match_pytorch(name: str) -> None:
    ref = reference(name)
    rerank = LlamaCppRerank(DATA / ref["gguf"], n_contexts=1)
    for p in ref["pairs"]:
        assert rerank.tokenize_pair(p["query"], p["document"]) == p["ids"], p["document"]
    rerank.close()


@pytest.mark.parametrize("kind,bar", MINILM_TYPES, ids=[t[0] for t in MINILM_TYPES])
def test_minilm_quantizations_match_pytorch(kind: str, bar: float, quantize: Any) -> None:
    ref = reference("all-minilm-l6-v2")
    # sentence-transformers cuts this model at 256 tokens; the package uses its 512 context
    with _embedder(quantize(EMBEDDER_BF16, kind), max_length=256) as emb:
        assert emb.prompts.family == "none"
        got = np.array(emb.get_text_embedding_batch([r["text"] for r in ref["texts"]]))
    assert _cosines(got, ref["texts"]).min() >= bar


def test_minilm_queries_get_no_prompt() -> None:
    with _embedder(EMBEDDER_BF16) as emb:
        query = "how do I catch an exception?"
        assert emb.get_query_embedding(query) == emb.get_text_embedding(query)


@pytest.mark.parametrize(
    "name,family",
    [
        ("bge-small-en-v1.5", "bge-en"),
        ("BGE Large EN v1.5", "bge-en"),
        ("bge-large-zh-v1.5", "bge-zh"),
        ("bge-m3", "bge-m3"),
        ("nomic-embed-text-v1.5", "nomic-embed"),
        ("multilingual-e5-base", "e5"),
        ("e5-small-v2", "e5"),
        ("multilingual-e5-large-instruct", "e5-instruct"),
        ("e5-mistral-7b-instruct", "e5-mistral"),
        ("Qwen3-Embedding-0.6B", "qwen3-embedding"),
        ("gte-Qwen2-1.5B-instruct", "gte-qwen"),
        ("mxbai-embed-large-v1", "mxbai-embed"),
        ("snowflake-arctic-embed-m-v1.5", "arctic-embed"),
        ("snowflake-arctic-embed-l-v2.0", "arctic-embed-v2"),
        ("embeddinggemma-300m", "embeddinggemma"),
        ("all-MiniLM-L6-v2", "none"),
        ("gte-base-en-v1.5", "none"),
    ],
)
def test_family_names_choose_their_prompts(name: str, family: str) -> None:
    from llama_index_crab.models.prompts import prompts_for

    assert prompts_for(name, "", "bert").family == family


def test_no_argument_gives_the_default_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    emb = LlamaCppEmbedding()
    assert Path(emb.model_path).name.startswith("all-MiniLM-L6-v2")


def test_reranker_without_model_says_how_to_pass_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_RERANK_MODEL", raising=False)
    with pytest.raises(TypeError, match=r"LlamaCppRerank\('.*\.gguf'\).*CRAB_RERANK_MODEL"):
        LlamaCppRerank()


def test_reranker_gguf_without_pooling_is_a_cross_encoder() -> None:
    from llama_index_crab.errors import PoolingError

    path = DATA / "bge-reranker-v2-m3-tiny-random.gguf"  # the converter writes no pooling
    with pytest.raises(PoolingError, match="LlamaCppRerank"):
        LlamaCppEmbedding(path)
    assert "without token types" in LlamaCppRerank(path).pair_format
