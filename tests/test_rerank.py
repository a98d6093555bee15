from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from _models import EMBEDDER_Q8, RERANKER_Q8, bf16_copy, reference, shared
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llama_index_crab import LlamaCppRerank, PoolingError

F16 = "minilm-toy-reranker-f16.gguf"


def pairs() -> list[tuple[str, dict]]:
    return [(q["query"], d) for q in reference("rerank.json")["queries"] for d in q["documents"]]


def score_all(model: LlamaCppRerank) -> list[float]:
    out: list[float] = []
    for q in reference("rerank.json")["queries"]:
        out += model.score(q["query"], [d["document"] for d in q["documents"]])
    return out


@pytest.fixture(scope="module")
def f16() -> LlamaCppRerank:
    """The f16 toy reranker from ../shared/models (its tests skip without it)."""
    model = LlamaCppRerank(shared(F16), scores="raw", weights="file")
    yield model
    model.close()


@pytest.fixture(scope="module")
def toy() -> LlamaCppRerank:
    """The bundled toy reranker, widened to float32 (batch shapes do not change its numerics
    as q8_0's quantized activations do): for the plumbing, not for parity at f16's bar."""
    model = LlamaCppRerank(RERANKER_Q8, scores="raw", weights="f32")
    yield model
    model.close()


def test_pair_tokens_equal_reference_ids(toy: LlamaCppRerank) -> None:
    for query, doc in pairs():
        tokens, n_type1, _ = toy._pair(toy.runner, query, doc["document"])
        assert tokens == doc["input_ids"]
        assert n_type1 == doc["n_type1_tokens"]


def test_default_scores_match_pytorch_pair_encoding(f16: LlamaCppRerank) -> None:
    got = score_all(f16)
    worst = max(abs(g - d["logit_hf_pair"]) for g, (_, d) in zip(got, pairs()))
    assert worst <= 0.05


def test_token_type_zero_matches_llama_cpp_reference() -> None:
    with_zero = LlamaCppRerank(shared(F16), scores="raw", token_types=False, weights="file")
    got = score_all(with_zero)
    with_zero.close()
    worst = max(abs(g - d["logit_token_type_zero"]) for g, (_, d) in zip(got, pairs()))
    assert worst <= 0.05


# Every weight candidate against the PyTorch pair encoding: (source, weights=, bar in logits).
# f16 and its exact float32 widening hold f16's bar; bf16 keeps 8 mantissa bits against f16's
# 11 (0.1); q8_0 and anything made from it hold q8_0's bar (0.5). Copies go to a test cache.
PARITY = [
    pytest.param("q8_0", "file", 0.5, id="q8_0-file"),
    pytest.param("q8_0", "f32", 0.5, id="q8_0-f32-copy"),
    pytest.param("q8_0", "bf16", 0.5, id="q8_0-bf16-copy"),
    pytest.param("f16", "f32", 0.05, id="f16-f32-copy"),
    pytest.param("f16-as-bf16", "file", 0.1, id="f16-bf16-copy"),
]


@pytest.mark.parametrize(("source", "weights", "bar"), PARITY)
def test_scores_match_pytorch_for_every_weight_candidate(
    source: str, weights: str, bar: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    path = {
        "q8_0": lambda: RERANKER_Q8,
        "f16": lambda: shared(F16),
        "f16-as-bf16": lambda: bf16_copy(shared(F16), tmp_path),
    }[source]()
    model = LlamaCppRerank(path, scores="raw", weights=weights)
    if weights != "file":
        assert Path(model.model_path).parent.parent == tmp_path / weights
    got = score_all(model)
    model.close()
    assert max(abs(g - d["logit_hf_pair"]) for g, (_, d) in zip(got, pairs())) <= bar


def test_probability_is_sigmoid_of_logit(toy: LlamaCppRerank) -> None:
    prob = LlamaCppRerank(RERANKER_Q8, weights="f32")
    query, doc = pairs()[0]
    p = prob.score(query, [doc["document"]])[0]
    logit = toy.score(query, [doc["document"]])[0]
    prob.close()
    assert p == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)


def test_probability_matches_pytorch(f16: LlamaCppRerank) -> None:
    prob = LlamaCppRerank(shared(F16), weights="file")
    query, doc = pairs()[0]
    p = prob.score(query, [doc["document"]])[0]
    prob.close()
    assert p == pytest.approx(doc["sigmoid_hf_pair"], abs=0.01)


def test_batched_equals_one_pair_at_a_time(toy: LlamaCppRerank) -> None:
    q = reference("rerank.json")["queries"][0]
    docs = [d["document"] for d in q["documents"]]
    batched = toy.score(q["query"], docs)
    single = [toy.score(q["query"], [d])[0] for d in docs]
    # logits; attention rounds in f16 whatever the weights, and how depends on the batch shape
    assert batched == pytest.approx(single, abs=0.05)


