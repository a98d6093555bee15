"""The embedded server and ingest on a hostile machine: no folder of the user's opened to
others, no password printed in any form, nothing read from outside the folder named, no
advice that loses data."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_index_crab.cli import main
from llama_index_crab.server import postgres as server

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory of our own (not tmp_path, which pytest resets to 0700 meanwhile); every
    server started under it is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="crab-hostile-"))
    yield path
    for pid_file in path.rglob("postmaster.pid"):
        server.stop(pid_file.parent)
    shutil.rmtree(path, ignore_errors=True)


# -- 1. a start as root opens no folder of the user's ------------------------------------------

_ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK = 0x02, 0x04, 0x10


def _access(path: Path) -> tuple[int, int, int, set[tuple[int, int, int]]]:
    """Who may do what in ``path``: owner bits, the owning group's own entry, other bits,
    and the named ACL entries (tag, id, perm) other than the mask."""
    mode = path.stat().st_mode
    group, named = (mode >> 3) & 7, set()
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        raw = b""
    for offset in range(4, len(raw), 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
        if tag == _ACL_GROUP_OBJ:
            group = perm  # with an ACL, the mode's group bits show the mask instead
        elif tag != _ACL_MASK and tag in (_ACL_USER, 0x08):
            named.add((tag, ident, perm))
    return (mode >> 6) & 7, group, mode & 7, named


@ROOT_ONLY
def test_a_start_as_root_changes_no_parent_folder_mode(workdir: Path) -> None:
    import pwd

    home = workdir / "home"
    share = home / ".local" / "share"
    share.mkdir(parents=True)
    folders = [workdir, home, home / ".local", share]
    for folder in folders:
        folder.chmod(0o700)
    secret = home / "notes.txt"
    secret.write_text("the secret")
    secret.chmod(0o644)  # only the folders keep it private
    pgdata = share / "llama-index-crab" / "pgdata"
    before = {folder: _access(folder) for folder in folders}

    server.start(pgdata)
    try:
        account = pwd.getpwuid(pgdata.stat().st_uid)
        assert account.pw_uid != 0
        for folder in folders:
            owner, group, other, named = _access(folder)
            assert (owner, group, other) == before[folder][:3], folder
            # The one grant: the server's own account may pass through (no listing, no read).
            assert named - before[folder][3] <= {(_ACL_USER, account.pw_uid, 0o1)}, folder
        cat = subprocess.run(
            ["runuser", "-u", "nobody", "--", "cat", str(secret)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert cat.returncode != 0 and "Permission denied" in cat.stderr, cat
        doctor = CliRunner().invoke(
            main,
            ["doctor", "--embed-model", str(workdir / "none.gguf")],
            env={"CRAB_PGDATA": str(pgdata), "HOME": str(home), "CRAB_DATABASE_URL": ""},
        )
        assert f"{account.pw_name}" in doctor.output and "ACL" in doctor.output, doctor.output
        assert str(home) in doctor.output
    finally:
        server.stop(pgdata)
    assert server.start(pgdata) and {f: _access(f)[:3] for f in folders} == {
        f: b[:3] for f, b in before.items()
    }  # a second start grants nothing more


# -- 2. one mask for every URL and DSN form --------------------------------------------------

MARKERS = ("ALPHAsecret", "BRAVOsecret", "CHARLIEsecret")
# Characters that break naive masks: blanks, quotes, URL delimiters, escapes, non-ASCII.
HOSTILE = st.text(
    alphabet=st.sampled_from([*" \t'\"@:/?#&=%\\;,()[]{}<>`$!*+~|^", "é", "🦀", "a", "0"]),
    min_size=1,
    max_size=6,
)


@st.composite
def passwords(draw: st.DrawFn, raw_url: bool = False) -> str:
    """A password made of marker words joined by hostile characters; a raw (unencoded)
    URL cannot carry ``/ ? #`` in its userinfo, so ``raw_url`` leaves those out."""
    separators = [draw(HOSTILE) for _ in range(2)]
    password = MARKERS[0] + separators[0] + MARKERS[1] + separators[1] + MARKERS[2]
    if raw_url:
        password = password.translate(str.maketrans("", "", "/?#"))
    return password


