"""Embedding throughput (issue #3): ours vs llama-cpp-python and sentence-transformers.

``python -m benchmarks.embed [--quick]``. Every alternative embeds the same texts in the same
run, chunk by chunk and interleaved (see ``_timing``); ratios are medians of per-chunk ratios.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._compare import Alternative, results_table, targets_table
from benchmarks._hardware import Matmul, bert_flops, best_matmul, measure_matmul
from benchmarks._report import table
from benchmarks._st_env import ensure_venv, st_model_dir
from benchmarks._sweep import sweep
from benchmarks._timing import interleave, total
from benchmarks._workers import ROOT, Worker, write_texts
from benchmarks._workload import Workload, make_workload

__all__ = ["run"]

MODELS = {
    "q8_0": ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf",
    "f16": ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2-f16.gguf",
}
ST_BATCHES = (8, 32)


def _ours(model: Any, texts: list[str]) -> Callable[[int, int], dict[str, Any]]:
    def call(start: int, stop: int) -> dict[str, Any]:
        t = time.perf_counter()
        vectors = model.embed(texts[start:stop])
        return {"seconds": time.perf_counter() - t, "probe": vectors[:8]}

    return call


def _workers(
    tmp: str, work: Workload, models: dict[str, Path], st_python: Path | None
) -> dict[str, Worker]:
    """Start every worker process; they load their models while the caller loads ours."""
    texts = write_texts(work.texts, tmp)
    workers: dict[str, Worker] = {}
    for name, path in models.items():
        for mode in ("loop", "list"):
            args = ["--texts", texts, "--model", str(path), "--mode", mode]
            workers[f"{mode} {name}"] = Worker(sys.executable, "benchmarks.llama_worker", args)
    if st_python is not None:
        args = ["--texts", texts, "--model-dir", str(st_model_dir())]
        workers["st"] = Worker(str(st_python), "benchmarks.st_worker", args)
    for w in workers.values():
        w.start()
    return workers


def _alternatives(
    work: Workload, workers: dict[str, Worker], ours: dict[str, Any]
) -> dict[str, Alternative]:
    alts: dict[str, Alternative] = {}
    for name, model in ours.items():
        ref = f"ours {name}"
        alts[ref] = Alternative(
            "ours: `LlamaCppEmbedding.embed(texts)`", name, ref, _ours(model, work.texts)
        )
        if f"loop {name}" in workers:
            alts[f"a {name}"] = Alternative(
                "(a) `Llama.embed(text)` per text", name, ref, workers[f"loop {name}"].run
            )
            alts[f"b {name}"] = Alternative(
                "(b) `Llama.embed(texts)`, defaults", name, ref, workers[f"list {name}"].run
            )
    if "st" in workers:
        ref = "ours f16" if "ours f16" in alts else "ours q8_0"
        for bs in ST_BATCHES:

            def call(start: int, stop: int, bs: int = bs) -> dict[str, Any]:
                return workers["st"].run(start, stop, batch_size=bs)

            alts[f"c {bs}"] = Alternative(
                f"(c) sentence-transformers, batch {bs}", "f32 (PyTorch)", ref, call
            )
    return alts


def _goals(names: list[str]) -> list[tuple[str, float, dict[str, str]]]:
    goals = [
        ("(a) per-text loop", 2.0, {f"ours {n}": f"a {n}" for n in names}),
        ("(b) `Llama.embed(list)`", 1.5, {f"ours {n}": f"b {n}" for n in names}),
    ]
    for bs in ST_BATCHES:
        label = f"(c) sentence-transformers, batch {bs}"
        goals.append((label, 1.5, {f"ours {n}": f"c {bs}" for n in names}))
    return goals


def _hardware(work: Workload, matmuls: list[Matmul], ours_tps: dict[str, float]) -> str:
    from llama_index_crab.models.gguf import read_metadata

    meta = read_metadata(MODELS["q8_0"])
    keys = ("block_count", "embedding_length", "feed_forward_length")
    shape = [int(str(meta[f"bert.{k}"])) for k in keys]
    per_token = bert_flops(work.tokens, *shape) / work.total_tokens
    peak = max(m.gflops for m in matmuls)
    rows: list[list[object]] = [
        [
            f"numpy float32 {m.size}² matmul, OpenBLAS {m.setting}",
            f"{m.gflops:.0f} GFLOP/s",
            m.kernel,
        ]
        for m in matmuls
    ]
    rows.append(
        [
            f"model: {shape[0]} layers, n_embd {shape[1]}, FFN {shape[2]}",
            f"{per_token / 1e6:.1f} MFLOP/token",
            "dense layers + attention within each text, this workload",
        ]
    )
    for name, tps in ours_tps.items():
        gf = tps * per_token / 1e9
        rows.append(
            [
                f"ours {name}: {tps:,.0f} tokens/s",
                f"{gf:.0f} GFLOP/s",
                f"{gf / peak:.0%} of the best matmul",
            ]
        )
    return table(["measure", "value", "note"], rows)


def run(quick: bool = False) -> str:
    """The embedding section of the report (markdown)."""
    from llama_index_crab import LlamaCppEmbedding

    n, chunk = (24, 12) if quick else (1000, 100)
    models = {k: p for k, p in MODELS.items() if p.exists() and (k == "q8_0" or not quick)}
    work = make_workload(str(MODELS["q8_0"]), 1000).head(n)
    st_python, st_note = (
        (None, "skipped (BENCH_NO_ST=1)") if os.environ.get("BENCH_NO_ST") else ensure_venv()
    )
    numpy_python = str(st_python) if st_python else sys.executable  # it has threadpoolctl
    bounds = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    with tempfile.TemporaryDirectory() as tmp:
        workers = _workers(tmp, work, models, st_python)
        try:
            ours = {
                f"ours {k}": LlamaCppEmbedding(str(p), weights="file") for k, p in models.items()
            }
            for m in ours.values():
                m.embed(work.texts[:8])
            for w in workers.values():
                w.wait_ready()
            matmuls = measure_matmul(numpy_python, n=1024 if quick else 2048)
            alts = _alternatives(work, workers, {k[5:]: m for k, m in ours.items()})
            for a in alts.values():
                a.bounds = bounds
            load = os.getloadavg()[0]
            times = interleave({k: a.chunk for k, a in alts.items()}, len(bounds), label="embed ")
            load_note = f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
        finally:
            for w in workers.values():
                w.close()
    if not quick:
        matmuls = best_matmul(matmuls, measure_matmul(numpy_python))
    st_info = workers["st"].info if "st" in workers else {}
    d = next(iter(ours.values()))
    st_text = (
        f"sentence-transformers {st_info.get('sentence-transformers')}, torch "
        f"{st_info.get('torch')}, {st_info.get('threads')} threads, max_seq_length "
        f"{st_info.get('max_seq_length')}."
        if st_info
        else f"sentence-transformers: {st_note}."
    )
    lines = [
        "## Embeddings",
        "",
        f"{n:,} texts cut from `examples/corpus/python-reference` (seed 0), "
        f"{min(work.tokens)}–{max(work.tokens)} tokens each, {work.total_tokens:,} tokens in all "
        f"([CLS]/[SEP] included), in {len(bounds)} chunks of {chunk}: every alternative embeds a "
        f"chunk before the next chunk starts, order reversed each chunk; {load_note}. "
        f"Ours at defaults: batch_tokens {d.batch_tokens}, n_contexts {d.n_contexts}, "
        f"flash_attn {d.flash_attn}. `min cos`: the first 8 vectors against ours on the same GGUF "
        f"(sentence-transformers: against ours f16, or q8_0 without it). {st_text}",
        "",
        results_table(alts, times, 1, n, work.total_tokens),
        "",
        "### Targets (issue #3)",
        "",
        targets_table(list(ours), times, alts, _goals([k[5:] for k in ours])),
        "",
        "### Against the hardware",
        "",
        _hardware(work, matmuls, {k[5:]: work.total_tokens / total(times[k], 1) for k in ours}),
        "",
        sweep(
            str(MODELS["q8_0"]),
            work.head(n if quick else 300),
            chunk=chunk,
            plot_python=str(st_python) if st_python else None,
            quick=quick,
        ),
    ]
    for m in ours.values():
        m.close()
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["--only", "embed", *sys.argv[1:]])
