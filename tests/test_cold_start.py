"""What keeps a cold `crab` command short: light imports, header-only GGUF reads, hashes
kept beside the cache, one-query migration checks. Each must give what the slow way gives."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8, RERANKER_Q8

from llama_index_crab.models import gguf
from llama_index_crab.store import migrate


def test_the_command_line_imports_no_model_or_llamaindex() -> None:
    code = (
        "import sys, llama_index_crab.cli; "
        "print(sorted(m for m in ('llama_index.core', 'llama_cpp', 'sqlalchemy', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_cut_header_is_a_damaged_file(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(EMBEDDER_Q8.read_bytes()[:5000])
    with pytest.raises(gguf.ModelError, match="damaged GGUF"):
        gguf.read_metadata(cut)


def test_sha256_is_kept_in_a_sidecar_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + b"x" * 1000)
    digest = gguf.file_sha256(model)
    assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
    [sidecar] = (tmp_path / "cache" / "sha256").iterdir()
    # A sidecar for this version of the file is believed (here: a planted digest) ...
    planted = sidecar.read_text().replace(digest, "0" * 64)
    sidecar.write_text(planted)
    gguf._file_sha256.cache_clear()
    assert gguf.file_sha256(model) == "0" * 64
    # ... and a changed file (size, mtime) is hashed again.
    model.write_bytes(b"GGUF" + b"y" * 1001)
    os.utime(model, ns=(1, 1))
    assert gguf.file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    assert gguf.file_identity(model).startswith("model.gguf@")


def test_migration_head_is_alembics() -> None:
    assert migrate.head() == migrate.alembic_head()


def test_current_and_ensure_current_agree_with_alembic(empty_database: str) -> None:
    assert migrate.current(empty_database) is None
    migrate.ensure_current(empty_database)
    assert migrate.current(empty_database) == migrate.head()
    migrate.downgrade(empty_database, "0002")
    assert migrate.current(empty_database) == "0002"
    migrate.ensure_current(empty_database)
    assert migrate.current(empty_database) == migrate.head()


@pytest.fixture(scope="module")
def small_collection(database_url: str) -> Iterator[tuple[str, str]]:
    """A collection of three corpus files embedded with the bundled q8_0 model."""
    from llama_index_crab import build_pipeline

    name = f"quick_{os.getpid()}"
    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "python-reference"
    pipe = build_pipeline(str(EMBEDDER_Q8), database_url=database_url, collection=name)
    pipe.ingest([corpus / f"{topic}.md" for topic in ("try", "raise", "with")])
    pipe.close()
    yield database_url, name


@pytest.mark.parametrize("mode", ["hybrid", "dense", "text"])
def test_quick_query_prints_what_the_pipeline_prints(
    small_collection: tuple[str, str], mode: str
) -> None:
    from llama_index_crab import build_pipeline
    from llama_index_crab.cli.quick import quick_query
    from llama_index_crab.pipeline import query_json

    url, name = small_collection
    question = "How do I catch an exception?"
    opts = {
        "database_url": url,
        "collection": name,
        "embed_model": str(EMBEDDER_Q8),
        "rerank_model": None,
        "no_rerank": False,
        "read_urls": (),
        "n_gpu_layers": 0,
        "mode": mode,
        "top_k": None,
        "top_n": 4,
    }
    quick = quick_query(question, opts, ())
    pipe = build_pipeline(str(EMBEDDER_Q8), database_url=url, collection=name, rerank=False)
    full = query_json(question, pipe.search(question, mode=mode, top_n=4), pipe)
    pipe.close()
    assert quick is not None
    assert quick["results"] == full["results"] and len(full["results"]) == 4
    assert quick["stages"] == full["stages"]
    assert quick["timings_ms"].keys() == full["timings_ms"].keys()


def test_quick_query_leaves_other_cases_to_the_pipeline(small_collection: tuple[str, str]) -> None:
    from llama_index_crab.cli.quick import quick_query

    url, name = small_collection
    base = {
        "database_url": url,
        "collection": name,
        "embed_model": str(EMBEDDER_Q8),
        "rerank_model": None,
        "no_rerank": False,
        "read_urls": (),
        "n_gpu_layers": 0,
        "mode": "hybrid",
        "top_k": None,
        "top_n": 2,
    }
    assert quick_query("q", base | {"rerank_model": str(RERANKER_Q8)}, ()) is None
    assert quick_query("q", base, ("file_path=try.md",)) is None
    assert quick_query("q", base | {"collection": "no_such_collection"}, ()) is None
    assert quick_query("q", base | {"embed_model": str(EMBEDDER_BF16)}, ()) is None  # not its model
