"""Test models: bundled q8_0 files in models/, f16 files and references in ../shared/models."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models"
SHARED = Path(os.environ.get("CRAB_SHARED_MODELS", ROOT.parent / "shared" / "models"))

EMBEDDER_Q8 = BUNDLED / "all-MiniLM-L6-v2-q8_0.gguf"
EMBEDDER_BF16 = BUNDLED / "all-MiniLM-L6-v2-bf16.gguf"
RERANKER_Q8 = BUNDLED / "minilm-toy-reranker-q8_0.gguf"


def shared(name: str) -> Path:
    """A model or reference file from ../shared/models; fails loudly when it is missing."""
    path = SHARED / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: parity tests need ../shared/models beside the repo "
            "(or CRAB_SHARED_MODELS pointing at it)"
        )
    return path


@cache
def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared(f"reference/{name}").read_text())
    return data


EMBEDDER_IDS = ["f16", "bf16", "q8_0", "f32-from-bf16", "f32-from-q8_0"]


def embedder_files() -> list[tuple[Path, float]]:
    """(model file, minimum cosine) for each embedding model, in EMBEDDER_IDS order: f16 and
    bf16 held to 0.9999, q8_0 to 0.997; the float32 copies (the default weights on AVX-512
    CPUs) to their source's bar or better."""
    from llama_index_crab._widen import f32_copy

    return [
        (shared("all-MiniLM-L6-v2-f16.gguf"), 0.9999),
        (EMBEDDER_BF16, 0.9999),
        (EMBEDDER_Q8, 0.997),
        (f32_copy(EMBEDDER_BF16), 0.9999),
        (f32_copy(EMBEDDER_Q8), 0.999),
    ]


def bf16_copy(f16: Path, out_dir: Path) -> Path:
    """A bf16 GGUF made from ``f16`` with llama.cpp's quantize API (as models/ carries for the
    embedder; the toy reranker's bf16 file is not carried, tests make it)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    out = out_dir / f16.name.replace("-f16", "-bf16")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params) != 0:
        pytest.fail(f"llama_model_quantize could not make a bf16 copy of {f16}")
    return out
