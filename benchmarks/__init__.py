"""Benchmarks for llama_index_crab: ``python -m benchmarks [--quick]`` writes results/report.md.

Each benchmark module exposes ``run(quick: bool) -> str`` (one markdown section) and can be run
alone (``python -m benchmarks.embed``). Shared pieces: ``_report`` (tables, machine header),
``_timing`` (interleaved rounds), ``_workers`` (alternatives driven as JSON-line subprocesses).
"""
