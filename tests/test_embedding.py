from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8, RERANKER_Q8, embedder_files, reference

from llama_index_crab import (
    EmbeddingModeError,
    InputTooLongError,
    LlamaCppEmbedding,
    ModelError,
    PoolingError,
    TruncationWarning,
)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def q8() -> LlamaCppEmbedding:
    emb = LlamaCppEmbedding(EMBEDDER_Q8)
    yield emb
    emb.close()


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("model_file,threshold", embedder_files())
def test_parity_with_pytorch_reference(model_file: Path, threshold: float, pooling: str) -> None:
    texts = reference("embeddings.json")["texts"]
    with LlamaCppEmbedding(model_file, pooling=pooling, allow_empty=True, weights="file") as emb:
        with pytest.warns(TruncationWarning):
            got = emb.embed([t["text"] for t in texts])
    worst = {t["id"]: cosine(v, np.array(t[pooling])) for t, v in zip(texts, got)}
    assert {k: c for k, c in worst.items() if c < threshold} == {}
    assert len(worst) == 40  # hangul_ko and long_over_512 included


@pytest.mark.parametrize("model_file,threshold", embedder_files())
def test_token_level_parity(model_file: Path, threshold: float) -> None:
    texts = [t for t in reference("embeddings.json")["texts"] if "token_embeddings" in t]
    with LlamaCppEmbedding(model_file, weights="file") as emb:
        mats = emb.get_token_embeddings_batch([t["text"] for t in texts])
    for t, mat in zip(texts, mats):
        ref = np.array(t["token_embeddings"])
        assert mat.shape == ref.shape
        assert min(cosine(a, b) for a, b in zip(mat, ref)) >= threshold


def test_default_pooling_comes_from_gguf(q8: LlamaCppEmbedding) -> None:
    assert q8.runner.pooling == "mean"
    assert q8.dimension == 384


def test_vectors_are_unit_norm(q8: LlamaCppEmbedding) -> None:
    vecs = np.array(q8.get_text_embedding_batch(["a cat", "a much longer sentence " * 20]))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_unnormalized_option_keeps_raw_mean() -> None:
    text = [t for t in reference("embeddings.json")["texts"] if t["id"] == "sent_food"][0]
    with LlamaCppEmbedding(EMBEDDER_BF16, normalize=False) as emb:
        vec = emb.embed([text["text"]])[0]
    ref = np.array(text["mean_unnormalized"])
    assert np.max(np.abs(vec - ref)) / np.max(np.abs(ref)) < 0.01
    assert abs(np.linalg.norm(vec) - 1.0) > 0.01


def mixed_texts(n: int) -> list[str]:
    words = " ".join(t["text"] for t in reference("embeddings.json")["texts"]).split()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 250))
        s = int(rng.integers(0, max(1, len(words) - k)))
        out.append(" ".join(words[s : s + k]))
    return out


# q8_0 kernels quantise activations differently for different batch shapes, so the
# quantised file is held to 0.999; the f16 file to the 0.9999.
@pytest.mark.parametrize("model_file,threshold", embedder_files())
def test_batched_equals_one_at_a_time(model_file: Path, threshold: float) -> None:
    texts = mixed_texts(70)
    with LlamaCppEmbedding(model_file, weights="file") as emb:
        total = sum(len(emb.runner.tokenize(t)) for t in texts)
        assert total > 4 * emb.batch_tokens  # several decodes, not one
        batched = emb.embed(texts)
        single = np.stack([emb.embed([t])[0] for t in texts])
    assert np.min(np.sum(batched * single, axis=1)) >= max(threshold, 0.999)


def test_token_matrix_mean_equals_mean_pooling(q8: LlamaCppEmbedding) -> None:
    text = "Pooling none returns one row per token."
    mat = q8.get_token_embeddings(text)
    assert mat.shape == (len(q8.runner.tokenize(text)) + 2, 384)
    assert cosine(mat.mean(axis=0), q8.embed([text])[0]) >= 0.9999


def test_skip_start_token_drops_first_row(q8: LlamaCppEmbedding) -> None:
    text = "no start token"
    with LlamaCppEmbedding(EMBEDDER_Q8, add_start_token=False) as emb:
        assert emb.get_token_embeddings(text).shape[0] == q8.get_token_embeddings(text).shape[0] - 1
        assert cosine(emb.embed([text])[0], q8.embed([text])[0]) < 0.9999


def test_query_and_text_prefixes() -> None:
    with LlamaCppEmbedding(EMBEDDER_Q8, query_prefix="query: ", text_prefix="passage: ") as emb:
        q = np.array(emb.get_query_embedding("red apples"))
        d = np.array(emb.get_text_embedding("red apples"))
        assert cosine(q, emb.embed(["query: red apples"])[0]) >= 0.99999
        assert cosine(d, emb.embed(["passage: red apples"])[0]) >= 0.99999
        assert cosine(q, d) < 0.9999


def test_long_text_is_truncated_with_warning(q8: LlamaCppEmbedding) -> None:
    with pytest.warns(TruncationWarning, match="512 tokens"):
        vec = q8.embed(["word " * 2000])
    assert vec.shape == (1, 384)


