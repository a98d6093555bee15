"""``python -m benchmarks [--quick] [--only NAME ...]``: run the benchmarks, write the report."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time

from benchmarks._report import header, write_report

BENCHMARKS = (
    "embed",
    "rerank",
    "kernels",
    "weights",
    "anchor",
    "int8",
    "store",
    "e2e",
    "quality",
    "distributed",
    "sync",
    "families",
)


def _available() -> list[str]:
    """The benchmark modules present in this checkout (each exposes ``run(quick) -> str``)."""
    return [n for n in BENCHMARKS if importlib.util.find_spec(f"benchmarks.{n}") is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run, well under a minute")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    names = args.only or _available()
    start = time.perf_counter()
    sections = [header(args.quick)]
    for name in names:
        print(f"running benchmarks.{name} ...", file=sys.stderr)
        module = importlib.import_module(f"benchmarks.{name}")
        sections.append(module.run(quick=args.quick))
    sections.append(f"_Total run time {time.perf_counter() - start:.0f} s._")
    report = "\n\n".join(sections)
    path = write_report(report, args.quick)
    print(report)
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
