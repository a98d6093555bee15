"""Markdown tables and the report header (machine, library versions)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["RESULTS", "cpu_model", "header", "table", "write_report"]

RESULTS = Path(__file__).resolve().parent / "results"
_LIBRARIES = ("llama-index-crab", "llama-cpp-python", "numpy", "llama-index-core")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; numbers right-aligned, everything else left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(quick: bool, extra: dict[str, str] | None = None) -> str:
    """The report's title and a table of machine and library facts."""
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": _commit(),
        "mode": "quick (smoke run, numbers are rough)" if quick else "full",
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores ({platform.machine()})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": platform.python_version(),
        **{name: _version(name) for name in _LIBRARIES},
        **(extra or {}),
    }
    rows = [(k, v) for k, v in facts.items()]
    return "# llama_index_crab benchmarks\n\n" + table(["", ""], rows)


def write_report(text: str, quick: bool) -> Path:
    """Write the report to results/report.md (report-quick.md for a quick run)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("report-quick.md" if quick else "report.md")
    path.write_text(text.rstrip() + "\n")
    return path
