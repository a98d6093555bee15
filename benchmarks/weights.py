"""weights="auto" against every candidate it chose from, embedding and reranking.

``python -m benchmarks.weights [--quick]``. For the bundled bf16 and q8_0 embedders and the toy
reranker: each candidate (the file, its float32 copy, its bf16 copy) and ``weights="auto"`` (the
default) as the package runs them (``LlamaCppEmbedding.embed``, ``LlamaCppRerank.score`` at
their defaults), in one process, interleaved chunk by chunk over rounds, in CPU time (the
machine is shared); the default's speed against the fastest candidate is the median over
chunks of the paired ratio. Parity with the PyTorch references (tests/data) per candidate.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import table
from benchmarks._timing import interleave, paired_ratio, total
from benchmarks._workers import ROOT
from benchmarks._workload import make_workload

__all__ = ["run"]

MODELS = ROOT / "models"
REFERENCES = ROOT / "tests" / "data" / "reference"
QUERY = "How does the with statement call __enter__ and __exit__ on a context manager?"


def _cpu_timed(fn: Callable[[int], Any]) -> Callable[[int], float]:
    def call(chunk: int) -> float:
        start = time.process_time()
        fn(chunk)
        return time.process_time() - start

    return call


def _candidates(path: Path) -> dict[str, str]:
    """weights= values to compare: auto and every candidate the file gives here."""
    from llama_index_crab.models.weights import candidates

    found, _ = candidates(path)
    return {"auto (default)": "auto", **{k: k for k in found}}


def _parity_embed(path: Path, weights: str) -> str:
    from llama_index_crab import LlamaCppEmbedding

    ref = json.loads((REFERENCES / "embeddings.json").read_text())["texts"]
    with LlamaCppEmbedding(path, allow_empty=True, weights=weights) as m:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = m.embed([t["text"] for t in ref])
    want = np.array([t["mean"] for t in ref], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    return f"min cos {float(np.min(np.sum(got * want, axis=1))):.5f}"


def _parity_rerank(path: Path, weights: str) -> str:
    from llama_index_crab import LlamaCppRerank

    queries = json.loads((REFERENCES / "rerank.json").read_text())["queries"]
    model = LlamaCppRerank(path, scores="raw", weights=weights)
    worst = 0.0
    for q in queries:
        got = model.score(q["query"], [d["document"] for d in q["documents"]])
        worst = max(worst, *(abs(g - d["logit_hf_pair"]) for g, d in zip(got, q["documents"])))
    model.close()
    return f"max \\|Δ logit\\| {worst:.3f}"


def _section(job: str, path: Path, quick: bool) -> tuple[list[list[object]], str]:
    from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank
    from llama_index_crab.models.weights import choose

    kinds = _candidates(path)
    n, chunk, rounds = (24, 8, 1) if quick else (96, 12, 3)
    if job == "embed":
        work = make_workload(str(MODELS / "all-MiniLM-L6-v2-q8_0.gguf"), n, lo=8, hi=256, seed=7)
        ems = {k: LlamaCppEmbedding(path, weights=w) for k, w in kinds.items()}
        alts = {
            k: _cpu_timed(lambda i, m=m: m.embed(work.texts[i * chunk : (i + 1) * chunk]))
            for k, m in ems.items()
        }
        unit, amount, parity = "tokens/s", work.total_tokens, _parity_embed
    else:
        work = make_workload(str(MODELS / "all-MiniLM-L6-v2-q8_0.gguf"), n, lo=20, hi=300, seed=1)
        rrs = {k: LlamaCppRerank(path, weights=w) for k, w in kinds.items()}
        alts = {
            k: _cpu_timed(lambda i, r=r: r.score(QUERY, work.texts[i * chunk : (i + 1) * chunk]))
            for k, r in rrs.items()
        }
        unit, amount, parity = "pairs/s", len(work.texts), _parity_rerank
    times = interleave(alts, n // chunk, rounds=rounds, label=f"weights {path.name} ")
    for m in (ems if job == "embed" else rrs).values():
        m.close()
    fastest = min(
        (k for k in kinds if k != "auto (default)"), key=lambda k: total(times[k], rounds)
    )
    found = choose(path)
    rows: list[list[object]] = []
    for k, w in kinds.items():
        rate = amount / total(times[k], rounds)
        vs = 1 / paired_ratio(times[k], times[fastest])
        label = f"{k} → {found.kind}" if w == "auto" else k
        rows.append(
            [f"{job} {path.name}", label, f"{rate:,.0f} {unit}", f"{vs:.3f}", parity(path, w)]
        )
    return rows, fastest


def run(quick: bool = False) -> str:
    """The weights section of the report (markdown)."""
    from llama_index_crab.models.cpu import cpu_model, llama_build

    rows: list[list[object]] = []
    for job, name in (
        ("embed", "all-MiniLM-L6-v2-bf16.gguf"),
        ("embed", "all-MiniLM-L6-v2-q8_0.gguf"),
        ("rerank", "minilm-toy-reranker-q8_0.gguf"),
    ):
        got, _ = _section(job, MODELS / name, quick)
        rows += got
    head = ["job, model", "weights", "rate per CPU second", "× fastest candidate", "parity"]
    return "\n".join(
        [
            "## weights='auto' against every candidate",
            "",
            f"{cpu_model()}, {llama_build()}. Each row a model object as the package runs it "
            "(defaults: 2 contexts × 1 thread); interleaved chunks, CPU time of the process; "
            "rate: the fastest round; × fastest: the median over chunks of the fastest "
            "candidate's time / this row's. Parity against tests/data/reference.",
            "",
            table(head, rows),
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