def _libpq_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _forms(password: str) -> dict[str, str]:
    encoded = quote(password, safe="")
    return {
        "raw userinfo": f"postgresql://crab:{password}@127.0.0.1:1/db",
        "encoded userinfo": f"postgresql://crab:{encoded}@127.0.0.1:1/db",
        "query string": f"postgresql://crab@127.0.0.1:1/db?password={encoded}&sslmode=disable",
        "key=value": f"host=127.0.0.1 port=1 user=crab password={_libpq_quoted(password)} "
        "dbname=db",
    }


def _shown(result: Result) -> str:
    """All a user could see: the output and every message of the exception chain."""
    parts, seen = [result.output], result.exception
    while seen is not None and not isinstance(seen, SystemExit):
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _assert_masked(result: Result, what: str) -> None:
    shown = _shown(result)
    leaked = [marker for marker in MARKERS if marker in shown]
    assert not leaked, f"{what}: {leaked} in {shown!r}"


COMMANDS = [
    ["query", "x", "--no-rerank"],
    ["--debug", "query", "x", "--no-rerank"],
    ["collections"],
    ["migrate"],
    ["--debug", "migrate"],
]
NO_MODEL = "/nonexistent/none.gguf"
SMALL_MODEL = str(
    Path(__file__).resolve().parents[1] / "models" / "all-MiniLM-L6-v2-q8_0.gguf"
)  # doctor's model checks fail fast; its database line stays


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(password=passwords(raw_url=True), encoded=passwords())
def test_no_password_form_is_printed_by_any_command(password: str, encoded: str) -> None:
    runner = CliRunner()
    forms = {"raw userinfo": _forms(password)["raw userinfo"]}
    forms |= {k: v for k, v in _forms(encoded).items() if k != "raw userinfo"}
    for form, url in forms.items():
        for args in [*COMMANDS, ["doctor", "--embed-model", NO_MODEL]]:
            result = runner.invoke(main, args, env={"CRAB_DATABASE_URL": url})
            assert result.exit_code != 0, (form, args, result.output)
            _assert_masked(result, f"{form} through {args}")


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(password=passwords(raw_url=True), encoded=passwords())
def test_no_password_form_is_printed_in_the_replica_warning(
    database_url: str, password: str, encoded: str
) -> None:
    runner = CliRunner()
    for url in [_forms(password)["raw userinfo"], *list(_forms(encoded).values())[1:3]]:
        result = runner.invoke(
            main,
            ["query", "x", "--no-rerank", "-c", "hostile_none", "--embed-model", SMALL_MODEL,
             "--read-url", url],
            env={"CRAB_DATABASE_URL": database_url},
        )  # fmt: skip
        assert "warning: skipping read replica" in result.output, result.output
        _assert_masked(result, f"--read-url {url!r}")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("cannot connect to postgresql://u@h/db?password=pw: refused",
         "cannot connect to postgresql://u@h/db?password=***: refused"),
        ("postgresql://crab:hunter2 S3cret@127.0.0.1:1/db: refused",
         "postgresql://crab:***@127.0.0.1:1/db: refused"),
        ("host=h password='hunter2 S3cret' dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'it\\'s' user=u", "host=h password = *** user=u"),
        ("see https://sqlalche.me/e/20/e3q8", "see https://sqlalche.me/e/20/e3q8"),
    ],
)  # fmt: skip
def test_mask_keeps_what_surrounds_the_secret(text: str, masked: str) -> None:
    from llama_index_crab.store.db import mask_secrets

    assert mask_secrets(text) == masked


# -- 3. ingest stays inside the folder named ---------------------------------------------------


def _ingest(folder: Path, database_url: str, *extra: str) -> Result:
    return CliRunner().invoke(
        main,
        [
            "ingest",
            str(folder),
            "-c",
            f"hostile_{os.getpid()}_{folder.name}",
            "--embed-model",
            SMALL_MODEL,
            *extra,
        ],
        env={"CRAB_DATABASE_URL": database_url},
    )


