"""Default weights per CPU (issue #17): bf16 where the CPU has bf16 dot products, else q8_0;
an existing collection keeps the bundled weights it was filled with."""

from __future__ import annotations

import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8
from click.testing import CliRunner

from llama_index_crab import EmbeddingIdentity, PostgresVectorStore, build_pipeline
from llama_index_crab._cpu import preferred_weights
from llama_index_crab._gguf import file_identity
from llama_index_crab.pipeline import bundled_embedder, default_embed_model


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["avx2", "avx512f", "avx512_bf16"], "bf16"),
        (["avx2", "amx_bf16", "amx_tile"], "bf16"),
        (["avx2", "avx512f", "avx512_vnni"], "q8_0"),
        ([], "q8_0"),
    ],
)
def test_weights_follow_the_cpu_flags(flags: list[str], expected: str) -> None:
    kind, why = preferred_weights(flags)
    assert kind == expected
    assert "avx512_bf16" in why or "amx_bf16" in why


def test_default_is_the_bundled_file_for_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    expected = EMBEDDER_BF16 if preferred_weights()[0] == "bf16" else EMBEDDER_Q8
    assert default_embed_model() == str(expected)


@pytest.mark.parametrize("filled_with", [EMBEDDER_Q8, EMBEDDER_BF16], ids=["q8_0", "bf16"])
def test_a_recorded_bundled_file_is_kept(filled_with: object) -> None:
    assert bundled_embedder(file_identity(filled_with)) == filled_with  # type: ignore[arg-type]


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
    from llama_index_crab.doctor import doctor

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    result = CliRunner().invoke(doctor, ["--database-url", "postgresql://nobody@/nowhere"])
    kind, why = preferred_weights()
    assert f"ok   weights: {kind} for the bundled embedder: {why}" in result.output


def test_doctor_accepts_a_collection_filled_with_the_other_weights(
    database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index_crab.doctor import doctor

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    other = EMBEDDER_Q8 if preferred_weights()[0] == "bf16" else EMBEDDER_BF16
    identity = EmbeddingIdentity(file_identity(other), 384, "mean")
    with PostgresVectorStore(database_url, collection_name, identity) as store:
        store.create_collection()
    args = ["--database-url", database_url, "--collection", collection_name]
    result = CliRunner().invoke(doctor, args)
    assert f"ok   collection: {collection_name!r}" in result.output
    assert f"uses {other.name}, the weights it was filled with" in result.output
