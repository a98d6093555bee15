"""Parity of each model family and quantization with PyTorch (tests/data/families/).

For every embedder: the minimum cosine to the PyTorch reference over the 43 texts and 6
queries, ours (``LlamaCppEmbedding`` at defaults: the family's prompts from the GGUF) and
llama.cpp alone (llama-cpp-python ``Llama(embedding=True).embed``, the prompt typed in by
hand, context set to the model's), plus how many token sequences equal the reference's.
For every reranker: the largest |score difference| over the 24 pairs (scores in 0..1).
The quantizations are made from the committed files with llama.cpp's quantize API.

``python -m benchmarks.families``
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "families"
MINILM = ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf"


def of_kind(kind: str) -> list[str]:
    """The families in DATA of this kind ("embedder" or "reranker"): each is a GGUF there
    with its reference beside it, so adding a family is adding its two files."""
    files = sorted(DATA.glob("*.gguf"))
    return [p.stem for p in files if json.loads(p.with_suffix(".json").read_text())["kind"] == kind]


EMBEDDERS, RERANKERS = of_kind("embedder"), of_kind("reranker")
TYPES = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]


def quantize(src: Path, kind: str, folder: Path) -> Path:
    import llama_cpp

    if kind in ("f16", "bf16"):
        return src
    dst = folder / f"{src.stem}-{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"quantizing {src} to {kind} failed")
    return dst


def ours_embedder(path: Path, ref: dict[str, Any], max_length: int | None) -> tuple[float, int]:
    from llama_index_crab import LlamaCppEmbedding

    with LlamaCppEmbedding(
        path, allow_empty=True, n_contexts=1, max_length=max_length, weights="file"
    ) as emb:
        rows = ref["texts"] + ref.get("queries", [])
        same = sum(emb.tokenize(r["text"]) == r["ids"] for r in ref["texts"])
        same += sum(emb.tokenize(r["text"], query=True) == r["ids"] for r in ref.get("queries", []))
        got = emb.get_text_embedding_batch([r["text"] for r in ref["texts"]])
        got += [emb.get_query_embedding(r["text"]) for r in ref.get("queries", [])]
    return _min_cos(got, rows), same


def alone_embedder(path: Path, ref: dict[str, Any], n_ctx: int) -> tuple[float, int]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        embedding=True,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        verbose=False,
    )
    got, rows, same = [], [], 0
    prompts = [(r, ref.get("text_prefix", "")) for r in ref["texts"]]
    prompts += [(r, ref.get("query_prefix", "")) for r in ref.get("queries", [])]
    for row, prefix in prompts:
        text = prefix + row["text"]
        same += llm.tokenize(text.encode(), add_bos=True, special=False) == row["ids"]
        if text.strip():
            got.append(llm.embed(text, normalize=True, truncate=True))
            rows.append(row)
    llm.close()
    return _min_cos(got, rows), same


def ours_reranker(path: Path, ref: dict[str, Any]) -> tuple[float, int]:
    from llama_index_crab import LlamaCppRerank

    rerank = LlamaCppRerank(path, n_contexts=1, weights="file")
    same = sum(rerank.tokenize_pair(p["query"], p["document"]) == p["ids"] for p in ref["pairs"])
    got = [rerank.score(p["query"], [p["document"]])[0] for p in ref["pairs"]]
    rerank.close()
    return float(np.abs(np.array(got) - [p["score"] for p in ref["pairs"]]).max()), same


def _min_cos(got: list[Any], rows: list[dict[str, Any]]) -> float:
    a = np.array(got, dtype=np.float64)
    b = np.array([r["vector"] for r in rows], dtype=np.float64)
    return float(np.einsum("ij,ij->i", a, b).min())


def run(quick: bool = False) -> str:
    warnings.simplefilter("ignore")
    types = ["f16", "q8_0", "q4_k_m"] if quick else TYPES
    lines = [
        "## Model families against PyTorch",
        "",
        "| family | weights | ours: min cosine / max \\|Δ score\\| | tokens equal | "
        "llama.cpp alone: min cosine | tokens equal |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in EMBEDDERS + RERANKERS + ["all-minilm-l6-v2"]:
            ref = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
            src = MINILM if name == "all-minilm-l6-v2" else DATA / f"{name}.gguf"
            n = len(ref.get("texts", [])) + len(ref.get("queries", [])) or len(ref["pairs"])
            for kind in ["bf16", *types[1:]] if src == MINILM else types:
                path = quantize(src, kind, folder)
                if ref["kind"] == "reranker":
                    score, same = ours_reranker(path, ref)
                    cells = [f"{score:.4f}", f"{same}/{n}", "–", "–"]
                else:
                    ctx = 256 if src == MINILM else ref["max_length"]
                    ours, same = ours_embedder(path, ref, 256 if src == MINILM else None)
                    alone, alone_same = alone_embedder(path, ref, ctx)
                    cells = [f"{ours:.6f}", f"{same}/{n}", f"{alone:.6f}", f"{alone_same}/{n}"]
                lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
                print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
