"""Security: names and values never reach SQL as code, passwords never reach messages, DDL only
where it belongs, and the embedded server is reachable by its own user only."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from _models import ROOT
from _robust import snapshot
from click.testing import CliRunner
from helpers import node, unit
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_crab.cli import main
from llama_index_crab.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    DatabaseUnavailableError,
    SchemaError,
)
from llama_index_crab.server import postgres as server
from llama_index_crab.store.collections import (
    EmbeddingIdentity,
    build_index,
    drop_collection,
    list_collections,
)
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

PACKAGE = ROOT / "llama_index_crab"
MIGRATIONS = ROOT / "migrations"
IDENTITY = EmbeddingIdentity("security-model", 8, "mean")
PASSWORD = "hunter2-S3cret"

HOSTILE_NAMES = [
    "x'; DROP TABLE crab_nodes; --",
    'a"b',
    "Robert'); DROP TABLE crab_collections;--",
    "crab_nodes",
    "pg_catalog.pg_class",
    "../../etc/passwd",
    "%s %(name)s $1 :name ?",
    "back\\slash",
    "default; SELECT pg_sleep(10)",
    "名前 🦀 שלום",
    "\u202eevil",
    "x" * 2000,
]


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "UNION ALL SELECT 'extension:' || extname FROM pg_extension"
            )
        ).scalars()
        result = set(found)
    engine.dispose()
    return result


# -- names and values are bound, never spliced ------------------------------------------------


def test_hostile_collection_names_through_the_store(database_url: str) -> None:
    tables = _tables(database_url)
    rng = np.random.default_rng(4)
    for name in HOSTILE_NAMES:
        with PostgresVectorStore(database_url, name, IDENTITY) as store:
            store.create_collection()
            store.add([node("n1", unit(rng, 8), doc="d"), node("n2", unit(rng, 8), doc="e")])
            query = VectorStoreQuery(query_embedding=unit(rng, 8).tolist(), similarity_top_k=5)
            assert sorted(store.query(query).ids or []) == ["n1", "n2"]
            store.delete("d")
            assert [n.node_id for n in store.get_nodes()] == ["n2"]
        build_index(database_url, name)
    listed = {c.name: c for c in list_collections(database_url)}
    for name in HOSTILE_NAMES:
        assert listed[name].count == 1 and listed[name].indexed  # stored exactly as given
        drop_collection(database_url, name)
    assert _tables(database_url) == tables  # no table made, none dropped
    engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        indexes = connection.execute(
            sa.text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'crab_nodes_hnsw_%'")
        ).scalars()
        assert all(re.fullmatch(r"crab_nodes_hnsw_\d+", name) for name in indexes)
    engine.dispose()


@pytest.mark.parametrize("name", ["", "a\x00b", "a\udc80b", None, 42])
def test_unstorable_collection_names_are_value_errors(database_url: str, name: Any) -> None:
    before = snapshot(database_url)
    with pytest.raises((ValueError, TypeError)):
        with PostgresVectorStore(database_url, name, IDENTITY) as store:
            store.create_collection()
    assert snapshot(database_url) == before


def test_hostile_collection_names_through_the_cli(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CRAB_DATABASE_URL", database_url)
    doc = tmp_path / "crabs.md"
    doc.write_text("# Crabs\n\nCrabs walk sideways on the beach.\n")
    tables = _tables(database_url)
    runner = CliRunner()
    for name in [*HOSTILE_NAMES[:3], "名前 🦀 שלום"]:
        ingest = runner.invoke(main, ["ingest", str(doc), "--collection", name])
        assert ingest.exit_code == 0, ingest.output
        query = runner.invoke(main, ["query", "crabs", "--no-rerank", "-c", name])
        assert query.exit_code == 0 and "crabs.md" in query.output, query.output
        listed = runner.invoke(main, ["collections"])
        assert any(line.startswith(f"{name}\t") for line in listed.output.splitlines())
        drop_collection(database_url, name)
    missing = runner.invoke(main, ["query", "x", "-c", "nope'; DROP TABLE crab_nodes; --"])
    assert missing.exit_code == 1 and missing.output.startswith("error: no collection named")
    assert _tables(database_url) == tables


# -- passwords ----------------------------------------------------------------------------------


def _with_password(url: str, database: str | None = None) -> str:
    parsed = to_url(url).set(password=PASSWORD)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _messages(exc: BaseException) -> str:
    """The message of ``exc`` and of every exception chained to it."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def test_password_never_appears_in_errors(
    database_url: str, empty_database: str, collection_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    # The test server trusts local connections, so a URL with a password still connects.
    good, unmigrated = _with_password(database_url), _with_password(empty_database)
    cases: list[tuple[str, type[Exception], Any]] = [
        ("postgresql://crab:" + PASSWORD + "@127.0.0.1:1/db", DatabaseUnavailableError, None),
        (_with_password(database_url, "no_such_database"), DatabaseUnavailableError, None),
        ("postgresql://crab:" + PASSWORD + "@[bad/db", DatabaseUnavailableError, None),
        ("mysql://crab:" + PASSWORD + "@localhost/db", ValueError, None),
        (unmigrated, SchemaError, None),
        (good, CollectionNotFoundError, None),
        (good, CollectionMismatchError, EmbeddingIdentity("other", 8, "mean")),
    ]
    PostgresVectorStore(database_url, collection_name, IDENTITY).create_collection()
    for url, error, identity in cases:
        name = "no-such" if error is CollectionNotFoundError else collection_name
        with pytest.raises(error) as raised:
            with PostgresVectorStore(url, name, identity) as store:
                store.get_nodes()
        assert PASSWORD not in _messages(raised.value), url
        assert "***" in str(raised.value) or error is not DatabaseUnavailableError
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    "args",
    [
        ["query", "x", "--no-rerank"],
        ["--debug", "query", "x", "--no-rerank"],
        ["ingest", "README.md"],
        ["collections"],
        ["migrate"],
        ["doctor"],
    ],
)
def test_password_never_appears_in_cli_output(args: list[str]) -> None:
    url = "postgresql://crab:" + PASSWORD + "@127.0.0.1:1/db"
    result = CliRunner().invoke(main, args, env={"CRAB_DATABASE_URL": url})
    assert result.exit_code != 0
    shown = result.output + (_messages(result.exception) if result.exception else "")
    assert PASSWORD not in shown
    if "--debug" not in args and args[0] != "doctor":
        assert result.output.startswith("error: ") and "Traceback" not in result.output