def test_relevant_documents_outrank_irrelevant(f16: LlamaCppRerank) -> None:
    wins = 0
    queries = reference("rerank.json")["queries"]
    for q in queries:
        docs = q["documents"]
        ranked = f16.rerank(q["query"], [d["document"] for d in docs])
        wins += docs[ranked[0][0]]["relevant"] == 1
        ref_order = sorted(range(len(docs)), key=lambda i: -docs[i]["logit_hf_pair"])
        assert [i for i, _ in ranked] == ref_order
    assert wins >= 5  # the toy model's top-1 is relevant for 5 of 8 queries (models/README)


def test_long_document_is_cut_and_query_survives(toy: LlamaCppRerank) -> None:
    query = "what does the with statement do"
    tokens_score = toy.score(query, ["the with statement " * 600])
    tokens, _, cut = toy._pair(toy.runner, query, "the with statement " * 600)
    assert cut and len(tokens) == 512
    assert tokens[1 : 1 + len(toy.runner.tokenize(query))] == toy.runner.tokenize(query)
    assert math.isfinite(tokens_score[0])


def test_postprocessor_keeps_top_n_and_retrieval_score() -> None:
    q = reference("rerank.json")["queries"][1]
    nodes = [
        NodeWithScore(node=TextNode(text=d["document"], id_=f"n{i}"), score=0.1 * i)
        for i, d in enumerate(q["documents"])
        if not d["truncated"]
    ]
    model = LlamaCppRerank(RERANKER_Q8, top_n=2, keep_retrieval_score=True)
    out = model.postprocess_nodes(nodes, query_str=q["query"])
    model.close()
    assert len(out) == 2
    assert out[0].score >= out[1].score
    assert all(n.node.metadata["retrieval_score"] is not None for n in out)
    assert {n.node.node_id for n in out} <= {n.node.node_id for n in nodes}


def test_node_content_uses_embed_metadata_mode(toy: LlamaCppRerank) -> None:
    node = TextNode(text="body text", metadata={"title": "Context managers"})
    node.excluded_embed_metadata_keys = []
    out = toy.postprocess_nodes([NodeWithScore(node=node, score=1.0)], query_str="context")
    expected = toy.score("context", [node.get_content(metadata_mode="embed")])[0]
    assert out[0].score == pytest.approx(expected, abs=1e-4)
    assert expected != pytest.approx(toy.score("context", ["body text"])[0], abs=1e-3)


def test_empty_node_list(toy: LlamaCppRerank) -> None:
    assert toy.postprocess_nodes([], query_str="anything") == []


def test_missing_query_is_a_value_error(toy: LlamaCppRerank) -> None:
    node = NodeWithScore(node=TextNode(text="x"), score=1.0)
    with pytest.raises(ValueError, match="query"):
        toy.postprocess_nodes([node])
    with pytest.raises(ValueError, match="query"):
        toy.postprocess_nodes([node], query_bundle=QueryBundle("  "))


def test_async_variant(toy: LlamaCppRerank) -> None:
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in ["cats purr", "SQL joins"]]
    out = asyncio.run(toy.apostprocess_nodes(nodes, query_str="database joins"))
    assert out[0].node.get_content() == "SQL joins"


def test_embedding_model_is_refused() -> None:
    with pytest.raises(PoolingError, match="not a cross-encoder"):
        LlamaCppRerank(EMBEDDER_Q8)


def test_llama_loaded_with_mean_pooling_is_refused() -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(RERANKER_Q8),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )
    with pytest.raises(PoolingError, match="rank pooling"):
        LlamaCppRerank(llm).score("q", ["d"])
    llm.close()


def test_llama_loaded_with_rank_pooling_works() -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(RERANKER_Q8),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK,
        verbose=False,
    )
    model = LlamaCppRerank(llm, scores="raw")
    query, doc = pairs()[0]
    assert model.score(query, [doc["document"]])[0] == pytest.approx(doc["logit_hf_pair"], abs=0.5)
    model.close()
    llm.close()


def test_rank_gguf_without_classifier_head_is_refused(tmp_path: Path) -> None:
    from gguf import GGUFReader

    src = EMBEDDER_Q8
    dst = tmp_path / "rank-without-head.gguf"
    data = bytearray(src.read_bytes())
    reader = GGUFReader(src)
    field = reader.fields["bert.pooling_type"]
    offset = int(field.parts[field.data[0]].ctypes.data - reader.data.ctypes.data)
    data[offset : offset + 4] = (4).to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    with pytest.raises(PoolingError, match="no classifier head"):
        LlamaCppRerank(dst)
