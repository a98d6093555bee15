"""float32 copies of GGUF weights, made once with llama.cpp's own quantize API.

llama.cpp's float32 matmuls (tinyBLAS) need no conversion per block, which makes them the
fastest on some CPUs and not on others (``benchmarks/kernels.py``, ``docs/performance.md``).
Widening is exact: every f16, bf16 or q8_0 weight is a float32 value, so the copy computes the
same model as the file, with float32 activations where the 16-bit and q8_0 kernels round them.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal, overload

from pydantic import BaseModel, Field

from ..errors import ModelError
from .gguf import file_sha256

__all__ = ["WIDENABLE", "WeightsOption", "cache_dir", "f32_copy", "file_type", "model_file"]

# general.file_type values (llama_ftype) whose weights widen exactly to float32.
ALL_F32 = 0
WIDENABLE = {1: "f16", 7: "q8_0", 32: "bf16"}


def cache_dir() -> Path:
    """Where float32 copies live: ``CRAB_CACHE_DIR``, else the user cache directory."""
    import platformdirs

    base = os.environ.get("CRAB_CACHE_DIR")
    root = Path(base) if base else platformdirs.user_cache_path("llama-index-crab")
    return root / "f32"


def file_type(path: Path) -> int | None:
    """The GGUF's ``general.file_type`` (llama_ftype), or None when it does not say."""
    from .gguf import read_metadata

    value = read_metadata(path).get("general.file_type")
    return int(str(value)) if value is not None else None


class WeightsOption(BaseModel):
    """The weights a model class loads, shared by LlamaCppEmbedding and LlamaCppRerank."""

    weights: Literal["file", "f32"] = Field(
        default="file",
        description="'f32': load a float32 copy of f16/bf16/q8_0 weights, made once in the "
        "cache (exact; 1.2-1.3x faster than q8_0 on an AVX-512 CPU, 4 bytes per weight).",
    )


@overload
def model_file(path: Path, weights: str) -> Path: ...
@overload
def model_file(path: None, weights: str) -> None: ...
def model_file(path: Path | None, weights: str) -> Path | None:
    """The file to load for ``weights`` ("file": ``path``; "f32": its float32 copy); ``path``
    None is a ``llama_cpp.Llama`` passed in, which is loaded already and gets no copy."""
    if weights not in ("file", "f32"):
        raise ValueError(f"weights must be 'file' or 'f32', got {weights!r}")
    if weights == "file":
        return path
    if path is None:
        raise ValueError(
            "weights='f32' applies when the model is loaded from a path; pass the .gguf path "
            "instead of a llama_cpp.Llama"
        )
    return f32_copy(path)


def f32_copy(path: Path, cache: Path | None = None) -> Path:
    """``path`` itself when its weights are float32 already, else its float32 copy in the
    cache, made on first use (about a second for a small BERT; four bytes per weight)."""
    ftype = file_type(path)
    if ftype == ALL_F32:
        return path
    if ftype not in WIDENABLE:
        raise ModelError(
            f"{path.name} has weight type {ftype} (llama_ftype); float32 copies are made of "
            f"{', '.join(WIDENABLE.values())} files only: use weights='file' for it"
        )
    stat = path.stat()
    folder = (cache or cache_dir()) / _source_hash(path.resolve(), stat.st_mtime_ns, stat.st_size)
    dst = folder / (re.sub(r"[-._](f16|bf16|q8_0)$", "", path.stem, flags=re.I) + "-f32.gguf")
    if dst.exists():
        return dst
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _quantize(path, dst, ftype)
    except OSError as exc:
        raise ModelError(
            f"could not write the float32 copy of {path.name} to {folder}: {exc}; set "
            f"CRAB_CACHE_DIR to a writable folder with room for it, or {_USE_FILE}"
        ) from exc
    return dst


_USE_FILE = (
    "load the file's own weights instead: `--rerank-weights file` for a reranker, "
    "`--embed-model` the .gguf itself for an embedder (Python: weights='file')"
)
# Bytes per weight of each widenable type, to size its float32 copy.
_BYTES_PER_WEIGHT = {1: 2.0, 7: 34 / 32, 32: 2.0}


def _no_room(src: Path, folder: Path, ftype: int) -> str | None:
    """What the disk of ``folder`` lacks for the float32 copy of ``src``, or None."""
    import shutil

    need = src.stat().st_size * 4 / _BYTES_PER_WEIGHT[ftype]
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    return f"its disk has {free / 2**20:.0f} MB free, the copy needs about {need / 2**20:.0f} MB"


@functools.lru_cache(maxsize=16)
def _source_hash(path: Path, mtime_ns: int, size: int) -> str:
    """The first 16 hex digits of the file's sha256, hashed once per version of the file."""
    return file_sha256(path)[:16]


def _quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    from .runtime import install_log_callback

    install_log_callback()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True  # q8_0 -> f32 dequantizes; exact
    params.nthread = os.cpu_count() or 1
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)  # what a full disk took, before measuring it
            room = _no_room(src, dst.parent, ftype)
            if room is not None:
                raise ModelError(
                    f"no space left for the float32 copy of {src.name} in {dst.parent}: "
                    f"{room}; free space there or set CRAB_CACHE_DIR to a disk with room, "
                    f"or {_USE_FILE}"
                )
            raise ModelError(
                f"llama.cpp could not widen {src.name} to float32 (code {rc}); {_USE_FILE}"
            )
        os.replace(tmp, dst)  # whole or absent; a concurrent maker writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
