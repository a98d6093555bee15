"""Line plots through matplotlib, run in .venv-st so the project venv needs no matplotlib.

Driver: ``plot_lines(python, spec)``; worker: ``python -m benchmarks.plot`` reads the spec
(JSON: title, xlabel, ylabel, x, series {name: [y...]}, out) on stdin and writes the PNG.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from benchmarks._workers import ROOT

__all__ = ["plot_lines"]


def plot_lines(python: str, spec: dict[str, Any]) -> str:
    """Draw ``spec`` with ``python``'s matplotlib; returns "" or why no plot was made."""
    proc = subprocess.run(
        [python, "-m", "benchmarks.plot"],
        input=json.dumps(spec),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {proc.returncode}"
    return ""


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = json.load(sys.stdin)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, ys in spec["series"].items():
        ax.plot(spec["x"], ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(spec["x"], [str(x) for x in spec["x"]])
    ax.set(title=spec["title"], xlabel=spec["xlabel"], ylabel=spec["ylabel"])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(spec["out"])


if __name__ == "__main__":
    main()
