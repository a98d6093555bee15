"""Kernels (issue #17): f16 / bf16 / q8_0 weights against this machine's float32 GEMM.

``python -m benchmarks.kernels [--quick]``. In one run, interleaved chunk by chunk and in two
rounds: embedding (``LlamaCppEmbedding.embed`` at defaults) and reranking
(``LlamaCppRerank.score``) per weight type, their GFLOP/s as a fraction of numpy's float32
GEMM measured in the same run, parity with the PyTorch references, a per-op profile of one
embedding and one rerank decode, and the settings (threads, micro-batch, flash attention).

Everything is timed in CPU time: the machine is shared by several jobs (load averages of 10–20
on 2 cores), so wall time mostly measures the scheduler. Rates are per CPU-second times the
number of cores — what the two cores do when they are ours; numpy's GEMM is measured the
same way (one OpenBLAS thread, that thread's CPU time, times the cores).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._hardware import bert_flops, matmul_per_core
from benchmarks._opprofile import GROUPS, profile_decode
from benchmarks._report import table
from benchmarks._timing import interleave, paired_ratio, total
from benchmarks._workers import ROOT
from benchmarks._workload import make_workload
from benchmarks.tools.quantize import SHARED, cached

__all__ = ["run"]

EMBED = {
    "f16": SHARED / "all-MiniLM-L6-v2-f16.gguf",
    "bf16": ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf",
    "q8_0": ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf",
}
RERANK_F16 = SHARED / "minilm-toy-reranker-f16.gguf"
RERANK_Q8 = ROOT / "models" / "minilm-toy-reranker-q8_0.gguf"
QUERY = "How does the with statement call __enter__ and __exit__ on a context manager?"
CORES = os.cpu_count() or 1


def _models() -> tuple[dict[str, Path], dict[str, Path]]:
    from llama_index_crab.models.weights import f32_copy

    embed = dict(EMBED)
    embed["f32"] = f32_copy(EMBED["bf16"])  # the default on AVX-512: widened from bf16
    rerank = {
        "f16": RERANK_F16,
        "bf16": cached(RERANK_F16),
        "q8_0": RERANK_Q8,
        "f32": f32_copy(RERANK_F16),  # weights="f32"
    }
    return embed, rerank


def _shape(path: Path) -> tuple[int, int, int]:
    from llama_index_crab.models.gguf import read_metadata

    meta = read_metadata(path)
    keys = ("block_count", "embedding_length", "feed_forward_length")
    n_layer, n_embd, n_ff = (int(str(meta[f"bert.{k}"])) for k in keys)
    return n_layer, n_embd, n_ff


def _cpu_timed(fn: Callable[[int], Any]) -> Callable[[int], float]:
    def call(chunk: int) -> float:
        start = time.process_time()
        fn(chunk)
        return time.process_time() - start

    return call


def _parity(embed: dict[str, Path], rerank: dict[str, Path]) -> dict[str, tuple[str, str]]:
    import json

    from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank

    ref_e = json.loads((SHARED / "reference" / "embeddings.json").read_text())["texts"]
    ref_r = json.loads((SHARED / "reference" / "rerank.json").read_text())["queries"]
    out: dict[str, tuple[str, str]] = {}
    for name in embed:
        with LlamaCppEmbedding(embed[name], allow_empty=True, weights="file") as m:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = m.embed([t["text"] for t in ref_e])
        want = np.array([t["mean"] for t in ref_e], dtype=np.float32)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        cos = f"{float(np.min(np.sum(got * want, axis=1))):.5f}"
        delta = "-"
        if name in rerank:
            r = LlamaCppRerank(rerank[name], scores="raw", weights="file")
            worst = 0.0
            for q in ref_r:
                scores = r.score(q["query"], [d["document"] for d in q["documents"]])
                worst = max(
                    worst, *(abs(s - d["logit_hf_pair"]) for s, d in zip(scores, q["documents"]))
                )
            r.close()
            delta = f"{worst:.4f}"
        out[name] = (cos, delta)
    return out


def _throughput(
    embed: dict[str, Path], rerank: dict[str, Path], quick: bool
) -> tuple[list[list[object]], dict[str, float], dict[str, float], str, float]:
    from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank

    n_texts, chunk, n_docs, rounds = (24, 12, 16, 1) if quick else (60, 20, 30, 4)
    work = make_workload(str(EMBED["q8_0"]), n_texts)
    docs = make_workload(str(EMBED["q8_0"]), n_docs, lo=20, hi=400, seed=1)
    ems = {k: LlamaCppEmbedding(str(p), weights="file") for k, p in embed.items()}
    rrs = {k: LlamaCppRerank(p, scores="raw", weights="file") for k, p in rerank.items()}
    for m in ems.values():
        m.embed(work.texts[:4])
    n_chunks = n_texts // chunk
    dchunk = n_docs // n_chunks
    alts: dict[str, Callable[[int], float]] = {}
    for k, m in ems.items():
        alts[f"embed {k}"] = _cpu_timed(
            lambda i, m=m: m.embed(work.texts[i * chunk : (i + 1) * chunk])
        )
    for k, r in rrs.items():
        alts[f"rerank {k}"] = _cpu_timed(
            lambda i, r=r: r.score(QUERY, docs.texts[i * dchunk : (i + 1) * dchunk])
        )
    gemm = [matmul_per_core()]
    load = os.getloadavg()[0]
    times = interleave(alts, n_chunks, rounds=rounds, label="kernels ")
    gemm.append(matmul_per_core())
    note = f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
    for m in ems.values():
        m.close()
    for r in rrs.values():
        r.close()
    peak = max(g.gflops for g in gemm) * CORES
    shape = _shape(EMBED["q8_0"])
    e_flops = bert_flops(work.tokens[: n_chunks * chunk], *shape)
    q_pieces = len(ems["q8_0"].runner.tokenize(QUERY))
    pairs = [q_pieces + n + 1 for n in docs.tokens[: n_chunks * dchunk]]
    r_flops = bert_flops(pairs, *_shape(RERANK_Q8))
    rows: list[list[object]] = []
    # Speed-ups: the median over chunks of q8_0's CPU time / this one's on the same chunk.
    e_speed: dict[str, float] = {}
    r_speed: dict[str, float] = {}
    for k in embed:
        cpu = total(times[f"embed {k}"], rounds)
        e_speed[k] = 1 / paired_ratio(times[f"embed {k}"], times["embed q8_0"])
        rate = work.total_tokens / cpu * CORES
        row: list[object] = [k, f"{rate:,.0f}", f"{e_speed[k]:.2f}×"]
        row += [f"{e_flops / cpu * CORES / 1e9:.0f}", f"{e_flops / cpu * CORES / 1e9 / peak:.0%}"]
        if k in rerank:
            rcpu = total(times[f"rerank {k}"], rounds)
            r_speed[k] = 1 / paired_ratio(times[f"rerank {k}"], times["rerank q8_0"])
            rg = r_flops / rcpu * CORES / 1e9
            row += [f"{len(pairs) / rcpu * CORES:.1f}", f"{r_speed[k]:.2f}×"]
            row += [f"{rg:.0f}", f"{rg / peak:.0%}"]
        else:
            row += ["-", "-", "-", "-"]
        rows.append(row)
    desc = (
        f"Embedding: {n_texts} texts of {min(work.tokens)}–{max(work.tokens)} tokens "
        f"({work.total_tokens:,} tokens, {shape_note(shape)}); rerank: one query × {len(pairs)} "
        f"documents ({sum(pairs):,} pair tokens); {n_chunks} interleaved chunks × {rounds} "
        f"round(s), CPU time (rates: the fastest round; × q8_0: the median over the "
        f"{n_chunks * rounds} chunks of q8_0's time on the chunk / this one's); {note}. "
        f"numpy float32 {gemm[0].size}² GEMM on one "
        f"OpenBLAS thread: {', '.join(f'{g.gflops:.0f}' for g in gemm)} GFLOP/s per core "
        f"(before, after; the best × {CORES} cores = {peak:.0f} GFLOP/s is the reference)."
    )
    return rows, e_speed, r_speed, desc, peak / CORES


def shape_note(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]} layers, n_embd {shape[1]}, FFN {shape[2]}"


def _profiles(embed: dict[str, Path], rerank: dict[str, Path], core_gemm: float) -> str:
    from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank

    work = make_workload(str(EMBED["q8_0"]), 40, lo=5, hi=120, seed=3)
    with LlamaCppEmbedding(EMBED["q8_0"]) as m:
        seqs = m._encode(m.runner, work.texts, "")
        docs = make_workload(str(EMBED["q8_0"]), 12, lo=20, hi=200, seed=1).texts
        r = LlamaCppRerank(RERANK_Q8)
        pairs = [p[0] for p in r._pairs(r.runner, QUERY, docs)]
        r.close()
    e_batch, r_batch = _pack(seqs), _pack(pairs)
    rows: list[list[object]] = []
    for job, models, batch, pooling in (
        ("embed", embed, e_batch, "mean"),
        ("rerank", rerank, r_batch, "rank"),
    ):
        for k, path in models.items():
            p = profile_decode(path, batch, pooling=pooling)
            step = p.stepped
            top = sorted(p.ops.items(), key=lambda kv: -kv[1])[:4]
            n_layer, n_embd, n_ff = _shape(path)
            dense = p.tokens * n_layer * 2 * (4 * n_embd * n_embd + 2 * n_embd * n_ff)
            mm = dense / (p.cpu * p.groups[GROUPS[0]] / step) / 1e9
            rows.append(
                [
                    f"{job} {k}",
                    f"{len(batch)} seqs, {p.tokens} tokens",
                    f"{p.cpu * 1e3:.1f}",
                    *(f"{p.groups[g] / step:.0%}" for g in GROUPS),
                    f"{mm:.0f} ({mm / core_gemm:.0%})",
                    ", ".join(f"{o} {v / step:.0%}" for o, v in top),
                ]
            )
    head = ["decode", "batch", "CPU ms", *GROUPS, "matmul GFLOP/s (of 1-core GEMM)", "top ops"]
    return table(head, rows)


def _pack(seqs: list[list[int]], budget: int = 512) -> list[list[int]]:
    out: list[list[int]] = []
    for s in seqs:
        if sum(len(x) for x in out) + len(s) <= budget:
            out.append(s)
    return out


def _settings(embed: dict[str, Path], quick: bool) -> str:
    """Threads and contexts, micro-batch, flash attention: f32 and q8_0 embedding."""
    from llama_index_crab import LlamaCppEmbedding

    configs: dict[str, dict[str, Any]] = {
        "defaults (2 contexts × 1 thread, batch_tokens 512, flash on)": {},
        "1 context × 2 threads": {"n_contexts": 1},
        "batch_tokens 128": {"batch_tokens": 128},
        "batch_tokens 256": {"batch_tokens": 256},
        "flash attention off": {"flash_attn": False},
    }
    n, chunk = (12, 6) if quick else (30, 10)
    work = make_workload(str(EMBED["q8_0"]), n, seed=2)
    models = {
        (w, c): LlamaCppEmbedding(str(embed[w]), weights="file", **kw)
        for w in ("f32", "q8_0")
        for c, kw in configs.items()
    }
    for m in models.values():
        m.embed(work.texts[:2])
    alts = {
        f"{w} | {c}": _cpu_timed(lambda i, m=m: m.embed(work.texts[i * chunk : (i + 1) * chunk]))
        for (w, c), m in models.items()
    }
    times = interleave(alts, n // chunk, label="settings ")
    for m in models.values():
        m.close()
    rows: list[list[object]] = []
    for c in configs:
        row: list[object] = [c]
        for w in ("f32", "q8_0"):
            cpu = sum(times[f"{w} | {c}"])
            base = sum(times[f"{w} | {next(iter(configs))}"])
            row.append(f"{work.total_tokens / cpu * CORES:,.0f} ({base / cpu:.2f}×)")
        rows.append(row)
    return (
        f"{n} texts ({work.total_tokens:,} tokens), {n // chunk} interleaved chunks, CPU time "
        "× cores; (×) against the defaults of the same weights.\n\n"
        + table(["setting", "f32 tokens/s", "q8_0 tokens/s"], rows)
    )


def run(quick: bool = False) -> str:
    """The kernels section of the report (markdown)."""
    from llama_index_crab.models.weights import choose

    embed, rerank = _models()
    parity = _parity(embed, rerank)
    rows, e_speed, r_speed, desc, core_gemm = _throughput(embed, rerank, quick)
    for row in rows:
        row += list(parity[str(row[0])])
    found = choose(EMBED["bf16"])
    weights, why = found.kind, f"weights='auto' timed {found.describe()}"
    head = [
        "weights",
        "embed tokens/s",
        "× q8_0",
        "GFLOP/s",
        "of GEMM",
        "rerank pairs/s",
        "× q8_0",
        "GFLOP/s",
        "of GEMM",
        "min cos vs PyTorch",
        "max \\|Δ logit\\|",
    ]
    speedups = ", ".join(
        f"{k} {e_speed[k]:.2f}× / {r_speed[k]:.2f}×" for k in ("f16", "bf16", "f32")
    )
    lines = [
        "## Kernels: weight types against the machine (issue #17)",
        "",
        desc,
        "",
        table(head, rows),
        "",
        f"Against q8_0 (embedding / rerank): {speedups}; f32 against bf16: "
        f"{e_speed['f32'] / e_speed['bf16']:.2f}× / {r_speed['f32'] / r_speed['bf16']:.2f}×. "
        f"Default weights on this machine: {weights} ({why}). f32 rows: float32 copies "
        "(``weights='f32'``) of the bf16 embedder and of the f16 reranker.",
        "",
        "### Where one decode spends its time (one thread, CPU time, per ggml op)",
        "",
        _profiles(embed, rerank, core_gemm),
        "",
        "### Settings, per weight type",
        "",
        _settings(embed, quick),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["--only", "kernels", *sys.argv[1:]])
