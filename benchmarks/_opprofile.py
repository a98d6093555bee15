"""Where one llama.cpp decode spends its time, per ggml op (llama.cpp's eval callback).

With ``cb_eval`` set, llama.cpp's scheduler computes the graph one node at a time and asks
the callback before and after each node, so the time between the two calls is that node's
compute (on every thread of the context). Nodes are grouped as: matmuls against weights,
attention (flash attention, or the Q·K / softmax / ·V chain without it), and the rest (layer
norms, GELU, bias adds, copies, the embedding lookup and pooling). Per-node stepping adds a
thread-pool wake-up per node, so the sum is a little above a plain decode (both are shown).

The decode runs on one thread, the caller's, and is timed in that thread's CPU time
(``time.thread_time``): on a machine shared with other jobs, wall time mostly measures how
long the scheduler kept us waiting, CPU time what the kernels cost.
"""

from __future__ import annotations

import ctypes
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OpProfile", "profile_decode"]

GROUPS = ("matmul (weights)", "attention", "rest")
_ATTENTION_OPS = {"FLASH_ATTN_EXT", "SOFT_MAX"}


class _Tensor(ctypes.Structure):
    """The head of ggml.h's ``struct ggml_tensor`` (GGML_MAX_DIMS 4, GGML_MAX_SRC 10)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


@dataclass
class OpProfile:
    """Seconds per op (``ggml_op_desc``) and per group, for one decode (best of repeats)."""

    tokens: int
    cpu: float  # CPU seconds of a plain decode, no callback
    ops: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)
    weight_types: str = ""

    @property
    def stepped(self) -> float:
        return sum(self.ops.values())


def _ggml_base() -> Any:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    lib.ggml_op_desc.restype = ctypes.c_char_p
    lib.ggml_op_desc.argtypes = [ctypes.c_void_p]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    return lib


def _group(lib: Any, ptr: int, desc: str) -> str:
    if desc in _ATTENTION_OPS:
        return "attention"
    if desc == "MUL_MAT":
        src0 = _Tensor.from_address(_Tensor.from_address(ptr).src[0])
        return "matmul (weights)" if src0.name.endswith(b".weight") else "attention"
    return "rest"


def profile_decode(
    path: Path,
    seqs: Sequence[Sequence[int]],
    *,
    pooling: str,
    flash_attn: bool = True,
    repeats: int = 3,
) -> OpProfile:
    """Profile decoding ``seqs`` (one micro-batch) with the model at ``path``."""
    import llama_cpp

    from llama_index_crab.models.gguf import pooling_number
    from llama_index_crab.models.runtime import DecodeContext, install_log_callback, model_params

    install_log_callback()
    lib = _ggml_base()
    n = sum(len(s) for s in seqs)
    ubatch = max(512, n)
    mparams, _keep = model_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    times: dict[str, float] = defaultdict(float)
    weight_types: set[str] = set()
    state = {"start": 0.0, "on": False}

    @ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
    def callback(ptr: int, ask: bool, _user: int) -> bool:
        if not state["on"]:
            return False
        if ask:
            state["start"] = time.thread_time()
            return True
        seconds = time.thread_time() - state["start"]
        desc = (lib.ggml_op_desc(ptr) or b"?").decode()
        times[desc] += seconds
        if desc == "MUL_MAT":
            src0 = _Tensor.from_address(_Tensor.from_address(ptr).src[0])
            if src0.name.endswith(b".weight"):
                weight_types.add(lib.ggml_type_name(src0.type).decode())
        times["@" + _group(lib, ptr, desc)] += seconds
        return True

    def context(with_callback: bool) -> Any:
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = p.n_batch = p.n_ubatch = ubatch
        p.n_seq_max = 64
        p.n_threads = p.n_threads_batch = 1
        p.embeddings = True
        p.pooling_type = pooling_number(pooling)
        p.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        p.kv_unified = True
        p.no_perf = True
        if with_callback:
            p.cb_eval = callback
        return llama_cpp.llama_init_from_model(model, p)

    n_embd = int(llama_cpp.llama_model_n_embd_inp(model))
    try:
        best_wall = float("inf")
        plain = context(False)
        c = DecodeContext(plain, ubatch, n_embd)
        c.fill(seqs, None)
        for _ in range(repeats + 1):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(plain), True)
            start = time.thread_time()
            llama_cpp.llama_decode(plain, c.batch)
            best_wall = min(best_wall, time.thread_time() - start)
        llama_cpp.llama_free(plain)
        stepped = context(True)
        c = DecodeContext(stepped, ubatch, n_embd)
        c.fill(seqs, None)
        best: dict[str, float] | None = None
        for i in range(repeats + 1):
            times.clear()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(stepped), True)
            state["on"] = True
            llama_cpp.llama_decode(stepped, c.batch)
            state["on"] = False
            this = dict(times)
            total = sum(v for k, v in this.items() if not k.startswith("@"))
            if i and (best is None or total < sum(v for k, v in best.items() if k[0] != "@")):
                best = this
        llama_cpp.llama_free(stepped)
    finally:
        llama_cpp.llama_model_free(model)
    assert best is not None
    return OpProfile(
        tokens=n,
        cpu=best_wall,
        ops={k: v for k, v in best.items() if not k.startswith("@")},
        groups={g: best.get("@" + g, 0.0) for g in GROUPS},
        weight_types="/".join(sorted(weight_types)),
    )
