"""Packing sequences into llama.cpp batches: pure, no llama.cpp needed."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_batches"]


def plan_batches(lengths: Sequence[int], max_tokens: int, max_seqs: int) -> list[list[int]]:
    """Group sequence indices into batches of at most ``max_tokens`` tokens, ``max_seqs`` sequences.

    Sequences are taken longest first, so each batch holds sequences of similar length: a
    non-causal model attends over the whole micro-batch under a mask, so mixing one long and
    many short sequences wastes work. A sequence longer than ``max_tokens`` gets a batch of its
    own (the caller guarantees it fits the context). Callers restore input order from the
    returned indices.
    """
    if max_tokens < 1 or max_seqs < 1:
        raise ValueError(f"max_tokens and max_seqs must be positive, got {max_tokens}, {max_seqs}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if current and (used + n > max_tokens or len(current) >= max_seqs):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches
