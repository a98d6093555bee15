"""The CLI under faults, issue 16 cases 5, 7, 8 and 9: secrets never printed, an old schema
changes nothing, every failure is one line, no collection left behind by a failed ingest."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8
from _robust import crab, snapshot
from click.testing import CliRunner, Result

from llama_index_crab.cli import main
from llama_index_crab.store import migrate
from llama_index_crab.store.collections import list_collections
from llama_index_crab.store.db import mask_secrets, mask_url, to_url

SECRET = "hunter2"


def one_line_error(result: Result | str) -> str:
    """The output, asserted to be exactly one line starting with ``error:``."""
    output = result if isinstance(result, str) else result.output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "crabs.md").write_text("# Crabs\n\nCrabs walk sideways along the beach.\n")
    return folder


# -- case 5: passwords printed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:1/db?password=hunter2",
        "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=hunter2&x=1",
        "postgresql://u:hunter2@127.0.0.1:1/db",
        "postgresql://u:hun@ter2@127.0.0.1:1/db",  # an unencoded "@" in the password
        "postgresql://u:p@ss:hunter2@127.0.0.1:1/db",
        "postgresql+psycopg://u:hunter2@[bad/db",
        "mysql://u:hunter2@localhost/db",
    ],
)
def test_mask_url_hides_every_form_of_password(url: str) -> None:
    shown = mask_url(url) + mask_secrets(f"cannot connect to {url}: refused; and {url!r}")
    assert "***" in shown
    assert not any(part in shown for part in ("hunter2", "ter2", "hun@", "p@ss"))


def test_mask_url_keeps_what_is_not_secret() -> None:
    assert mask_url("postgresql://alice@db.example:5433/app") == (
        "postgresql://alice@db.example:5433/app"
    )
    assert mask_url("postgresql://alice:pw@db/app?sslmode=require") == (
        "postgresql://alice:***@db/app?sslmode=require"
    )
    assert mask_secrets("host=db password=hunter2 user=x") == "host=db password=*** user=x"


URLS = [
    "postgresql://u@127.0.0.1:1/db?password=hunter2",
    "postgresql://u:hun@ter2@127.0.0.1:1/db",
]
COMMANDS = [
    ["query", "x", "--no-rerank"],
    ["collections"],
    ["collections", "drop", "c", "--yes"],
    ["migrate"],
    ["ingest", "README.md"],
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_password_never_printed_by_any_command(url: str, args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--database-url", url])
    assert result.exit_code == 1
    assert one_line_error(result).startswith("error: cannot connect to")
    assert "hunter2" not in result.output and "ter2" not in result.output


@pytest.mark.parametrize("url", URLS)
def test_password_never_printed_by_a_debug_traceback(url: str) -> None:
    """``--debug`` prints the real traceback (a subprocess, as a user sees it), masked."""
    done = crab("--debug", "migrate", "--database-url", url, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "DatabaseUnavailableError" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout and "ter2" not in done.stderr


# -- case 7: `crab ingest` on a database one migration behind -----------------------------------


def test_ingest_on_an_old_schema_says_migrate_and_changes_nothing(
    empty_database: str, doc: Path
) -> None:
    migrate.upgrade(empty_database)
    migrate.downgrade(empty_database, "-1")  # one migration behind
    old = migrate.current(empty_database)
    before = snapshot(empty_database)
    runner = CliRunner(env={"CRAB_DATABASE_URL": empty_database, "CRAB_COLLECTION": "docs"})
    result = runner.invoke(main, ["ingest", str(doc)])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "run `crab migrate`" in line and "python" not in line
    assert snapshot(empty_database) == before  # no collection created
    assert migrate.current(empty_database) == old

    assert runner.invoke(main, ["migrate"]).exit_code == 0
    again = runner.invoke(main, ["ingest", str(doc)])
    assert again.exit_code == 0, again.output
    assert "1 added" in again.output


# -- case 8: tracebacks where one line is promised ----------------------------------------------


@pytest.fixture
def weak_role(empty_database: str) -> Iterator[str]:
    """A role that may connect but not create anything (pgvector installed by the owner)."""
    role = f"crab_weak_{uuid.uuid4().hex[:8]}"
    url = to_url(empty_database)
    admin = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        connection.execute(sa.text(f"GRANT CONNECT ON DATABASE {url.database} TO {role}"))
        connection.execute(sa.text(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC"))
    try:
        yield url.set(username=role, password="pw").render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP OWNED BY {role}"))
            connection.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_migrate_without_create_rights_is_one_line(weak_role: str) -> None:
    result = CliRunner().invoke(main, ["migrate", "--database-url", weak_role])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "permission denied" in line and "GRANT CREATE ON SCHEMA public" in line
    assert "pw@" not in line  # the role's password is masked too


def test_huge_top_k_is_one_line(database_url: str) -> None:
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": "never-created"}
    for args in (["--top-k", "99999999999999999999"], ["--top-n", "99999999999999999999"]):
        for command in ("query", "ask"):
            result = CliRunner(env=env).invoke(main, [command, "crabs", "--no-rerank", *args])
            assert result.exit_code == 2
            line = one_line_error(result)
            assert f"Invalid value for '{args[0]}'" in line and f"crab {command} --help" in line


def test_a_6000_character_collection_name_is_one_line(database_url: str, doc: Path) -> None:
    before = snapshot(database_url)
    runner = CliRunner(env={"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": "x" * 6000})
    for args in (["ingest", str(doc)], ["query", "crabs", "--no-rerank"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1
        line = one_line_error(result)
        assert "6000 bytes long" in line and len(line) < 300
    assert snapshot(database_url) == before


def test_an_unexpected_error_is_one_line_and_debug_shows_it(
    database_url: str, collection_name: str, doc: Path
) -> None:
    """A database error we never translated is still one line, without its SQL."""
    env = {
        "CRAB_DATABASE_URL": database_url,
        "CRAB_COLLECTION": collection_name,
        "PGOPTIONS": "-c default_transaction_read_only=on",  # libpq: every write fails
    }
    runner = CliRunner(env=env)
    result = runner.invoke(main, ["ingest", str(doc)])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "read-only transaction" in line and "[SQL" not in line
    debug = runner.invoke(main, ["--debug", "ingest", str(doc)])
    assert debug.exit_code != 0 and "read-only" in str(debug.exception)


# -- case 9: leftovers --------------------------------------------------------------------------


def test_a_failed_first_ingest_leaves_no_collection(
    database_url: str, collection_name: str, doc: Path, tmp_path: Path
) -> None:
    """A model whose header reads fine but whose weights are cut fails after the collection
    was created; the collection goes, and the next run with the right model works."""
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(EMBEDDER_Q8.read_bytes()[:-4096])
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    runner = CliRunner(env=env)
    failed = runner.invoke(main, ["ingest", str(doc), "--embed-model", str(broken)])
    assert failed.exit_code == 1
    one_line_error(failed)
    assert collection_name not in {c.name for c in list_collections(database_url)}

    ok = runner.invoke(main, ["ingest", str(doc)])
    assert ok.exit_code == 0, ok.output
    assert "1 added" in ok.output


def test_a_first_ingest_where_every_file_fails_leaves_no_collection(
    database_url: str, collection_name: str, tmp_path: Path
) -> None:
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    result = CliRunner(env=env).invoke(main, ["ingest", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert collection_name not in {c.name for c in list_collections(database_url)}


def test_collections_drop_asks_then_drops(
    database_url: str, collection_name: str, doc: Path
) -> None:
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    runner = CliRunner(env=env)
    assert runner.invoke(main, ["ingest", str(doc)]).exit_code == 0
    names = lambda: {c.name for c in list_collections(database_url)}  # noqa: E731

    refused = runner.invoke(main, ["collections", "drop", collection_name], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert collection_name in names()

    asked = runner.invoke(main, ["collections", "drop", collection_name], input="y\n")
    assert asked.exit_code == 0, asked.output
    assert f"dropped collection {collection_name!r} (1 nodes)" in asked.output
    assert collection_name not in names()

    assert runner.invoke(main, ["ingest", str(doc)]).exit_code == 0
    forced = runner.invoke(main, ["collections", "drop", "--yes", collection_name])
    assert forced.exit_code == 0 and collection_name not in names()

    missing = runner.invoke(main, ["collections", "drop", "--yes", collection_name])
    assert missing.exit_code == 1
    assert "no collection named" in one_line_error(missing)


def test_collections_still_lists(database_url: str, collection_name: str, doc: Path) -> None:
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    runner = CliRunner(env=env)
    assert runner.invoke(main, ["ingest", str(doc)]).exit_code == 0
    listed = runner.invoke(main, ["collections"])
    assert listed.exit_code == 0
    assert any(line.startswith(f"{collection_name}\t") for line in listed.output.splitlines())
