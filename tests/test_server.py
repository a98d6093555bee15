from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llama_index_crab.errors import DatabaseUnavailableError
from llama_index_crab.server import postgres as server
from llama_index_crab.store.db import to_url


@pytest.fixture
def pgdata() -> Iterator[Path]:
    # Not tmp_path: as root the server runs as another user, and a pytest session starting
    # meanwhile resets /tmp/pytest-of-root to 0700, cutting that user off its data.
    parent = Path(tempfile.mkdtemp(prefix="crab-server-"))
    yield parent / "pgdata"
    server.stop(parent / "pgdata")
    shutil.rmtree(parent, ignore_errors=True)


def _scalar(url: str, query: str) -> object:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(query))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def test_start_reuse_stop_and_restart(pgdata: Path) -> None:
    assert not server.status(pgdata).running
    with pytest.raises(DatabaseUnavailableError, match="not running"):
        server.url(pgdata)

    url = server.start(pgdata)
    first = server.status(pgdata)
    assert first.running and first.url == url and server.url(pgdata) == url
    assert _scalar(url, "SELECT current_database()") == "crab"
    assert _scalar(url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'") == 1
    _scalar(url, "CREATE TABLE kept AS SELECT 42 AS x")
    # A new data directory gets the ingest tuning, which needs a restart to apply.
    for name, value in server.tuning().items():
        shown = _scalar(url, f"SHOW {name}")
        if value.endswith("B"):  # sizes: PostgreSQL shows 1024MB as 1GB
            same = f"SELECT pg_size_bytes('{shown}') = pg_size_bytes('{value}')"
            assert _scalar(url, same), (name, shown, value)
        else:
            assert shown == value, name

    assert server.start(pgdata) == url
    assert server.status(pgdata).pid == first.pid

    assert server.stop(pgdata) is True
    assert not server.status(pgdata).running
    assert server.stop(pgdata) is False

    url = server.start(pgdata)
    assert server.status(pgdata).pid != first.pid
    assert _scalar(url, "SELECT x FROM kept") == 42


def test_only_its_user_can_reach_it(pgdata: Path) -> None:
    url = server.start(pgdata)
    assert _scalar(url, "SHOW listen_addresses") == ""
    socket_dir = Path(str(to_url(url).query["host"]))
    assert stat.S_IMODE(socket_dir.stat().st_mode) & 0o077 == 0
    assert socket_dir.stat().st_uid == pgdata.stat().st_uid
    # A second lock: the URL carries the password, kept 0600 beside the data.
    secret = pgdata / "crab_password"
    assert to_url(url).password == secret.read_text().strip()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_data_dir_is_per_user_and_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_PGDATA", raising=False)
    default = server.data_dir()
    assert default.name == "pgdata" and "llama-index-crab" in default.parts
    monkeypatch.setenv("CRAB_PGDATA", "/somewhere/else")
    assert server.data_dir() == Path("/somewhere/else")


def test_a_database_created_meanwhile_counts_as_created(pgdata: Path) -> None:
    # A `crab db start` killed during its CREATE DATABASE leaves the server's backend to finish
    # it: the next start's check may miss it and its own CREATE then finds it made.
    url = server.start(pgdata)
    with server._admin(url) as connection:
        server._create_database(connection, server.DATABASE)  # exists: no error
        with pytest.raises(sa.exc.ProgrammingError):
            server._create_database(connection, "not a name")  # other errors still raise
    assert _scalar(url, "SELECT current_database()") == server.DATABASE
