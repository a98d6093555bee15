"""What keeps a cold `crab` command short: light imports, header-only GGUF reads, hashes
kept beside the cache, one-query migration checks. Each must give what the slow way gives."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize("path", [EMBEDDER_BF16, EMBEDDER_Q8, RERANKER_Q8], ids=lambda p: p.name)
def test_header_reader_gives_what_gguf_reader_gives(path: Path) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    expected: dict[str, object] = {}
    for key, field in reader.fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue
        value = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            expected[key] = bytes(value).decode("utf-8", "replace")
        else:
            expected[key] = value.tolist()[0]
    assert gguf.read_metadata(path) == expected
    assert gguf.tensor_names(path) == frozenset(t.name for t in reader.tensors)


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
