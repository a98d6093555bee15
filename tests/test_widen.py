"""float32 copies of GGUF weights (issue #17): exact, made once, whole or absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8, RERANKER_Q8

from llama_index_crab import LlamaCppEmbedding, ModelError
from llama_index_crab.models.gguf import file_identity
from llama_index_crab.models.gguf import file_sha256 as sha256
from llama_index_crab.models.weights import ALL_F32, f32_copy, file_type

TEXTS = ["The with statement wraps a block.", "Generators yield values lazily.", "SQL joins"]


def test_copy_is_float32_and_made_once(tmp_path: Path) -> None:
    copy = f32_copy(EMBEDDER_BF16, tmp_path)
    assert file_type(copy) == ALL_F32
    assert copy.stat().st_size > 1.9 * EMBEDDER_BF16.stat().st_size
    made = copy.stat().st_mtime_ns
    assert f32_copy(EMBEDDER_BF16, tmp_path) == copy
    assert copy.stat().st_mtime_ns == made
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary files left


def test_copies_are_byte_for_byte_reproducible(tmp_path: Path) -> None:
    # The collection identity of the default weights is the copy's content hash.
    one, two = f32_copy(EMBEDDER_BF16, tmp_path / "a"), f32_copy(EMBEDDER_BF16, tmp_path / "b")
    assert sha256(one) == sha256(two)


def test_a_float32_file_is_its_own_copy(tmp_path: Path) -> None:
    copy = f32_copy(EMBEDDER_Q8, tmp_path)
    assert f32_copy(copy, tmp_path / "other") == copy


def test_widening_is_exact(tmp_path: Path) -> None:
    # Every bf16 weight is a float32 value: the copy's tensors equal the file's, widened.
    from gguf import GGUFReader
    from gguf.quants import dequantize

    def weights(path: Path) -> dict[str, np.ndarray]:
        reader = GGUFReader(path)
        return {t.name: dequantize(t.data, t.tensor_type) for t in reader.tensors}

    src, copy = weights(EMBEDDER_BF16), weights(f32_copy(EMBEDDER_BF16, tmp_path))
    assert src.keys() == copy.keys()
    for name, values in src.items():
        assert np.array_equal(values.astype(np.float32), copy[name]), name


def test_f32_weights_embed_as_the_file_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    with (
        LlamaCppEmbedding(EMBEDDER_BF16, weights="file") as file,
        LlamaCppEmbedding(EMBEDDER_BF16, weights="f32") as wide,
    ):
        assert Path(wide.model_path).is_relative_to(tmp_path)
        assert wide.identity().model == file_identity(Path(wide.model_path))
        assert wide.identity().model_key != file.identity().model_key  # other vectors
        cos = np.sum(file.embed(TEXTS) * wide.embed(TEXTS), axis=1)
    assert np.min(cos) >= 0.9999


def test_a_loaded_llama_has_no_copy() -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(EMBEDDER_Q8), embedding=True, verbose=False)
    try:
        with pytest.raises(ValueError, match="pass the .gguf path"):
            LlamaCppEmbedding(llm, weights="f32")
    finally:
        llm.close()


def test_any_quantization_widens_to_float32_and_bf16_copies_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path / "cache"))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.allow_requantize = True
    q4 = tmp_path / "minilm-q4_k_m.gguf"
    assert (
        llama_cpp.llama_model_quantize(str(EMBEDDER_BF16).encode(), str(q4).encode(), params) == 0
    )
    texts = ["a widened q4_k_m model computes what the file does", "crabs"]
    with LlamaCppEmbedding(q4, weights="file") as own, LlamaCppEmbedding(q4, weights="f32") as wide:
        assert Path(wide.model_path).name.endswith("-f32.gguf")
        a, b = np.array(own.embed(texts)), np.array(wide.embed(texts))
    assert min(float(x @ y) for x, y in zip(a, b)) >= 0.999  # float32 activations, same weights
    with pytest.raises(ModelError, match="weights='file'"):
        LlamaCppEmbedding(q4, weights="bf16").embed(["x"])


def test_a_cache_path_that_is_a_file_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CRAB_CACHE_DIR", str(blocker))
    with pytest.raises(ModelError, match="CRAB_CACHE_DIR"):
        LlamaCppEmbedding(EMBEDDER_BF16, weights="f32")


def test_crab_rerank_with_f32_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from llama_index_crab.cli import main

    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    args = ["rerank", "database joins", "cats purr", "SQL joins combine tables"]
    args += ["--rerank-model", str(RERANKER_Q8)]
    plain = CliRunner().invoke(main, args)
    wide = CliRunner().invoke(main, [*args, "--rerank-weights", "f32"])
    assert plain.exit_code == wide.exit_code == 0, wide.output
    assert wide.output.splitlines()[0].endswith("SQL joins combine tables")
    scores = [[float(line.split()[0]) for line in r.output.splitlines()] for r in (plain, wide)]
    assert np.allclose(*scores, atol=0.05)  # the same model, activations kept in float32
    assert list((tmp_path / "f32").glob("*/minilm-toy-reranker-f32.gguf"))
