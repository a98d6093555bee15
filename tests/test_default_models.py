"""The default embedding model of a wheel install: from the Hugging Face cache, no network.

Each CLI run is a fresh process with the clone's models/ hidden, ``HF_HOME`` pointing at a
temporary cache and ``HF_HUB_OFFLINE=1``, as a wheel user without a connection would have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _models import EMBEDDER_Q8

from llama_index_crab import pipeline
from llama_index_crab.errors import ModelError
from llama_index_crab.models import hub as _hub
from llama_index_crab.models.gguf import file_sha256

# Runs the CLI with pipeline.BUNDLED_MODELS moved to argv[1] (a folder without models).
RUN_CLI = (
    "import pathlib, sys; import llama_index_crab.pipeline as p; "
    "p.BUNDLED_MODELS = pathlib.Path(sys.argv[1]); "
    "from llama_index_crab.cli import main; main(sys.argv[2:], prog_name='crab')"
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def seed_cache(hf_home: Path, file: _hub.HubFile, source: Path) -> Path:
    """Put ``source`` into a Hugging Face cache as ``hf_hub_download`` leaves a file."""
    repo = hf_home / "hub" / ("models--" + file.repo_id.replace("/", "--"))
    blob = repo / "blobs" / file_sha256(source)
    blob.parent.mkdir(parents=True)
    shutil.copyfile(source, blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT / file.filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    return snapshot


def crab(tmp_path: Path, hf_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAB_", "HF_"))}
    env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    no_models = tmp_path / "no-models"
    no_models.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, str(no_models), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_bundled_model_has_the_recorded_sha256() -> None:
    assert EMBEDDER_Q8.name == _hub.BUNDLED_EMBEDDER
    assert file_sha256(EMBEDDER_Q8) == _hub.BUNDLED_EMBEDDER_SHA256


def test_offline_with_an_empty_cache_is_one_line_naming_the_extra_and_variable(
    tmp_path: Path,
) -> None:
    result = crab(tmp_path, tmp_path / "empty-hf", "embed", "hello")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert 'pip install "llama-index-crab[hf]"' in lines[0]
    assert "CRAB_EMBED_MODEL" in lines[0]
    assert _hub.DEFAULT_EMBEDDER.spec in lines[0]


def test_without_the_hf_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelError, match=r'pip install "llama-index-crab\[hf\]".*CRAB_EMBED_MODEL'):
        _hub.fetch(_hub.DEFAULT_EMBEDDER, "CRAB_EMBED_MODEL")


@pytest.mark.slow
def test_ingest_and_query_use_the_cached_default(
    tmp_path: Path, database_url: str, collection_name: str
) -> None:
    hf_home = tmp_path / "hf"
    seed_cache(hf_home, _hub.DEFAULT_EMBEDDER, EMBEDDER_Q8)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "logs.md").write_text("Rotate the logs with logrotate every night.\n")
    (notes / "cats.md").write_text("Cats sleep for most of the day.\n")
    where = ["--database-url", database_url, "--collection", collection_name]
    ingest = crab(tmp_path, hf_home, "ingest", str(notes), *where)
    assert ingest.returncode == 0, ingest.stderr
    assert "2 added" in ingest.stdout
    query = crab(tmp_path, hf_home, "query", "how do I rotate logs?", "--json", *where)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["results"][0]["source"] == "logs.md"


def test_default_resolution_prefers_env_then_clone_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    cached = seed_cache(hf_home, _hub.DEFAULT_EMBEDDER, EMBEDDER_Q8)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("CRAB_EMBED_MODEL", "/models/chosen.gguf")
    assert pipeline.default_embed_model() == "/models/chosen.gguf"
    monkeypatch.delenv("CRAB_EMBED_MODEL")
    assert pipeline.default_embed_model() == str(pipeline.bundled_embedder())  # the bf16 file
    monkeypatch.setattr(pipeline, "BUNDLED_MODELS", tmp_path / "no-models")
    # From the cache, as it is: weights="auto" picks among it and its copies when it loads.
    assert pipeline.default_embed_model() == str(cached)


def test_a_pinned_sha256_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    pinned = _hub.HubFile("example/minilm", "minilm.gguf", _hub.BUNDLED_EMBEDDER_SHA256)
    cached = seed_cache(hf_home, pinned, EMBEDDER_Q8)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    assert _hub.fetch(pinned, "CRAB_EMBED_MODEL") == cached
    other = _hub.HubFile("example/minilm", "minilm.gguf", "0" * 64)
    with pytest.raises(ModelError, match="not the expected 0000"):
        _hub.fetch(other, "CRAB_EMBED_MODEL")
