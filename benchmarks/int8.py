"""The int8 gap: why llama.cpp's q8_0 is no faster than its float32 here while ONNX Runtime's
int8 is, and whether another llama.cpp weight type closes it at parity.

``python -m benchmarks.int8 [--quick]``. Every type is made with llama.cpp's quantize API from
the exact float32 copy of the bundled bf16 embedder (q8_0 also as the bundled file, converted
from the original f16), loaded as ``LlamaCppEmbedding`` loads weights (repacking on: q4_0,
iq4_nl and q8_0 get the CPU's interleaved layouts where llama.cpp has them). Per type: one
decode of a batch of short texts on one thread, its CPU time (best of interleaved repeats),
the share spent in matmuls against weights (llama.cpp's eval callback, ``_opprofile.py``),
the weight types those matmuls actually ran, and the minimum cosine to the PyTorch references
(``../shared/models/reference/embeddings.json``, 40 texts).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from benchmarks._opprofile import GROUPS, profile_decode
from benchmarks._report import table
from benchmarks._workers import ROOT
from benchmarks._workload import make_workload
from benchmarks.tools.quantize import CACHE, SHARED

__all__ = ["run"]

BF16 = ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf"
Q8 = ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf"
# llama_ftype values: what llama.cpp's quantize API is asked for.
TYPES = {"q8_0": 7, "q6_K": 18, "q5_K_M": 17, "q4_K_M": 15, "q4_0": 2, "iq4_nl": 25}


def _make(src: Path, name: str, ftype: int) -> Path:
    import llama_cpp

    from llama_index_crab.models.runtime import install_log_callback

    dst = CACHE / "int8" / f"all-MiniLM-L6-v2-{name}-from-f32.gguf"
    if dst.exists():
        return dst
    install_log_callback()
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize could not make {name}")
    return dst


def _models() -> dict[str, Path]:
    from llama_index_crab.models.weights import f32_copy

    f32 = f32_copy(BF16)
    out = {"f32 (copy of bf16)": f32, "bf16 (bundled)": BF16, "q8_0 (bundled)": Q8}
    for name, ftype in TYPES.items():
        out[f"{name} (from f32)"] = _make(f32, name, ftype)
    return out


def _min_cos(path: Path) -> float:
    from llama_index_crab import LlamaCppEmbedding

    ref = json.loads((SHARED / "reference" / "embeddings.json").read_text())["texts"]
    with LlamaCppEmbedding(path, allow_empty=True, weights="file") as m:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = m.embed([t["text"] for t in ref])
    want = np.array([t["mean"] for t in ref], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    return float(np.min(np.sum(got * want, axis=1)))


def run(quick: bool = False) -> str:
    """The int8 section of the report (markdown)."""
    from llama_index_crab import LlamaCppEmbedding

    models = _models()
    work = make_workload(str(Q8), 16, lo=20, hi=40, seed=6)
    with LlamaCppEmbedding(Q8, weights="file") as m:
        seqs = m._encode(m.runner, work.texts, "")
    n_tokens = sum(len(s) for s in seqs)
    repeats = 2 if quick else 6
    profiles = {
        k: profile_decode(p, seqs, pooling="mean", repeats=repeats) for k, p in models.items()
    }
    base = profiles["f32 (copy of bf16)"].cpu
    rows: list[list[object]] = []
    for name, p in profiles.items():
        share = p.groups[GROUPS[0]] / p.stepped
        rows.append(
            [
                name,
                f"{models[name].stat().st_size / 2**20:.0f}",
                f"{p.cpu * 1e3:.1f}",
                f"{n_tokens / p.cpu:,.0f}",
                f"{base / p.cpu:.2f}×",
                f"{share:.0%}",
                f"{p.cpu * share * 1e3:.1f}",
                p.weight_types,
                f"{_min_cos(models[name]):.5f}",
            ]
        )
    head = [
        "weights",
        "MB",
        "decode CPU ms",
        "tokens/s (1 thread)",
        "× f32",
        "matmul share",
        "matmul ms",
        "matmul weight types",
        "min cos vs PyTorch",
    ]
    return "\n".join(
        [
            "## The int8 gap: llama.cpp weight types on one thread",
            "",
            f"One decode of {len(seqs)} short texts ({n_tokens} tokens), one thread, CPU time, "
            f"best of {repeats} repeats; matmul share from the per-op profile.",
            "",
            table(head, rows),
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