# -- DDL ------------------------------------------------------------------------------------------


def test_create_extension_appears_only_in_the_migrations() -> None:
    pattern = re.compile(r"create\s+extension", re.IGNORECASE)
    offenders = [p for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    in_migrations = [p for p in MIGRATIONS.rglob("*.py") if pattern.search(p.read_text())]
    assert in_migrations and all("versions" in p.parts for p in in_migrations)


def test_ddl_is_confined_to_collections_and_migrations() -> None:
    # "(?<!run )": doctor.py *tells* the user to run ALTER EXTENSION; it never does.
    ddl = re.compile(r"(?<!run )\b(CREATE|DROP|ALTER|TRUNCATE)\s+(TABLE|INDEX|EXTENSION)", re.I)
    allowed = {"collections.py", "migrate.py", "server.py"}  # server: CREATE DATABASE only
    offenders = [
        p.name for p in PACKAGE.rglob("*.py") if p.name not in allowed and ddl.search(p.read_text())
    ]
    assert offenders == []


def test_store_work_runs_no_ddl(database_url: str, collection_name: str) -> None:
    engine = sa.create_engine(to_url(database_url))
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rng = np.random.default_rng(6)
    with PostgresVectorStore(engine, collection_name, IDENTITY) as store:
        store.create_collection()
        created = len(statements)
        store.add([node(f"n{i}", unit(rng, 8), doc="d") for i in range(5)])
        store.query(VectorStoreQuery(query_embedding=unit(rng, 8).tolist(), similarity_top_k=3))
        store.get_nodes()
        store.delete("d")
        store.clear()
    ddl = re.compile(r"\b(CREATE|DROP|ALTER|TRUNCATE|GRANT)\b", re.I)
    assert [s for s in statements[created:] if ddl.search(s)] == []
    assert not any("EXTENSION" in s.upper() for s in statements)
    engine.dispose()


def test_unmigrated_database_is_refused_and_left_untouched(
    empty_database: str, tmp_path: Path
) -> None:
    before = _tables(empty_database)
    calls = [
        lambda s: s.create_collection(),
        lambda s: s.add([node("n", [1.0] + [0.0] * 7)]),
        lambda s: s.query(VectorStoreQuery(query_embedding=[1.0] + [0.0] * 7)),
        lambda s: s.get_nodes(),
    ]
    for call in calls:
        with PostgresVectorStore(empty_database, "c", IDENTITY) as store:
            with pytest.raises(SchemaError, match="migrate"):
                call(store)
    doc = tmp_path / "a.md"
    doc.write_text("hello")
    result = CliRunner().invoke(
        main, ["ingest", str(doc)], env={"CRAB_DATABASE_URL": empty_database}
    )
    assert result.exit_code == 1 and "migrate" in result.output, result.output
    assert _tables(empty_database) == before  # no table, no extension


# -- the embedded server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[tuple[str, Path, int]]:
    parent = Path(tempfile.mkdtemp(prefix="crab-sec-"))
    pgdata = parent / "pgdata"
    try:
        url = server.start(pgdata)
        yield url, pgdata, int(server.status(pgdata).pid or 0)
    finally:
        server.stop(pgdata)
        shutil.rmtree(parent, ignore_errors=True)


def _scalar(url: str, query: str) -> Any:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        value = connection.scalar(sa.text(query))
    engine.dispose()
    return value


def test_embedded_server_listens_on_no_tcp_port(embedded: tuple[str, Path, int]) -> None:
    url, pgdata, pid = embedded
    assert _scalar(url, "SHOW listen_addresses") == ""
    port = int(_scalar(url, "SHOW port"))
    pid_lines = (pgdata / "postmaster.pid").read_text().splitlines()
    assert int(pid_lines[3]) == port and pid_lines[5].strip() == ""  # no listen address
    for host in ("127.0.0.1", "::1", socket.gethostname()):
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()
    with pytest.raises(DatabaseUnavailableError):
        PostgresVectorStore(f"postgresql://postgres@127.0.0.1:{port}/crab", "c").get_nodes()
    # Listening sockets belong to the postmaster (its children inherit them).
    inet = psutil.Process(pid).net_connections(kind="inet")
    listening = [c for c in inet if c.status == psutil.CONN_LISTEN]
    assert listening == []


def test_socket_directory_is_private_to_the_server_user(embedded: tuple[str, Path, int]) -> None:
    url, _, pid = embedded
    socket_dir = Path(str(to_url(url).query["host"]))
    info = socket_dir.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == psutil.Process(pid).uids().real


def _connect_as(uid: int, gid: int, path: Path) -> int:
    """0 if a process running as ``uid`` can connect to the Unix socket ``path``."""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
            code = 0
        except PermissionError:
            code = 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_socket(embedded: tuple[str, Path, int]) -> None:
    url, _, pid = embedded
    port = int(_scalar(url, "SHOW port"))
    path = Path(str(to_url(url).query["host"])) / f".s.PGSQL.{port}"
    owner = psutil.Process(pid).uids().real
    owner_gid = psutil.Process(pid).gids().real
    nobody = 65534
    assert owner != nobody
    assert _connect_as(nobody, nobody, path) == 1  # permission denied
    assert _connect_as(owner, owner_gid, path) == 0  # the control: its own user gets in
