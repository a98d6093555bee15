"""Tuning sweep of LlamaCppEmbedding: batch_tokens x n_contexts x flash_attn, interleaved."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks._report import RESULTS, table
from benchmarks._timing import interleave, paired_ratio
from benchmarks._workload import Workload
from benchmarks.plot import plot_lines

__all__ = ["sweep"]

BATCH_TOKENS = (128, 256, 512, 1024, 2048)
N_CONTEXTS = (1, 2)
FLASH = (True, False)


@dataclass(frozen=True)
class Config:
    batch_tokens: int
    n_contexts: int
    flash_attn: bool

    @property
    def name(self) -> str:
        fa = "fa on" if self.flash_attn else "fa off"
        return f"bt {self.batch_tokens}, ctx {self.n_contexts}, {fa}"

    @property
    def series(self) -> str:
        return f"n_contexts {self.n_contexts}, flash_attn {'on' if self.flash_attn else 'off'}"


def sweep(
    model_path: str, work: Workload, *, chunk: int, quick: bool, plot_python: str | None
) -> str:
    """A markdown section: tokens/s per configuration, the best marked, plus a PNG plot."""
    from llama_index_crab import LlamaCppEmbedding

    grid = (512,) if quick else BATCH_TOKENS
    configs = [Config(*c) for c in itertools.product(grid, N_CONTEXTS, FLASH)]
    models = {
        c: LlamaCppEmbedding(
            model_path,
            batch_tokens=c.batch_tokens,
            n_contexts=c.n_contexts,
            flash_attn=c.flash_attn,
        )
        for c in configs
    }
    for m in models.values():
        m.embed(work.texts[:4])

    def timed(c: Config) -> Callable[[int], float]:
        def once(i: int) -> float:
            start = time.perf_counter()
            models[c].embed(work.texts[i * chunk : (i + 1) * chunk])
            return time.perf_counter() - start

        return once

    n_chunks = -(-len(work.texts) // chunk)
    times = interleave({c.name: timed(c) for c in configs}, n_chunks, label="sweep ")
    for m in models.values():
        m.close()
    # Background load only ever slows a chunk down, and 20 configurations make one chunk's
    # pass long, so each configuration is rated by its fastest chunk rather than its total.
    tokens = [sum(work.tokens[i * chunk : (i + 1) * chunk]) for i in range(n_chunks)]
    rate = {c: max(t / s for t, s in zip(tokens, times[c.name], strict=True)) for c in configs}
    best = max(rate, key=lambda c: rate[c])
    default = LlamaCppEmbedding.model_fields
    defaults = Config(
        default["batch_tokens"].default,
        default["n_contexts"].default,
        default["flash_attn"].default,
    )
    series = sorted({c.series for c in configs})
    rows = []
    for bt in grid:
        row: list[object] = [bt]
        for s in series:
            c = next(c for c in configs if c.batch_tokens == bt and c.series == s)
            mark = (" **best**" if c == best else "") + (" (default)" if c == defaults else "")
            row.append(f"{rate[c]:,.0f}{mark}")
        rows.append(row)
    text = [
        f"### Tuning sweep: ours q8_0, tokens/s ({len(work.texts)} texts, "
        f"{work.total_tokens:,} tokens, {n_chunks} interleaved chunks, fastest chunk)",
        "",
        table(["batch_tokens", *series], rows),
        "",
        f"Best: {best.name}, {rate[best]:,.0f} tokens/s. Defaults ({defaults.name}): "
        + (
            f"{rate[defaults]:,.0f} tokens/s, {rate[defaults] / rate[best]:.0%} of the best "
            f"(per chunk they take {paired_ratio(times[defaults.name], times[best.name]):.2f}× "
            "the best's time, median)."
            if defaults in rate
            else "not in this grid."
        ),
    ]
    if plot_python and not quick:
        out = RESULTS / "embed_sweep.png"
        spec = {
            "title": "LlamaCppEmbedding throughput vs batch_tokens",
            "xlabel": "batch_tokens",
            "ylabel": "tokens/s",
            "x": list(grid),
            "out": str(out),
            "series": {s: [rate[c] for c in configs if c.series == s] for s in series},
        }
        problem = plot_lines(plot_python, spec)
        text += [
            "",
            f"![throughput vs batch_tokens]({out.name})"
            if not problem
            else f"(no plot: {problem})",
        ]
    return "\n".join(text)
