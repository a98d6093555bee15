"""Kill `crab ingest` mid-run: every document is whole or absent; a re-run finishes the job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _models import ROOT
from test_cli import rows

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
TOPICS = [
    "assert",
    "break",
    "continue",
    "del",
    "global",
    "if",
    "import",
    "pass",
    "raise",
    "return",
    "while",
    "with",
]


def _count(database_url: str, collection: str) -> int:
    return len(rows(database_url, collection))


def _ingest(folder: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_index_crab.cli",
            "ingest",
            str(folder),
            "--batch-chunks",
            "4",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_killed_ingest_leaves_whole_documents_and_rerun_completes(
    tmp_path: Path, database_url: str, collection_name: str
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for topic in TOPICS:
        shutil.copy(CORPUS / f"{topic}.md", folder / f"{topic}.md")
    env = {**os.environ, "CRAB_DATABASE_URL": database_url}

    reference = f"{collection_name}_ref"
    done = _ingest(folder, {**env, "CRAB_COLLECTION": reference})
    assert done.wait(timeout=300) == 0
    expected = rows(database_url, reference)
    per_doc = {doc: [r for r in expected if r[0] == doc] for doc in {r[0] for r in expected}}
    assert len(per_doc) == len(TOPICS)

    env["CRAB_COLLECTION"] = collection_name
    victim = _ingest(folder, env)
    deadline = time.monotonic() + 300
    while _count(database_url, collection_name) == 0 and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    partial = rows(database_url, collection_name)
    assert 0 < len(partial) < len(expected), "the kill should land mid-ingest"
    for doc in {r[0] for r in partial}:
        assert [r for r in partial if r[0] == doc] == per_doc[doc]  # whole or absent

    rerun = _ingest(folder, env)
    assert rerun.wait(timeout=300) == 0
    assert rows(database_url, collection_name) == expected  # exactly one copy of every chunk
