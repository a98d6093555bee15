"""bf16 GGUFs made from the f16 ones with llama.cpp's own quantize API (issue #17).

``.venv/bin/python -m benchmarks.tools.quantize`` writes ``models/all-MiniLM-L6-v2-bf16.gguf`` (the
embedder we carry) from ``../shared/models`` and prints the provenance lines for
``models/PROVENANCE.md``. The bf16 toy reranker is not carried: the benchmarks and tests make it
on the fly with :func:`to_bf16` (about a second).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_index_crab.models.gguf import file_sha256 as sha256

__all__ = ["SHARED", "cached", "sha256", "to_bf16"]

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "models"
CACHE = ROOT / "benchmarks" / ".cache"


def to_bf16(src: Path, dst: Path, nthread: int = 2) -> Path:
    """Requantize the GGUF ``src`` (f16, f32 or q8_0) to ``dst`` with ftype
    LLAMA_FTYPE_MOSTLY_BF16 (float32 copies are the package's own)."""
    import llama_cpp

    from llama_index_crab.models.runtime import install_log_callback

    install_log_callback()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    params.allow_requantize = True  # q8_0 sources too (dequantized, then rounded to bf16)
    params.nthread = nthread
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({src}) failed with code {rc}")
    tmp.replace(dst)
    return dst


def cached(f16: Path, cache: Path = CACHE) -> Path:
    """A bf16 copy of ``f16`` (or of a q8_0 / f32 file) in ``cache``, made once (named after
    its hash)."""
    stem = f16.name.replace("-f16", "-bf16").replace("-q8_0", "-bf16-from-q8_0")
    dst = cache / f"{sha256(f16)[:12]}-{stem}"
    return dst if dst.exists() else to_bf16(f16, dst)


def main() -> None:
    src = SHARED / "all-MiniLM-L6-v2-f16.gguf"
    dst = ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf"
    to_bf16(src, dst)
    print(f"{dst.name}: {dst.stat().st_size:,} bytes, sha256 {sha256(dst)}")
    print(f"source {src.name}: sha256 {sha256(src)}")


if __name__ == "__main__":
    sys.exit(main())
