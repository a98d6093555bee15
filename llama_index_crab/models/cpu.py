"""Which weight type suits this CPU: float32 where llama.cpp's f32 matmuls have AVX-512,
else q8_0 (``benchmarks/kernels.py`` measures them; ``docs/performance.md`` has the numbers)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["F32_FLAGS", "cpu_flags", "preferred_weights"]

# With AVX-512, llama.cpp's float32 matmuls (tinyBLAS, no conversion per block) ran a small
# BERT 1.23x (embedding) / 1.32x (reranking) faster than q8_0 and ~1.2x faster than bf16, bf16
# dot products included. With AVX2 only, f32 was 1.16x q8_0: under the 1.2x bar, so q8_0.
F32_FLAGS = ("avx512f",)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def preferred_weights(flags: Iterable[str] | None = None) -> tuple[str, str]:
    """``("f32" | "q8_0", why)`` for a CPU with these flags (this machine's by default)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    found = [f for f in F32_FLAGS if f in have]
    if found:
        return "f32", f"the CPU has {' and '.join(found)} (float32 matmuls measured fastest)"
    return "q8_0", f"the CPU has none of {', '.join(F32_FLAGS)}"