def _stored(database_url: str, folder: Path) -> str:
    from llama_index_crab.store.collections import drop_collection, list_collections

    name = f"hostile_{os.getpid()}_{folder.name}"
    result = CliRunner().invoke(
        main,
        [
            "query",
            "secret",
            "--no-rerank",
            "--mode",
            "text",
            "-c",
            name,
            "--top-n",
            "50",
            "--embed-model",
            SMALL_MODEL,
        ],
        env={"CRAB_DATABASE_URL": database_url},
    )
    if any(c.name == name for c in list_collections(database_url)):
        drop_collection(database_url, name)
    return result.output


def test_a_link_out_of_the_folder_is_skipped_with_a_warning(
    database_url: str, workdir: Path
) -> None:
    outside = workdir / "outside.md"
    outside.write_text("The launch code is a private secret kept outside.\n")
    folder = workdir / "docs"
    folder.mkdir()
    (folder / "own.md").write_text("A document of the folder itself, with no secret.\n")
    (folder / "link.md").symlink_to(outside)
    (folder / "inner.md").symlink_to(folder / "own.md")  # a link that stays inside is fine
    result = _ingest(folder, database_url)
    assert result.exit_code == 0, result.output
    assert "link.md" in result.output and "outside the folder" in result.output
    assert "--follow-links" in result.output
    assert "launch code" not in _stored(database_url, folder)

    followed = _ingest(folder, database_url, "--follow-links")
    assert followed.exit_code == 0 and "outside the folder" not in followed.output
    assert "launch code" in _stored(database_url, folder)


@ROOT_ONLY
def test_a_link_to_a_root_only_file_in_a_shared_folder_is_not_indexed(
    database_url: str, workdir: Path
) -> None:
    workdir.chmod(0o755)
    private = workdir / "private"
    private.mkdir(mode=0o700)
    secret = private / "root-only.md"
    secret.write_text("The root password secret is swordfish.\n")
    secret.chmod(0o600)
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "mine.md").write_text("A shared note about the weather.\n")
    for name, target in [("shadow.md", "/etc/shadow"), ("root.md", str(secret))]:
        subprocess.run(
            ["runuser", "-u", "nobody", "--", "ln", "-s", target, str(shared / name)], check=True
        )
    # A link another user made that points inside the folder, at a file only root may read.
    inside = shared / "inside.md"
    inside.write_text("Inside the shared folder, a root-only secret.\n")
    inside.chmod(0o600)
    subprocess.run(
        ["runuser", "-u", "nobody", "--", "ln", "-s", str(inside), str(shared / "in-link.md")],
        check=True,
    )
    result = _ingest(shared, database_url)
    assert result.exit_code == 0, result.output
    for name in ("shadow.md", "root.md", "in-link.md"):
        assert f"{name}" in result.output, result.output
    stored = _stored(database_url, shared)
    assert "swordfish" not in stored and "root:" not in stored
    assert stored.count("inside.md") <= 1 and "in-link.md" not in stored


# -- 4. a full disk: name the space, keep the data ---------------------------------------------


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A 96 MB tmpfs of our own (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    disk = workdir / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0755", "tmpfs", str(disk)],
                   check=True)  # fmt: skip
    try:
        yield disk
    finally:
        for pid_file in disk.rglob("postmaster.pid"):
            server.stop(pid_file.parent)
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: the close has nothing to flush
        try:
            while True:
                f.write(b"\0" * 2**16)
        except OSError:
            pass
    return filler


def test_a_full_disk_names_the_space_and_keeps_the_data(small_disk: Path) -> None:
    pgdata = small_disk / "pgdata"
    env = {"CRAB_PGDATA": str(pgdata), "CRAB_DATABASE_URL": ""}
    started = CliRunner().invoke(main, ["db", "start"], env=env)
    assert started.exit_code == 0, started.output
    assert server.stop(pgdata)
    filler = _fill(small_disk)

    result = CliRunner().invoke(main, ["collections"], env=env)
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1, line
    assert "space" in line and "crab db start" in line, line
    assert "rm -r" not in line and "delete" not in line, line
    assert (pgdata / "PG_VERSION").is_file() and (pgdata / "base").is_dir()

    filler.unlink()  # the fix the message names
    again = CliRunner().invoke(main, ["collections"], env=env)
    assert again.exit_code == 0, again.output


