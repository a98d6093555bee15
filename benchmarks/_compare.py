"""Alternatives compared chunk by chunk: the results table and the targets table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks._report import table
from benchmarks._timing import Chunked, paired_ratio, total
from benchmarks._workers import WorkerError

__all__ = ["Alternative", "results_table", "targets_table"]


@dataclass
class Alternative:
    """One way to do the work. ``call(start, stop)`` handles items[start:stop] and returns
    ``{"seconds": s, "probe": first output vectors}``; ``reference`` names the alternative
    that ratios and the probe parity are taken against."""

    label: str
    weights: str
    reference: str
    call: Callable[[int, int], dict[str, Any]]
    probe: np.ndarray | None = None
    error: str = ""
    bounds: Sequence[tuple[int, int]] = field(default_factory=list)

    def chunk(self, i: int) -> float:
        if self.error:
            return math.nan
        start, stop = self.bounds[i]
        try:
            got = self.call(start, stop)
        except WorkerError as exc:
            self.error = f"crashed ({exc})"
            return math.nan
        if start == 0:
            self.probe = np.asarray(got["probe"], dtype=np.float32)
        return float(got["seconds"])


def _min_cos(a: np.ndarray | None, b: np.ndarray | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{float(np.min(np.sum(a * b, axis=1))):.5f}"


def results_table(
    alts: dict[str, Alternative], times: Chunked, rounds: int, n_items: int, n_tokens: int
) -> str:
    """Totals, rates, ratio to the reference (median over chunks, and of the totals), parity."""
    rows: list[list[object]] = []
    for key, alt in alts.items():
        ref = alts[alt.reference]
        seconds = total(times[key], rounds)
        if alt.error or not math.isfinite(seconds):
            rows.append([alt.label, alt.weights, alt.error or "failed", "", "", "", "", ""])
            continue
        ratio = paired_ratio(times[key], times[alt.reference])
        by_total = seconds / total(times[alt.reference], rounds)
        rows.append(
            [
                alt.label,
                alt.weights,
                round(seconds, 1),
                n_items / seconds,
                n_tokens / seconds,
                f"{ratio:.2f}×",
                f"{by_total:.2f}×",
                _min_cos(alt.probe, ref.probe),
            ]
        )
    heads = ["alternative", "weights", "total s", "texts/s", "tokens/s"]
    heads += ["ours is × (median chunk)", "(totals)", "min cos"]
    return table(heads, rows)


def targets_table(
    columns: Sequence[str],
    times: Chunked,
    alts: dict[str, Alternative],
    goals: Sequence[tuple[str, float, dict[str, str]]],
) -> str:
    """One row per goal ``(label, factor, {column: alternative})``; columns are our variants."""
    rows: list[list[object]] = []
    for label, goal, keys in goals:
        row: list[object] = [f"ours ≥ {goal}× {label}"]
        for col in columns:
            key = keys.get(col)
            if key is None or key not in alts or alts[key].error:
                row.append("n/a")
                continue
            ratio = paired_ratio(times[key], times[col])
            row.append(f"{ratio:.2f}× {'met' if ratio >= goal else 'MISSED'}")
        rows.append(row)
    return table(["target (median chunk ratio)", *columns], rows)
