"""What keeps a cold `crab` command short: light imports, header-only GGUF reads, hashes
kept beside the cache, one-query migration checks. Each must give what the slow way gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _query_options(url: str, name: str, **changes: Any) -> dict[str, Any]:
    """`crab query`'s options as the CLI hands them to the quick path."""
    return {
        "database_url": url,
        "collection": name,
        "embed_model": str(EMBEDDER_Q8),
        "rerank_model": None,
        "no_rerank": False,
        "read_urls": (),
        "n_gpu_layers": 0,
        "mode": "hybrid",
        "top_k": None,
        "top_n": 4,
    } | changes


@pytest.mark.parametrize("mode", ["hybrid", "dense", "text"])
def test_quick_query_prints_what_the_pipeline_prints(
    small_collection: tuple[str, str], mode: str
) -> None:
    from llama_index_crab import build_pipeline
    from llama_index_crab.cli.quick import quick_query
    from llama_index_crab.pipeline import query_json

    url, name = small_collection
    question = "How do I catch an exception?"
    quick = quick_query(question, _query_options(url, name, mode=mode, top_n=4), ())
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
    base = _query_options(url, name, mode="hybrid", top_n=2)
    assert quick_query("q", base | {"rerank_model": str(RERANKER_Q8)}, ()) is None
    assert quick_query("q", base, ("file_path=try.md",)) is None
    assert quick_query("q", base | {"collection": "no_such_collection"}, ()) is None
    assert quick_query("q", base | {"embed_model": str(EMBEDDER_BF16)}, ()) is None  # not its model


def test_a_plain_query_imports_no_sqlalchemy_llamaindex_or_pydantic(
    small_collection: tuple[str, str], tmp_path: Path
) -> None:
    url, name = small_collection
    code = (
        "import sys\n"
        "from llama_index_crab.cli import main\n"
        f"main(['query', 'catch an exception', '-c', {name!r}, '--database-url', {url!r},\n"
        f"      '--embed-model', {str(EMBEDDER_Q8)!r}, '--no-serve', '--json'],\n"
        "     standalone_mode=False)\n"
        "heavy = ('sqlalchemy', 'llama_index.core', 'pydantic', 'llama_cpp.llama', 'jinja2')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "CRAB_CACHE_DIR": str(tmp_path)}
    env.pop("CRAB_RERANK_MODEL", None)
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["results"] == second["results"] and len(second["results"]) == 5
    # The first run compiled the statements into the cache; the second only read them.
    assert "sqlalchemy" in runs[0].stderr
    assert runs[1].stderr.strip().splitlines()[-1] == "[]"


def test_compiled_statements_come_from_the_builders_and_survive_a_damaged_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index_crab.store import compiled
    from llama_index_crab.store.identity import Collection, EmbeddingIdentity

    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    identity = EmbeddingIdentity("m", 384, "mean")
    collection = Collection(7, "c", identity, "halfvec", 16, 64, "simple")
    kept = compiled.for_collection(collection)
    assert [list(s) for s in kept.values()] == [
        list(s) for s in compiled._compile_collection(collection).values()
    ]
    assert "halfvec(384)" in kept["dense"][0].lower() and "collection_id = 7" in kept["dense"][0]
    [cache] = (tmp_path / "sql").iterdir()
    cache.write_text("{not json")
    assert compiled.shared()["head"] == migrate.head()
    assert compiled.for_collection(collection) == kept


def test_llama_bindings_load_alone_and_the_package_reuses_them() -> None:
    code = (
        "import sys\n"
        "from llama_index_crab.models.bindings import llama_cpp\n"
        "from llama_index_crab.models.cpu import llama_build\n"
        "low = llama_cpp()\n"
        "alone = llama_build()\n"
        "assert 'llama_cpp.llama' not in sys.modules and 'jinja2' not in sys.modules\n"
        "llama_build.cache_clear()\n"
        "import llama_cpp\n"
        "assert llama_cpp.llama_cpp is low and llama_cpp.Llama is not None\n"
        "assert llama_build() == alone, (llama_build(), alone)\n"
        "from llama_index_crab.models.runtime import LlamaRunner\n"
        f"LlamaRunner({str(EMBEDDER_Q8)!r}).close()  # llama.cpp's logs stay ours: none\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
