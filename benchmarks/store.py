"""Vector store (issue #5) in the combined report: ``bench_store`` at full or quick size."""

from __future__ import annotations

import sys

from benchmarks import bench_store

__all__ = ["run"]


def run(quick: bool = False) -> str:
    sizes = ["--rows", "5000", "--queries", "50"] if quick else ["--compare-build-memory"]
    return "## Vector store (issue #5)\n\n" + bench_store.main(sizes)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
