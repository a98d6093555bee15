"""Reranking throughput (issue #4): ours vs a per-pair llama-cpp-python loop and a CrossEncoder.

``python -m benchmarks.rerank [--quick]``. One query, 100 documents of 20–400 tokens from the
bundled corpus; every alternative scores the same pairs, interleaved (see ``_timing``). The loop is
the seed's semantics through llama-cpp-python's low-level API (it has no rerank helper), exactly as
``../shared/models/README.md`` shows it. The toy reranker's original Hugging Face checkpoint is
not installable, so sentence-transformers' CrossEncoder runs on the checkpoint that
``tools.gguf_to_hf.rebuild`` rebuilds from the f16 GGUF (every weight, f16-rounded), in
``benchmarks/.venv-st`` (``ce_worker.py``); it is left out, with the reason in the note, when
that venv is missing (``BENCH_NO_ST=1`` skips it too).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import table
from benchmarks._st_env import ensure_venv
from benchmarks._timing import interleave, paired_ratio, total
from benchmarks._workers import ROOT, Worker, WorkerError, write_texts
from benchmarks._workload import count_tokens, make_workload
from benchmarks.tools.gguf_to_hf import F16_GGUF, REFERENCE, rebuild

__all__ = ["run"]

MODELS = {
    "q8_0": ROOT / "models" / "minilm-toy-reranker-q8_0.gguf",
    "f16": ROOT.parent / "shared" / "models" / "minilm-toy-reranker-f16.gguf",
}
QUERY = "How does the with statement call __enter__ and __exit__ on a context manager?"
CE_BATCH = 16
CE_LABEL = f"sentence-transformers CrossEncoder, batch {CE_BATCH}"


class _PairLoop:
    """One (query, document) pair per llama_decode, as in the models README."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        from llama_index_crab.models.runtime import install_log_callback

        install_log_callback()
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


class _CrossEncoder:
    """The CrossEncoder worker (one process for every run), or why there is none."""

    def __init__(self, docs: list[str], tmp: str) -> None:
        self.worker: Worker | None = None
        self.error = ""
        self.info: dict[str, Any] = {}
        if os.environ.get("BENCH_NO_ST"):
            self.error = "skipped (BENCH_NO_ST=1)"
            return
        python, why = ensure_venv(create=False)
        if python is None:
            self.error = why
            return
        try:
            model_dir = rebuild()
        except (OSError, ValueError, KeyError, ImportError) as exc:
            self.error = f"could not rebuild the HF checkpoint from {F16_GGUF}: {exc}"
            return
        args = ["--texts", write_texts(docs, tmp), "--query", QUERY, "--model-dir", str(model_dir)]
        if REFERENCE.exists():
            args += ["--reference", str(REFERENCE)]
        self.worker = Worker(str(python), "benchmarks.ce_worker", args).start()

    def wait_ready(self) -> None:
        if self.worker is not None:
            try:
                self.info = self.worker.wait_ready()
            except WorkerError as exc:
                self.fail(exc)

    def score(self, start: int, stop: int) -> tuple[float, list[float]]:
        """(seconds, logits) of documents start..stop; NaN seconds once the worker failed."""
        if self.worker is None:
            return math.nan, []
        try:
            answer = self.worker.run(start, stop, batch_size=CE_BATCH)
        except WorkerError as exc:
            self.fail(exc)
            return math.nan, []
        return float(answer["seconds"]), [v[0] for v in answer["probe"]]

    def fail(self, exc: Exception) -> None:
        self.error = f"worker failed ({exc})"
        self.close()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker = None


