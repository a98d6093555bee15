"""Each example runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _models import ROOT


def run(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_embeddings_example() -> None:
    out = run("embeddings", "hello", "world")
    assert "dim 384" in out and "L2 norm:   1.000000" in out


def test_semantic_search_example() -> None:
    out = run("semantic_search", "What does the yield keyword do?")
    top = out.split("What does the yield keyword do?")[1].splitlines()[1]
    assert "[yield]" in top


def test_reranker_example() -> None:
    out = run("reranker", "How are exceptions raised?")
    lines = [l for l in out.splitlines() if l[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert len(lines) == 5
    scores = [float(l.split()[1]) for l in lines]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_rag_recipe_example(database_url: str) -> None:
    out = run(
        "rag_recipe", "What does the with statement do?", env={"CRAB_DATABASE_URL": database_url}
    )
    answer = out.split("answer:", 1)[1].split("sources:")[0]
    assert len(answer.split()) >= 3
    assert out.count(".md") == 3
