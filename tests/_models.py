"""Test models: the GGUFs in models/ and the PyTorch references in tests/data/reference.

``../shared/models`` (or ``$CRAB_SHARED_MODELS``) adds the f16 files: checks that need them
are skipped, with the reason, on a clone without it.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models"
REFERENCES = ROOT / "tests" / "data" / "reference"
SHARED = Path(os.environ.get("CRAB_SHARED_MODELS", ROOT.parent / "shared" / "models"))

EMBEDDER_Q8 = BUNDLED / "all-MiniLM-L6-v2-q8_0.gguf"
EMBEDDER_BF16 = BUNDLED / "all-MiniLM-L6-v2-bf16.gguf"
RERANKER_Q8 = BUNDLED / "minilm-toy-reranker-q8_0.gguf"
EMBEDDER_F16_NAME = "all-MiniLM-L6-v2-f16.gguf"
RERANKER_F16_NAME = "minilm-toy-reranker-f16.gguf"


def shared(name: str) -> Path:
    """A model file from ../shared/models; the calling test is skipped when it is missing."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is missing: this check needs ../shared/models beside the repository")
    return path


def shared_param(name: str) -> Any:
    """``shared(name)`` as a parametrize value, marked skip when ../shared/models is absent."""
    path = SHARED / name
    reason = f"{path} is missing: this check needs ../shared/models beside the repository"
    return path, pytest.mark.skipif(not path.exists(), reason=reason)


@cache
def reference(name: str) -> dict[str, Any]:
    """PyTorch reference outputs carried in tests/data (``embeddings.json``, ``rerank.json``)."""
    data: dict[str, Any] = json.loads((REFERENCES / name).read_text())
    return data


EMBEDDER_IDS = [
    "f16",
    "bf16",
    "q8_0",
    "f32-from-bf16",
    "f32-from-q8_0",
    "bf16-from-q8_0",
    "f32-from-f16",
    "bf16-from-f16",
]


def embedder_files() -> list[Any]:
    """Parametrize values (model file, minimum cosine), in EMBEDDER_IDS order: f16 and bf16
    held to 0.9999, q8_0 to 0.997; the float32 and bf16 copies weights="auto" chooses from
    to their source's bar or better. The f16 rows need ../shared/models and are skipped
    without it."""
    from llama_index_crab.models.weights import copy, f32_copy

    f16, skip_f16 = shared_param(EMBEDDER_F16_NAME)
    from_f16 = (
        [
            pytest.param(f32_copy(f16), 0.9999, id="f32-from-f16"),
            pytest.param(copy(f16, "bf16"), 0.9999, id="bf16-from-f16"),
        ]
        if f16.exists()
        else [
            pytest.param(f16, 0.9999, marks=skip_f16, id="f32-from-f16"),
            pytest.param(f16, 0.9999, marks=skip_f16, id="bf16-from-f16"),
        ]
    )
    return [
        pytest.param(f16, 0.9999, marks=skip_f16, id="f16"),
        pytest.param(EMBEDDER_BF16, 0.9999, id="bf16"),
        pytest.param(EMBEDDER_Q8, 0.997, id="q8_0"),
        pytest.param(f32_copy(EMBEDDER_BF16), 0.9999, id="f32-from-bf16"),
        pytest.param(f32_copy(EMBEDDER_Q8), 0.999, id="f32-from-q8_0"),
        pytest.param(copy(EMBEDDER_Q8, "bf16"), 0.997, id="bf16-from-q8_0"),
        *from_f16,
    ]


def quantized_copy(src: Path, out: Path, ftype_name: str) -> Path:
    """A copy of ``src`` in another weight type (``"MOSTLY_BF16"``, ``"MOSTLY_Q4_0"``, ...)
    made with llama.cpp's quantize API."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype_name}")
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        pytest.fail(f"llama_model_quantize could not make a {ftype_name} copy of {src}")
    return out


def bf16_copy(f16: Path, out_dir: Path) -> Path:
    """A bf16 GGUF made from ``f16`` (the toy reranker's bf16 file is not carried)."""
    return quantized_copy(f16, out_dir / f16.name.replace("-f16", "-bf16"), "MOSTLY_BF16")
