"""Interleaved timing on a shared, noisy machine.

The texts are cut into chunks; every alternative embeds chunk 1, then every alternative chunk 2,
and so on, the order reversed from one chunk to the next. Alternatives are thus compared on
the same texts a few seconds apart, and a burst of background load hits only the pairs it
overlaps: the paired ratio per chunk, summarised by its median, shrugs such bursts off.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Mapping

__all__ = ["Chunked", "interleave", "paired_ratio", "total"]

Chunked = dict[str, list[float]]  # name -> seconds per chunk (summed over rounds' chunks)


def interleave(
    alternatives: Mapping[str, Callable[[int], float]],
    n_chunks: int,
    *,
    rounds: int = 1,
    label: str = "",
) -> Chunked:
    """Call ``alternatives[name](chunk)`` for every chunk, interleaved; seconds per call.

    Each callable times its own pass (setup and inter-process traffic stay outside) and
    returns NaN once it has failed. Chunk 0 runs once untimed first, as a warm-up. With
    several rounds the lists hold ``rounds * n_chunks`` entries, round after round.
    """
    names = list(alternatives)
    for name in names:
        alternatives[name](0)  # warm-up: first-call allocations and caches, not timed
    times: Chunked = {n: [] for n in names}
    step = 0
    for r in range(rounds):
        for chunk in range(n_chunks):
            for name in names if step % 2 == 0 else reversed(names):
                times[name].append(alternatives[name](chunk))
            step += 1
            done = ", ".join(f"{n} {times[n][-1]:.1f}" for n in names)
            print(f"  {label}round {r + 1} chunk {chunk + 1}/{n_chunks}: {done}", file=sys.stderr)
    return times


def total(seconds: list[float], rounds: int) -> float:
    """Seconds for one pass over all chunks: the fastest round."""
    n = len(seconds) // rounds
    return min(sum(seconds[i * n : (i + 1) * n]) for i in range(rounds))


def paired_ratio(seconds: list[float], reference: list[float]) -> float:
    """Median over chunks of seconds / reference seconds on the same chunk."""
    return statistics.median(s / r for s, r in zip(seconds, reference, strict=True))