def _bench(
    name: str, path: Path, docs: list[str], n_chunks: int, rounds: int, ce: _CrossEncoder
) -> list[Any]:
    from llama_index_crab import LlamaCppRerank

    ours = LlamaCppRerank(path, scores="raw", weights="file")
    ours_tt0 = LlamaCppRerank(path, scores="raw", token_types=False, weights="file")
    loop = _PairLoop(path)
    size = len(docs) // n_chunks
    parts = [docs[i * size : (i + 1) * size] for i in range(n_chunks)]
    probe: dict[str, dict[int, list[float]]] = {"ours": {}, "tt0": {}, "loop": {}, "ce": {}}

    def timed(fn: Any, key: str) -> Any:
        def call(chunk: int) -> float:
            start = time.perf_counter()
            probe[key][chunk] = fn(parts[chunk])
            return time.perf_counter() - start

        return call

    def ce_call(chunk: int) -> float:
        seconds, logits = ce.score(chunk * size, (chunk + 1) * size)
        if logits:
            probe["ce"][chunk] = logits
        return seconds

    alternatives = {
        "ours": timed(lambda d: ours.score(QUERY, d), "ours"),
        "ours, token type 0": timed(lambda d: ours_tt0.score(QUERY, d), "tt0"),
        "per-pair loop": timed(lambda d: [loop.score(QUERY, x) for x in d], "loop"),
    }
    if ce.worker is not None:
        alternatives[CE_LABEL] = ce_call
    times = interleave(alternatives, n_chunks, rounds=rounds, label=f"rerank {name} ")
    ours.close()
    ours_tt0.close()
    loop.close()
    rows: list[list[object]] = []
    for alt, secs in times.items():
        if any(math.isnan(s) for s in secs):
            rows.append([f"{alt} ({name} run)", ce.error or "failed", "", ""])
            continue
        seconds = total(secs, rounds)
        ratio = 1 / paired_ratio(times["ours"], secs) if alt != "ours" else 1.0
        label = f"{alt}, f32 PyTorch ({name} run)" if alt == CE_LABEL else f"{alt} ({name})"
        rows.append([label, len(docs) / seconds, round(seconds, 2), f"{ratio:.2f}×"])
    rows.append(
        [
            f"max abs Δ logit, token type 0 vs loop ({name})",
            "",
            "",
            f"{_max_delta(probe['tt0'], probe['loop']):.4f}",
        ]
    )
    if len(probe["ce"]) == n_chunks:
        delta = _max_delta(probe["ours"], probe["ce"])
        rows.append([f"max abs Δ logit, ours vs CrossEncoder ({name})", "", "", f"{delta:.4f}"])
    return rows


def _max_delta(a: dict[int, list[float]], b: dict[int, list[float]]) -> float:
    """Largest |a - b| over every chunk both scored (all the benchmarked pairs)."""
    return max(abs(x - y) for chunk in a for x, y in zip(a[chunk], b[chunk], strict=True))


def _ce_note(ce: _CrossEncoder, lengths: list[int]) -> str:
    if ce.error and not ce.info:
        return f"sentence-transformers' CrossEncoder is not run: {ce.error}."
    info = ce.info
    text = (
        f"CrossEncoder: sentence-transformers {info.get('sentence-transformers')}, torch "
        f"{info.get('torch')}, {info.get('threads')} threads, float32, raw logits, max_length "
        f"{info.get('max_length')}, on the HF checkpoint rebuilt from the f16 GGUF by "
        "`tools/gguf_to_hf.py` (every weight, f16-rounded); it encodes pairs as HF does (document "
        "tokens type 1, like ours by default) and truncates `longest_first`, which cuts the "
        "document only, as ours and the reference do, while the query is the shorter side"
    )
    over = sum(n > 512 for n in lengths)
    text += f" ({over} of the {len(lengths)} pairs here exceed 512 tokens)."
    ref = info.get("reference")
    if ref:
        text += (
            f" Against the PyTorch reference (`rerank.json`, {ref['pairs']} pairs, original "
            f"weights) it is within {ref['max_abs_delta_predict']:.4f} logit "
            f"({ref['max_abs_delta_ids']:.4f} on the reference ids); its tokenizer gives the "
            f"reference ids for {ref['ids']} of {ref['pairs']} pairs (HF drops the second "
            "[SEP] of an empty document)."
        )
    if ce.error:
        text += f" It failed: {ce.error}."
    return text


def run(quick: bool = False) -> str:
    n_docs, n_chunks, rounds = (40, 2, 1) if quick else (100, 4, 2)
    models = {k: v for k, v in MODELS.items() if v.exists()}
    work = make_workload(str(models["q8_0"]), n_docs, lo=20, hi=400, seed=1)
    # [CLS] query [SEP] document [SEP]: the query's pieces plus the document's count.
    q_pieces = count_tokens(str(models["q8_0"]), QUERY) - 2
    pair_lengths = [q_pieces + n + 1 for n in work.tokens]
    rows: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        ce = _CrossEncoder(work.texts, tmp)
        try:
            ce.wait_ready()
            for name, path in models.items():
                rows += _bench(name, path, work.texts, n_chunks, rounds, ce)
        finally:
            ce.close()
    note = (
        f"_One query, {n_docs} documents of 20–400 tokens ({work.total_tokens:,} tokens), "
        f"best of {rounds} round(s); 'speed-up' is ours' advantage (median of paired chunks). "
        f"{_ce_note(ce, pair_lengths)}_"
    )
    body = table(["alternative", "pairs/s", "seconds", "ours' speed-up"], rows)
    return f"## Reranking (issue #4)\n\n{note}\n\n{body}"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