# -- 5. binary content anywhere in a file ------------------------------------------------------


def test_a_file_whose_tail_is_binary_is_skipped_with_a_warning(
    database_url: str, workdir: Path
) -> None:
    import random

    folder = workdir / "tails"
    folder.mkdir()
    (folder / "good.md").write_text("A good note about tides and the moon.\n")
    text = ("Plain words about the sea and its shore. " * 250)[:9000].encode()
    noise = random.Random(5).randbytes(60_000)
    (folder / "tail.md").write_bytes(text + noise)
    (folder / "nul.txt").write_bytes(text * 3 + b"end\x00of text")
    result = _ingest(folder, database_url)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any("tail.md" in w and "binary content" in w for w in warnings), result.output
    assert any("nul.txt" in w and "NUL bytes" in w for w in warnings), result.output
    assert "1 added" in result.output, result.output
    _stored(database_url, folder)


# -- 7. a full cache disk while widening to float32 ----------------------------------------------


def test_a_full_cache_disk_while_widening_names_the_space_and_the_switch(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    cache = workdir / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(cache)], check=True)
    try:
        reranker = Path(SMALL_MODEL).with_name("minilm-toy-reranker-q8_0.gguf")
        result = CliRunner().invoke(
            main,
            ["rerank", "q", "a doc", "--rerank-model", str(reranker), "--rerank-weights", "f32"],
            env={"CRAB_CACHE_DIR": str(cache)},
        )
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)
    line = result.output.strip()
    assert result.exit_code == 1 and len(line.splitlines()) == 1, line
    assert "no space left" in line and "MB free" in line, line
    assert "--rerank-weights file" in line and "CRAB_CACHE_DIR" in line, line


# -- 6. a first ingest cut off at any moment leaves no empty collection -------------------------


def test_a_first_ingest_killed_leaves_no_empty_collection(database_url: str, workdir: Path) -> None:
    import signal
    import sys
    import time

    from llama_index_crab.store.collections import drop_collection, list_collections

    folder = workdir / "many"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02}.md").write_text(f"Document {i} is about tide number {i}.\n" * 20)
    name = f"hostile_killed_{os.getpid()}"
    env = {**os.environ, "CRAB_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "llama_index_crab.cli", "ingest", str(folder), "-c", name,
               "--embed-model", SMALL_MODEL, "--batch-chunks", "4"]  # fmt: skip
    victim = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while victim.poll() is None and time.monotonic() < deadline:
            if any(c.name == name for c in list_collections(database_url)):
                break  # the moment the collection appears: kill the ingest there
            time.sleep(0.005)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert victim.returncode == -signal.SIGKILL  # it ran until killed
    found = [c for c in list_collections(database_url) if c.name == name]
    try:
        assert found == [] or found[0].count > 0, found
    finally:
        if found:
            drop_collection(database_url, name)


# -- 8. a socket directory another user took first -----------------------------------------------


@ROOT_ONLY
def test_a_socket_directory_taken_by_another_user_is_no_denial_of_service(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pwd

    workdir.chmod(0o711)  # the test's own folder: as /tmp, others may pass
    tmp = workdir / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(tmp))
    pgdata = workdir / ("h" * 74) / ".local" / "share" / "llama-index-crab" / "pgdata"
    assert len(os.fsencode(pgdata / ".s.PGSQL.5432")) > 107  # too long for a socket there
    uid = pwd.getpwnam("embedded_postgres").pw_uid
    taken = tmp / f"crab-{uid}"
    subprocess.run(["runuser", "-u", "nobody", "--", "mkdir", "-m", "700", str(taken)], check=True)

    url = server.start(pgdata)
    try:
        from llama_index_crab.store.db import to_url

        sockets = Path(str(to_url(url).query["host"]))
        assert taken not in sockets.parents and sockets.parent == tmp, sockets
        info = sockets.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, uid)
        assert server.start(pgdata) == url  # found again: the same name each start
    finally:
        server.stop(pgdata)


