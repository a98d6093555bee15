"""Default weights per CPU (issue #17): a float32 copy of the bundled bf16 file where the CPU
has AVX-512, else q8_0; an existing collection keeps the bundled weights it was filled with."""

from __future__ import annotations

from pathlib import Path

import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8
from click.testing import CliRunner

import llama_index_crab.models.cpu as cpu
from llama_index_crab import EmbeddingIdentity, PostgresVectorStore, build_pipeline
from llama_index_crab.models.cpu import preferred_weights
from llama_index_crab.models.gguf import file_identity
from llama_index_crab.models.weights import f32_copy
from llama_index_crab.pipeline import bundled_embedder, default_embed_model


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"], "f32"),
        (["avx2", "fma", "avx512f", "avx512_vnni"], "f32"),
        (["avx2", "fma"], "q8_0"),
        (["asimd", "asimddp"], "q8_0"),
        ([], "q8_0"),
    ],
)
def test_weights_follow_the_cpu_flags(flags: list[str], expected: str) -> None:
    kind, why = preferred_weights(flags)
    assert kind == expected
    assert "avx512f" in why


def test_default_is_the_bundled_file_for_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    kind = preferred_weights()[0]
    expected = f32_copy(EMBEDDER_BF16) if kind == "f32" else EMBEDDER_Q8
    assert default_embed_model() == str(expected)


@pytest.mark.parametrize("filled_with", ["q8_0", "bf16", "f32"])
def test_a_recorded_bundled_file_is_kept(filled_with: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = {"q8_0": EMBEDDER_Q8, "bf16": EMBEDDER_BF16, "f32": f32_copy(EMBEDDER_BF16)}
    # Whatever this CPU prefers: a CPU without AVX-512 keeps an f32 collection's weights too.
    for flags in (["avx512f"], []):
        monkeypatch.setattr(cpu, "preferred_weights", lambda f=flags: preferred_weights(f))
        assert bundled_embedder(file_identity(path[filled_with])) == path[filled_with]


def test_no_float32_copy_is_made_where_q8_0_is_preferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "preferred_weights", lambda: preferred_weights([]))
    assert bundled_embedder() == EMBEDDER_Q8
    assert bundled_embedder(file_identity(EMBEDDER_BF16)) == EMBEDDER_BF16
    assert not (tmp_path / "f32").exists()


def test_existing_q8_collection_keeps_q8_weights(
    database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    identity = EmbeddingIdentity(file_identity(EMBEDDER_Q8), 384, "mean")
    with PostgresVectorStore(database_url, collection_name, identity) as store:
        store.create_collection()
    pipe = build_pipeline(database_url=database_url, collection=collection_name, rerank=False)
    try:
        assert pipe.embed_model.model_path == str(EMBEDDER_Q8)
    finally:
        pipe.close()


def test_doctor_reports_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index_crab.cli.doctor import doctor

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    result = CliRunner().invoke(doctor, ["--database-url", "postgresql://nobody@/nowhere"])
    kind, why = preferred_weights()
    assert f"ok   weights: {kind} for the bundled embedder: {why}" in result.output


def test_doctor_accepts_a_collection_filled_with_the_other_weights(
    database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index_crab.cli.doctor import doctor

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    other = EMBEDDER_Q8 if preferred_weights()[0] == "f32" else EMBEDDER_BF16
    identity = EmbeddingIdentity(file_identity(other), 384, "mean")
    with PostgresVectorStore(database_url, collection_name, identity) as store:
        store.create_collection()
    args = ["--database-url", database_url, "--collection", collection_name]
    result = CliRunner().invoke(doctor, args)
    assert f"ok   collection: {collection_name!r}" in result.output
    assert f"uses {other.name}, the weights it was filled with" in result.output
