"""Which weight type suits this CPU: bf16 where it has bf16 dot products, else q8_0."""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["BF16_FLAGS", "cpu_flags", "preferred_weights"]

# llama.cpp multiplies bf16 weights with AVX512-BF16 dot products (AMX-BF16 CPUs have them
# too); elsewhere bf16 is converted to f32 and q8_0 is the faster choice.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    """``("bf16" | "q8_0", why)`` for a CPU with these flags (this machine's by default)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    found = [f for f in BF16_FLAGS if f in have]
    if found:
        return "bf16", f"the CPU has {' and '.join(found)}"
    return "q8_0", f"the CPU has none of {', '.join(BF16_FLAGS)}"