def test_long_text_raises_when_truncation_is_off() -> None:
    with LlamaCppEmbedding(EMBEDDER_Q8, truncate=False) as emb:
        with pytest.raises(InputTooLongError, match="truncate=True"):
            emb.embed(["fine", "word " * 2000])


def test_empty_text_is_an_error_by_default(q8: LlamaCppEmbedding) -> None:
    with pytest.raises(ValueError, match="text 1 is empty"):
        q8.get_text_embedding_batch(["ok", "   "])


def test_allow_empty_embeds_bare_special_tokens() -> None:
    ref = [t for t in reference("embeddings.json")["texts"] if t["id"] == "whitespace_only"][0]
    with LlamaCppEmbedding(EMBEDDER_BF16, allow_empty=True) as emb:
        got = emb.embed(["", ref["text"]])
    assert cosine(got[0], np.array(ref["mean"])) >= 0.9999
    assert cosine(got[1], np.array(ref["mean"])) >= 0.9999


def test_missing_model_file() -> None:
    with pytest.raises(ModelError, match="not found"):
        LlamaCppEmbedding("no/such/model.gguf")


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        LlamaCppEmbedding(bad)


def test_truncated_gguf(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(EMBEDDER_Q8.read_bytes()[:2_000_000])
    with pytest.raises(ModelError):
        LlamaCppEmbedding(cut).embed(["x"])


def test_hf_spec_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not download|huggingface_hub"):
        LlamaCppEmbedding("no-owner/no-repo:model.gguf")


def test_reranker_is_refused_with_pointer() -> None:
    with pytest.raises(PoolingError, match="LlamaCppRerank"):
        LlamaCppEmbedding(RERANKER_Q8)


def test_pooling_none_needs_token_method() -> None:
    with LlamaCppEmbedding(EMBEDDER_Q8, pooling="none") as emb:
        with pytest.raises(PoolingError, match="get_token_embeddings"):
            emb.get_text_embedding("x")
        assert emb.get_token_embeddings("x y").shape == (4, 384)


def test_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="pooling"):
        LlamaCppEmbedding(EMBEDDER_Q8, pooling="max")


def _patched_model(tmp_path: Path, value: float) -> Path:
    """A copy of the bundled embedder whose final LayerNorm is overwritten (zeros or NaN)."""
    from gguf import GGMLQuantizationType, GGUFReader

    dst = tmp_path / "patched.gguf"
    shutil.copyfile(EMBEDDER_BF16, dst)
    tensors = {t.name: t for t in GGUFReader(EMBEDDER_BF16).tensors}
    with dst.open("r+b") as fh:
        for name in ("blk.5.layer_output_norm.weight", "blk.5.layer_output_norm.bias"):
            t = tensors[name]
            dtype = np.float32 if t.tensor_type == GGMLQuantizationType.F32 else np.float16
            fh.seek(t.data_offset)
            fh.write(np.full(t.n_bytes // np.dtype(dtype).itemsize, value, dtype=dtype).tobytes())
    return dst


@pytest.mark.parametrize("value,what", [(0.0, "all-zero"), (float("nan"), "NaN")])
def test_broken_output_is_reported_with_pooling_advice(
    tmp_path: Path, value: float, what: str
) -> None:
    with LlamaCppEmbedding(_patched_model(tmp_path, value), pooling="cls") as emb:
        with pytest.raises(PoolingError, match=f"pooling 'cls' produced.*{what}.*'mean'"):
            emb.embed(["hello"])


def test_llama_without_embedding_mode() -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(EMBEDDER_Q8), embedding=False, verbose=False, n_ctx=64)
    with pytest.raises(EmbeddingModeError, match="embedding=True"):
        LlamaCppEmbedding(llm).embed(["x"])
    llm.close()


def test_llama_with_embedding_mode_matches(q8: LlamaCppEmbedding) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(EMBEDDER_Q8), embedding=True, verbose=False, n_ctx=512)
    emb = LlamaCppEmbedding(llm)
    texts = ["one text", "another, longer text about databases"]
    # the Llama runs without flash attention: q8_0 numerics differ slightly
    assert np.min(np.sum(emb.embed(texts) * q8.embed(texts), axis=1)) >= 0.999
    emb.close()
    llm.close()


def test_two_threads_at_once(q8: LlamaCppEmbedding) -> None:
    texts = mixed_texts(20)
    expected = q8.embed(texts)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = q8.embed(texts)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results.values():
        assert np.min(np.sum(got * expected, axis=1)) >= 0.9999


def test_async_does_not_block_event_loop(q8: LlamaCppEmbedding) -> None:
    texts = mixed_texts(40)

    async def main() -> tuple[int, list[list[float]]]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        vecs = await q8.aget_text_embedding_batch(texts)
        elapsed = time.perf_counter() - start
        done = True
        await task
        return ticks if elapsed > 0.1 else 999, vecs

    ticks, vecs = asyncio.run(main())
    assert ticks >= 5
    assert len(vecs) == 40
    assert np.allclose(np.array(vecs), q8.embed(texts), atol=1e-4)


def test_close_then_reuse_reloads(q8: LlamaCppEmbedding) -> None:
    with LlamaCppEmbedding(EMBEDDER_Q8) as emb:
        a = emb.embed(["reload"])
        emb.close()
        b = emb.embed(["reload"])
    assert cosine(a[0], b[0]) >= 0.99999
