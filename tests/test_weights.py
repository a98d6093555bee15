"""The bundled default embedder: the bf16 file, its weights chosen by measurement
(``weights="auto"``); an existing collection keeps the bundled weights it was filled with."""

from __future__ import annotations

from pathlib import Path

import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8
from click.testing import CliRunner

from llama_index_crab import EmbeddingIdentity, PostgresVectorStore, build_pipeline
from llama_index_crab.models.gguf import file_identity
from llama_index_crab.models.weights import f32_copy
from llama_index_crab.pipeline import bundled_embedder, default_embed_model, recorded_weights


def test_default_is_the_bundled_bf16_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    assert default_embed_model() == str(EMBEDDER_BF16)
    assert recorded_weights(str(EMBEDDER_BF16)) == "auto"


@pytest.mark.parametrize("filled_with", ["q8_0", "bf16", "f32"])
def test_a_recorded_bundled_file_is_kept(filled_with: str) -> None:
    path = {"q8_0": EMBEDDER_Q8, "bf16": EMBEDDER_BF16, "f32": f32_copy(EMBEDDER_BF16)}
    assert bundled_embedder(file_identity(path[filled_with])) == path[filled_with]
    # The weights an earlier default loaded as they are stay as they are.
    want = "auto" if filled_with == "bf16" else "file"
    assert recorded_weights(str(path[filled_with])) == want


def test_no_float32_copy_is_made_unless_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    assert bundled_embedder() == EMBEDDER_BF16
    assert bundled_embedder(file_identity(EMBEDDER_Q8)) == EMBEDDER_Q8
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


def test_doctor_prints_the_measured_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index_crab.cli.doctor import doctor
    from llama_index_crab.models.weights import choose

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    result = CliRunner().invoke(doctor, ["--database-url", "postgresql://nobody@/nowhere"])
    found = choose(EMBEDDER_BF16)
    assert "ok   weights: weights='auto' times each model once on" in result.output
    assert f"embedder {EMBEDDER_BF16.name}: {found.describe()}" in result.output
    assert "ok   embedding model: all-MiniLM-L6-v2" in result.output


def test_doctor_accepts_a_collection_filled_with_the_other_weights(
    database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index_crab.cli.doctor import doctor

    monkeypatch.delenv("CRAB_EMBED_MODEL", raising=False)
    identity = EmbeddingIdentity(file_identity(EMBEDDER_Q8), 384, "mean")
    with PostgresVectorStore(database_url, collection_name, identity) as store:
        store.create_collection()
    args = ["--database-url", database_url, "--collection", collection_name]
    result = CliRunner().invoke(doctor, args)
    assert f"ok   collection: {collection_name!r}" in result.output
    assert f"uses {EMBEDDER_Q8.name}, the weights it was filled with" in result.output
