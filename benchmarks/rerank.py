"""Reranking throughput (issue #4): ours vs a one-pair-per-decode loop over llama-cpp-python.

``python -m benchmarks.rerank [--quick]``. One query, 100 documents of 20–400 tokens from the
bundled corpus; both sides score the same pairs, interleaved (see ``_timing``). The loop is the
seed's semantics through llama-cpp-python's low-level API (it has no rerank helper), exactly as
``../shared/models/README.md`` shows it. sentence-transformers' CrossEncoder needs the toy
reranker's original Hugging Face weights, which are not published anywhere we can install from,
so that column is left out (see the note in the report).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._report import table
from benchmarks._timing import interleave, paired_ratio, total
from benchmarks._workers import ROOT
from benchmarks._workload import make_workload

__all__ = ["run"]

MODELS = {
    "q8_0": ROOT / "models" / "minilm-toy-reranker-q8_0.gguf",
    "f16": ROOT.parent / "shared" / "models" / "minilm-toy-reranker-f16.gguf",
}
QUERY = "How does the with statement call __enter__ and __exit__ on a context manager?"


class _PairLoop:
    """One (query, document) pair per llama_decode, as in the models README."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        from llama_index_crab._llama import _install_log_callback

        _install_log_callback()
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            n_ctx=512,
            n_batch=512,
            n_ubatch=512,
            verbose=False,
        )

    def score(self, query: str, doc: str) -> float:
        lc, llm = self.llama_cpp, self.llm
        qt = llm.tokenize(query.encode(), add_bos=False)
        dt = llm.tokenize(doc.encode(), add_bos=False)[: 512 - 3 - len(qt)]
        toks = [llm.token_bos(), *qt, llm.token_eos(), *dt, llm.token_eos()]
        batch = lc.llama_batch_init(len(toks), 0, 1)
        for i, t in enumerate(toks):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(toks)
        lc.llama_memory_clear(lc.llama_get_memory(llm.ctx), True)
        if lc.llama_decode(llm.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        score = float(lc.llama_get_embeddings_seq(llm.ctx, 0)[0])
        lc.llama_batch_free(batch)
        return score

    def close(self) -> None:
        self.llm.close()


def _bench(name: str, path: Path, docs: list[str], n_chunks: int, rounds: int) -> list[Any]:
    from llama_index_crab import LlamaCppRerank

    ours = LlamaCppRerank(path, scores="raw")
    ours_tt0 = LlamaCppRerank(path, scores="raw", token_types=False)
    loop = _PairLoop(path)
    size = len(docs) // n_chunks
    parts = [docs[i * size : (i + 1) * size] for i in range(n_chunks)]
    probe: dict[str, list[float]] = {}

    def timed(fn: Any, key: str) -> Any:
        def call(chunk: int) -> float:
            start = time.perf_counter()
            probe[key] = fn(parts[chunk])
            return time.perf_counter() - start

        return call

    times = interleave(
        {
            "ours": timed(lambda d: ours.score(QUERY, d), "ours"),
            "ours, token type 0": timed(lambda d: ours_tt0.score(QUERY, d), "tt0"),
            "per-pair loop": timed(lambda d: [loop.score(QUERY, x) for x in d], "loop"),
        },
        n_chunks,
        rounds=rounds,
        label=f"rerank {name} ",
    )
    agree = max(abs(a - b) for a, b in zip(probe["tt0"], probe["loop"], strict=True))
    ours.close()
    ours_tt0.close()
    loop.close()
    rows = []
    for alt, secs in times.items():
        seconds = total(secs, rounds)
        ratio = 1 / paired_ratio(times["ours"], secs) if alt != "ours" else 1.0
        rows.append([f"{alt} ({name})", len(docs) / seconds, round(seconds, 2), f"{ratio:.2f}×"])
    rows.append([f"max abs Δ logit, token type 0 vs loop ({name})", "", "", f"{agree:.4f}"])
    return rows


def run(quick: bool = False) -> str:
    n_docs, n_chunks, rounds = (40, 2, 1) if quick else (100, 4, 2)
    models = {k: v for k, v in MODELS.items() if v.exists()}
    work = make_workload(str(models["q8_0"]), n_docs, lo=20, hi=400, seed=1)
    rows: list[Any] = []
    for name, path in models.items():
        rows += _bench(name, path, work.texts, n_chunks, rounds)
    note = (
        f"_One query, {n_docs} documents of 20–400 tokens ({work.total_tokens:,} tokens), "
        f"best of {rounds} round(s); 'speed-up' is ours' advantage (median of paired chunks). "
        "sentence-transformers' CrossEncoder is not run: the toy reranker's Hugging Face weights "
        "are not installable here._"
    )
    body = table(["alternative", "pairs/s", "seconds", "ours' speed-up"], rows)
    return f"## Reranking (issue #4)\n\n{note}\n\n{body}"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
