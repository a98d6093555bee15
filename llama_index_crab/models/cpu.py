"""This machine as the weights choice sees it: the CPU's model and flags, the llama.cpp build,
and a short timed decode of each weight candidate (``models/weights.py`` decides with it)."""

from __future__ import annotations

import functools
import hashlib
import platform
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "has_bf16_dot", "llama_build", "time_decodes"]

# Flags of CPUs with bf16 dot products (x86 AVX-512 BF16, AVX10; Arm's BF16 extension).
BF16_FLAGS = ("avx512_bf16", "avx10", "bf16")
# What a timed decode embeds: four sequences of ~60 tokens, a typical batch of short texts.
SAMPLE = (
    "A context manager sets something up on entry to a with statement and tears it down on "
    "exit, even when the block raises: files are closed, locks released, transactions "
    "committed or rolled back. The with statement calls __enter__ and binds its result, "
    "then calls __exit__ with the exception, if any."
)


@functools.cache
def _cpuinfo() -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return found


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what the platform says)."""
    info = _cpuinfo()
    return info.get("model name") or info.get("CPU part") or platform.processor() or "unknown"


def has_bf16_dot() -> bool:
    """Whether the CPU says it has bf16 dot products (a bf16 copy is then worth timing)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


@functools.cache
def llama_build() -> str:
    """llama-cpp-python's version and a hash of llama.cpp's system info (the instruction sets
    and backends it was built with): a rebuilt llama.cpp is another build."""
    import sys

    from .bindings import llama_cpp

    info = llama_cpp().llama_print_system_info().decode(errors="replace")
    package = sys.modules.get("llama_cpp")
    if package is not None:
        version = str(package.__version__)
    else:
        from importlib.metadata import version as installed

        version = installed("llama_cpp_python")
    return f"llama-cpp-python {version} {hashlib.sha256(info.encode()).hexdigest()[:12]}"


def time_decodes(
    paths: Mapping[str, Path], *, budget: float = 1.0, rounds: tuple[int, int] = (3, 8)
) -> dict[str, float]:
    """CPU seconds of one decode (a batch of short texts, one thread) per candidate: the best
    of interleaved rounds, at least ``rounds[0]``, more while under ``budget`` seconds, at
    most ``rounds[1]``. One thread and its own CPU time: what the kernels cost, whatever else
    runs on the machine."""
    from .runtime import LlamaRunner

    runners = {k: LlamaRunner(p, n_threads=1, n_contexts=1) for k, p in paths.items()}
    try:
        first = next(iter(runners.values()))
        words = first.tokenize(SAMPLE)
        seqs = [words[i : i + 60] for i in (0, 4, 8, 12)]
        best = {k: float("inf") for k in runners}
        for r in runners.values():
            r.run(seqs)  # warm-up: first-call allocations
        spent, done = 0.0, 0
        while done < rounds[0] or (spent < budget and done < rounds[1]):
            order = list(runners) if done % 2 == 0 else list(reversed(runners))
            for k in order:
                start = time.thread_time()
                runners[k].run(seqs)
                took = time.thread_time() - start
                best[k] = min(best[k], took)
                spent += took
            done += 1
        return best
    finally:
        for r in runners.values():
            r.close()