# -- 9. the smaller ones -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled(database_url: str) -> Iterator[str]:
    """A collection of two small documents, dropped after the module."""
    from llama_index_crab.store.collections import drop_collection

    folder = Path(tempfile.mkdtemp(prefix="crab-hostile-docs-"))
    (folder / "tides.md").write_text("The tides follow the moon. Spring tides are the highest.\n")
    (folder / "crabs.md").write_text("Crabs walk sideways along the shore at low tide.\n")
    name = f"hostile_filled_{os.getpid()}"
    done = CliRunner().invoke(
        main,
        ["ingest", str(folder), "-c", name, "--embed-model", SMALL_MODEL],
        env={"CRAB_DATABASE_URL": database_url},
    )
    assert done.exit_code == 0, done.output
    yield name
    drop_collection(database_url, name)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("question", ["the of and", "?!?", "what is it?"])
def test_a_question_of_stop_words_has_nothing_to_search_for(
    database_url: str, filled: str, question: str
) -> None:
    env = {"CRAB_DATABASE_URL": database_url}
    common = ["-c", filled, "--embed-model", SMALL_MODEL, "--no-rerank"]
    ask = CliRunner().invoke(main, ["ask", question, *common], env=env)
    assert ask.exit_code == 0, ask.output
    assert "Nothing to search for" in ask.output and "[1]" not in ask.output, ask.output
    query = CliRunner().invoke(main, ["query", question, *common], env=env)
    assert query.exit_code == 0 and query.output.startswith("Nothing to search for"), query.output


def test_query_into_a_closed_pipe_ends_quietly(database_url: str, filled: str) -> None:
    import sys

    command = [sys.executable, "-m", "llama_index_crab.cli", "query", "tides", "-c", filled,
               "--embed-model", SMALL_MODEL, "--no-rerank"]  # fmt: skip
    env = {**os.environ, "CRAB_DATABASE_URL": database_url}
    done = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.stdout is not None and done.stderr is not None
    done.stdout.close()  # as `| head` does once it has its lines
    err = done.stderr.read().decode()
    assert done.wait(timeout=120) == 0 and "Error" not in err and "error" not in err, err


def test_a_truncation_warning_is_one_line_without_source(workdir: Path) -> None:
    long = "tide " * 2000
    result = CliRunner().invoke(main, ["embed", long, "--embed-model", SMALL_MODEL])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "truncated" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: "), result.output
    assert "warnings.warn" not in result.output and "TruncationWarning" not in result.output


def test_an_unknown_migration_revision_is_one_line(database_url: str) -> None:
    result = CliRunner().invoke(
        main, ["migrate", "--revision", "9999"], env={"CRAB_DATABASE_URL": database_url}
    )
    line = result.output.strip()
    assert result.exit_code == 1 and len(line.splitlines()) == 1, line
    assert "'9999'" in line and "unexpected" not in line and "head" in line, line


def test_dropping_a_collection_during_its_ingest_is_a_clear_error(
    database_url: str, workdir: Path
) -> None:
    import sys
    import time

    from llama_index_crab.store.collections import list_collections

    folder = workdir / "many"
    folder.mkdir()
    for i in range(60):
        (folder / f"doc{i:02}.md").write_text(f"Document {i} is about tide number {i}.\n" * 20)
    name = f"hostile_dropped_{os.getpid()}"
    env = {**os.environ, "CRAB_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "llama_index_crab.cli", "ingest", str(folder), "-c", name,
               "--embed-model", SMALL_MODEL, "--batch-chunks", "4"]  # fmt: skip
    ingest = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(c.name == name and c.count for c in list_collections(database_url)):
        assert ingest.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    drop = CliRunner().invoke(
        main, ["collections", "drop", name, "--yes"], env={"CRAB_DATABASE_URL": database_url}
    )
    _, err = ingest.communicate(timeout=120)
    assert drop.exit_code == 0, drop.output
    last = err.strip().splitlines()[-1]
    assert ingest.returncode == 1 and last.startswith("error: the collection was dropped"), err
    assert "foreign key" not in err
    leftover = [c for c in list_collections(database_url) if c.name == name]
    if leftover:
        from llama_index_crab.store.collections import drop_collection

        drop_collection(database_url, name)
