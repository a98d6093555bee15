"""`crab ingest` under faults, issue 16 cases 6, 10 and 11: no garbage stored, one bad file
never aborts a folder, deleted files leave, chunking changes re-chunk, big files stream."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _models import EMBEDDER_Q8, ROOT
from _robust import crab, snapshot
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.ingest.files import (
    PART_CHARS,
    FileSet,
    Problem,
    binary_reason,
    find_files,
    read_documents,
)
from llama_index_crab.ingest.local import stale_documents

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
# Run as root, a file of mode 000 is still readable: drop the capabilities that allow it.
AS_USER = (
    [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ]
    if os.geteuid() == 0
    else []
)
# A Python that cannot import the readers extra (as if it were not installed).
NO_READERS = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name in ("pypdf", "bs4") or name.startswith("llama_index.readers.file"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` in Helvetica."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def env(database_url: str, collection_name: str) -> dict[str, str]:
    return {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}


def stored(database_url: str, collection: str) -> dict[str, list[str]]:
    """``{file name: [chunk texts]}`` of a collection."""
    out: dict[str, list[str]] = {}
    for row in snapshot(database_url, collection)[1]:
        out.setdefault(Path(row[2]).name, []).append(row[3])
    return out


def write(folder: Path, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


GOOD = "# Crabs\n\nCrabs walk sideways along the beach at night.\n"


# -- case 6: garbage stored silently ------------------------------------------------------------


def test_without_the_readers_extra_pdf_and_html_are_skipped_naming_it(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(
        tmp_path / "docs",
        {
            "good.md": GOOD,
            "real.pdf": tiny_pdf("Crabs molt their shells"),
            "page.html": "<html><body><p>Crabs have ten legs.</p></body></html>",
        },
    )
    blocker = tmp_path / "no-readers"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_READERS)
    done = crab("ingest", str(folder), env={**env, "PYTHONPATH": str(blocker)})
    assert done.returncode == 0, done.stderr
    for name, suffix in (("real.pdf", ".pdf"), ("page.html", ".html")):
        assert re.search(
            rf"warning: .*{name}: skipped: reading \{suffix} files needs the readers extra "
            r"\(.*\); pip install 'llama-index-crab\[readers\]'",
            done.stderr,
        ), done.stderr
    assert "1 added, 0 updated, 0 unchanged, 2 skipped" in done.stdout
    assert set(stored(database_url, collection_name)) == {"good.md"}


def test_with_the_readers_extra_pdf_and_html_become_their_text(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(
        tmp_path / "docs",
        {
            "real.pdf": tiny_pdf("Crabs molt their shells"),
            "page.html": "<html><head><script>var x = 1;</script></head>"
            "<body><h1>Legs</h1><p>Crabs have <b>ten</b> legs.</p></body></html>",
        },
    )
    result = CliRunner(env=env).invoke(main, ["ingest", str(folder)])
    assert result.exit_code == 0, result.output
    texts = stored(database_url, collection_name)
    assert texts["real.pdf"] == ["Crabs molt their shells"]
    assert texts["page.html"] == ["Legs\n\nCrabs have ten legs."]


def test_binary_content_is_skipped(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    rng = np.random.default_rng(6)
    folder = write(
        tmp_path / "docs",
        {
            "good.md": GOOD,
            "random.pdf": rng.bytes(20_000),
            "random.html": rng.bytes(20_000),
            "random.md": bytes(rng.integers(128, 256, 20_000, dtype=np.uint8)),
            "program.txt": Path(sys.executable).resolve().read_bytes()[:200_000],  # ELF
            "nul.txt": b"text with a NUL \x00 byte, as git decides\n",
            "wide.txt": "UTF-16 is text: héllo wörld 🦀\n".encode("utf-16"),
        },
    )
    result = CliRunner(env=env).invoke(main, ["ingest", str(folder)])
    assert result.exit_code == 0, result.output
    reasons = {
        "random.pdf": "not a PDF",
        "random.html": "binary content",
        "random.md": "binary content (",
        "program.txt": "binary content (an ELF executable)",
        "nul.txt": "binary content (NUL bytes)",
    }
    for name, reason in reasons.items():
        assert re.search(
            rf"warning: .*{re.escape(name)}: skipped: {re.escape(reason)}", result.output
        )
    assert "2 added, 0 updated, 0 unchanged, 5 skipped" in result.output
    texts = stored(database_url, collection_name)
    assert set(texts) == {"good.md", "wide.txt"}
    assert [t.strip() for t in texts["wide.txt"]] == ["UTF-16 is text: héllo wörld 🦀"]


@pytest.mark.parametrize(
    ("head", "binary"),
    [
        (b"plain text\n" * 100, False),
        ("Grüße, 🦀 and ünïcödé\n".encode() * 100, False),
        (b"caf\xe9 au lait, a Latin-1 accent in text\n" * 50, False),
        (b"\x1b[31mred\x1b[0m\tand a bell\x07\n", False),
        (b"", False),
        (b"\x7fELF\x02\x01\x01", True),
        (b"%PDF-1.7\n", True),
        (b"PK\x03\x04rest", True),
        (b"abc\x00def", True),
        (bytes(range(128, 256)) * 10, True),
        (bytes(range(1, 32)) * 10, True),
    ],
)
def test_binary_reason(head: bytes, binary: bool) -> None:
    assert (binary_reason(head) is not None) is binary


# -- case 10: one bad entry aborts a whole folder -----------------------------------------------


def test_bad_entries_are_reported_per_file_and_the_rest_ingested(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(tmp_path / "docs", {"good.md": GOOD})
    (folder / "gone.md").symlink_to(folder / "nowhere.md")
    (folder / "loop.md").symlink_to(folder / "loop.md")
    os.mkfifo(folder / "pipe.txt")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.md"), "w") as latin1_name:
        latin1_name.write("# Cafe\n\nCoffee.\n")
    done = crab("ingest", str(folder), env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    expected = {
        "gone.md": "is a dangling symbolic link",
        "loop.md": "is a symbolic link loop",
        "pipe.txt": "is a FIFO, not a regular file",
        "caf\\xe9.md": "the file name is not valid UTF-8; rename the file",
    }
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    for name, message in expected.items():
        assert any(f"{name}: {message}" in line for line in errors), (name, done.stderr)
    assert errors[-1] == (
        "error: 4 files could not be ingested (listed above); fix them and run again"
    )
    assert "1 added, 0 updated, 0 unchanged, 4 failed" in done.stdout
    assert set(stored(database_url, collection_name)) == {"good.md"}


def test_unreadable_files_and_folders_are_per_file_errors(tmp_path: Path) -> None:
    """(As root, without the capabilities that read any file: the database socket would be
    out of reach too, so this runs the reading step alone.)"""
    folder = write(tmp_path / "docs", {"good.md": GOOD, "secret.md": "# Secret\n"})
    (folder / "secret.md").chmod(0)
    locked = write(folder / "locked", {"inner.md": "# Inner\n"})
    locked.chmod(0)
    code = (
        "import sys\n"
        "from llama_index_crab.ingest.files import find_files, read_documents\n"
        "found = find_files(sys.argv[1:])\n"
        "for p in found.problems: print('problem', p.error, p)\n"
        "for d in read_documents(found.files): print('problem', d.error, d) "
        "if hasattr(d, 'error') else print('read', d.ref_doc_id)\n"
    )
    try:
        done = subprocess.run(
            [*AS_USER, sys.executable, "-c", code, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"read {folder / 'good.md'}" in lines
    assert f"problem True {folder / 'secret.md'}: cannot be read: permission denied; " in (
        done.stdout
    )
    assert f"problem True {locked}: cannot be listed: permission denied" in done.stdout
    assert len(lines) == 3


def test_a_missing_path_does_not_stop_the_others(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(tmp_path / "docs", {"good.md": GOOD})
    result = CliRunner(env=env).invoke(main, ["ingest", str(tmp_path / "typo"), str(folder)])
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'typo'}: does not exist" in result.output
    assert set(stored(database_url, collection_name)) == {"good.md"}


# -- case 11: deleted files, big files, chunking changes, model identity, repeats -------------


def test_deleted_and_renamed_files_are_pruned(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(
        tmp_path / "docs",
        {"a.md": GOOD, "b.md": "# B\n\nBees buzz.\n", "c.md": "# C\n\nCats purr.\n"},
    )
    outside = write(tmp_path / "other", {"x.md": "# X\n\nAn explicit file.\n"}) / "x.md"
    runner = CliRunner(env=env)
    assert runner.invoke(main, ["ingest", str(folder), str(outside)]).exit_code == 0
    (folder / "b.md").unlink()
    (folder / "c.md").rename(folder / "d.md")
    outside.unlink()  # given as a file, not under a folder: never pruned

    again = runner.invoke(main, ["ingest", str(folder)])
    assert again.exit_code == 0, again.output
    assert "1 added, 0 updated, 1 unchanged, 2 removed;" in again.output
    assert set(stored(database_url, collection_name)) == {"a.md", "d.md", "x.md"}

    (folder / "a.md").unlink()
    kept = runner.invoke(main, ["ingest", str(folder), "--no-prune"])
    assert "0 added, 0 updated, 1 unchanged;" in kept.output
    assert set(stored(database_url, collection_name)) == {"a.md", "d.md", "x.md"}


def test_prune_spares_folders_that_could_not_be_listed() -> None:
    found = FileSet(folders=[Path("/data")], seen={"/data/a.md"}, unlisted=["/data/locked"])
    known = ["/data/a.md", "/data/gone.md", "/data/locked/x.md", "/elsewhere/y.md", "/data2/z.md"]
    assert stale_documents(found, known) == ["/data/gone.md"]


def test_a_chunking_change_rechunks(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(tmp_path / "docs", {"with.md": (CORPUS / "with.md").read_text()})
    runner = CliRunner(env=env)
    counts = []
    for size, expected in (
        (64, "1 added, 0 updated, 0 unchanged"),
        (128, "0 added, 1 updated, 0 unchanged"),
        (128, "0 added, 0 updated, 1 unchanged"),
    ):
        result = runner.invoke(main, ["ingest", str(folder), "--chunk-size", str(size)])
        assert expected in result.output, result.output
        counts.append(len(stored(database_url, collection_name)["with.md"]))
    assert counts[0] > counts[1] == counts[2]


def test_chunk_size_zero_is_an_error(
    tmp_path: Path, env: dict[str, str], database_url: str
) -> None:
    folder = write(tmp_path / "docs", {"good.md": GOOD})
    before = snapshot(database_url)
    for value in ("0", "-5"):
        result = CliRunner(env=env).invoke(main, ["ingest", str(folder), "--chunk-size", value])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Invalid value for '--chunk-size'")
    assert snapshot(database_url) == before


def test_a_renamed_copy_of_the_model_is_the_same_model(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    folder = write(tmp_path / "docs", {"good.md": GOOD})
    runner = CliRunner(env=env)
    first = runner.invoke(main, ["ingest", str(folder), "--embed-model", str(EMBEDDER_Q8)])
    assert first.exit_code == 0, first.output
    copy = tmp_path / "my-embedder.gguf"
    shutil.copyfile(EMBEDDER_Q8, copy)
    again = runner.invoke(main, ["ingest", str(folder), "--embed-model", str(copy)])
    assert again.exit_code == 0, again.output
    assert "0 added, 0 updated, 1 unchanged" in again.output
    args = ["query", "crabs", "--no-rerank", "--mode", "dense", "--embed-model", str(copy)]
    found = runner.invoke(main, args)
    assert found.exit_code == 0 and "good.md" in found.output, found.output


def test_a_file_given_three_times_counts_once(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write(tmp_path / "docs", {"good.md": GOOD})
    monkeypatch.chdir(folder)
    args = ["ingest", "good.md", "./good.md", str(folder / "good.md"), str(folder)]
    result = CliRunner(env=env).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 added, 0 updated, 0 unchanged;" in result.output


def corpus_text(size: int) -> str:
    """Real text (the bundled corpus, repeated) of about ``size`` characters."""
    blob = "\n\n".join(p.read_text() for p in sorted(CORPUS.glob("*.md")))
    return (blob * (size // len(blob) + 1))[:size]


def test_a_50_mb_text_file_is_read_in_bounded_parts(tmp_path: Path) -> None:
    """The splitter is quadratic in the sentences of one text: a big file reaches it in
    parts of at most PART_CHARS, cut at paragraph breaks, nothing lost."""
    text = corpus_text(50_000_000)
    big = tmp_path / "big.txt"
    big.write_text(text)
    (doc,) = read_documents(find_files([big]).files)
    assert not isinstance(doc, Problem)
    assert len(doc.parts) > 400
    assert all(len(part.text) <= PART_CHARS for part in doc.parts)
    assert all(part.text.endswith("\n\n") for part in doc.parts[:-1])
    assert "".join(part.text for part in doc.parts) == text


def test_a_large_document_streams_with_progress_and_stays_whole_or_absent(
    tmp_path: Path, env: dict[str, str], database_url: str, collection_name: str
) -> None:
    """A document of many chunk batches shows progress per batch; interrupted after two
    batches, it is absent (one transaction); run again, it is complete."""
    big = tmp_path / "big.txt"
    big.write_text(corpus_text(150_000))
    args = ["ingest", str(big), "--batch-chunks", "24"]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_index_crab.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    while len(set(re.findall(rb"(\d+) chunks,", seen)) - {b"0"}) < 2:
        block = os.read(process.stderr.fileno(), 4096)
        assert block, seen.decode(errors="replace")  # ended before two batches
        seen += block
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130, (seen + errors).decode(errors="replace")
    assert "big.txt" not in stored(database_url, collection_name)

    done = crab(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 added, 0 updated, 0 unchanged" in done.stdout
    total = int(re.findall(r"; (\d+) chunks into", done.stdout)[0])
    progress = sorted({int(n) for n in re.findall(r"(\d+) chunks,", done.stderr)})
    assert total > 5 * 24 and len([n for n in progress if 0 < n < total]) >= 4
    assert len(stored(database_url, collection_name)["big.txt"]) == total


@pytest.mark.parametrize("whole_tokens", [0, 1000])
def test_chunking_leaves_the_given_documents_as_they_were(whole_tokens: int) -> None:
    from llama_index.core import Document
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index_crab.ingest.chunking import Chunker

    chunker = Chunker(SentenceSplitter(chunk_size=64, chunk_overlap=0), str.split, whole_tokens)
    given = Document(
        text="\n  # Title\n\nSome words here.  \n", metadata={"last_modified_date": "x"}
    )
    before = given.model_dump()
    chunks = chunker.chunks("doc", "hash", [given], "/data/title.md")
    assert [c.get_content() for c in chunks] == ["# Title\n\nSome words here."]
    assert chunks[0].metadata["title"] == "Title" and "last_modified_date" not in chunks[0].metadata
    assert given.model_dump() == before
