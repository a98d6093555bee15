"""How fast this machine multiplies float32 matrices, and how many FLOPs a BERT needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Matmul", "bert_flops", "best_matmul", "matmul_per_core", "measure_matmul"]

# One float32 GEMM timed in a subprocess; {clock}: time.perf_counter (wall) or
# time.thread_time (this thread's CPU time).
_PROBE = """
import json, time
import numpy as np
n = {n}
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range({reps}):
    t = {clock}()
    a @ b
    best = min(best, {clock}() - t)
try:
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"][:1]
except ImportError:
    dep = np.__config__.CONFIG["Build Dependencies"]["blas"]
    blas = [{{"internal_api": dep.get("name"), "version": dep.get("version"),
              "architecture": "(threadpoolctl missing)"}}]
print(json.dumps({{"gflops": 2 * n**3 / best / 1e9, "blas": blas[0] if blas else {{}}}}))
"""


def _probe(python: str, env: dict[str, str], n: int, reps: int, clock: str) -> tuple[float, str]:
    """GFLOP/s of the probe and the OpenBLAS kernel that ran it."""
    code = _PROBE.format(n=n, reps=reps, clock=clock)
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    blas = got["blas"]
    parts = (str(blas.get(k, "")) for k in ("internal_api", "version", "architecture"))
    return float(got["gflops"]), " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Matmul:
    setting: str
    gflops: float
    kernel: str
    size: int


def measure_matmul(python: str = sys.executable, n: int = 2048, reps: int = 20) -> list[Matmul]:
    """numpy float32 matmul GFLOP/s, as this shell sets OpenBLAS up and with its own choice.

    ``python`` needs numpy (threadpoolctl, if present, names the kernel that ran).
    OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE may pin OpenBLAS to an older kernel here (a workaround
    for old OpenBLAS builds); the second measurement unsets both, in that subprocess only.
    """
    pinned = {
        k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
    }
    settings = [("as set", dict(os.environ))]
    if pinned:
        free = {k: v for k, v in os.environ.items() if k not in pinned}
        settings = [
            (f"as set ({pinned.get('OPENBLAS_CORETYPE', '')})", dict(os.environ)),
            ("OPENBLAS_* unset", free),
        ]
    out = []
    for name, env in settings:
        gflops, kernel = _probe(python, env, n, reps, "time.perf_counter")
        out.append(Matmul(name, gflops, kernel, n))
    return out


def matmul_per_core(python: str = sys.executable, n: int = 1024, reps: int = 10) -> Matmul:
    """numpy float32 matmul on one OpenBLAS thread, timed in that thread's CPU time.

    On a machine shared with other jobs wall time says how long the scheduler made us wait;
    CPU time of one thread says what a core does, the figure kernels are compared with.
    OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset so OpenBLAS picks its own kernel.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    env["OPENBLAS_NUM_THREADS"] = "1"
    gflops, kernel = _probe(python, env, n, reps, "time.thread_time")
    return Matmul("1 thread, CPU time", gflops, kernel, n)


def best_matmul(*runs: list[Matmul]) -> list[Matmul]:
    """Per setting, the fastest of several measurements (other load only slows them down)."""
    best: dict[str, Matmul] = {}
    for m in (m for run in runs for m in run):
        if m.setting not in best or m.gflops > best[m.setting].gflops:
            best[m.setting] = m
    return list(best.values())


def bert_flops(lengths: Sequence[int], n_layer: int, n_embd: int, n_ff: int) -> float:
    """Useful FLOPs to encode texts of these token counts with a BERT encoder.

    Per token and layer: Q, K, V, output projections (4·d²) and the FFN (2·d·ff) multiply-adds;
    attention scores and the weighted sum (2·L·d) over the text's own L tokens. Softmax,
    layer norms and GELU (a few %) are left out, and so is the cross-text attention that a
    packed batch computes and masks: the figure counts work any implementation must do.
    """
    dense = 2 * (4 * n_embd * n_embd + 2 * n_embd * n_ff)
    return float(sum(n_layer * (dense * L + 4 * n_embd * L * L) for L in lengths))
