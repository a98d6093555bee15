"""Read replicas: send a read to a streaming replica, or to the primary when none will do.

Reads go round-robin over the replicas. A replica serves a read when it is a standby
(``pg_is_in_recovery()``), answers, and lags at most ``max_lag`` seconds; for
read-your-writes also once it has replayed this store's last write, waited for at most
``wait`` seconds, after which the primary answers. A replica that is down, not a standby
or lagging is skipped for ``RETRY_AFTER`` seconds with one :class:`ReplicaWarning` per
outage; reads never fail while the primary answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, TypeVar

import sqlalchemy as sa

from ..errors import DatabaseUnavailableError, ReplicaWarning
from .db import async_engine_for, mask_url, to_url, translate_errors, translated

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Replicas", "write_position"]

T = TypeVar("T")
RETRY_AFTER = 5.0  # seconds a skipped replica is left alone before it is tried again
CONNECT_TIMEOUT = 3  # seconds; psycopg's default is to wait for the OS (minutes)
POLL = 0.005
_log = logging.getLogger(__name__)

# Lag is zero when everything received is replayed (an idle primary sends nothing, so the
# last replayed transaction may be old without the replica being behind).
STATUS = sa.text(
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, "
    "coalesce(pg_last_wal_replay_lsn() >= CAST(:target AS pg_lsn), :target IS NULL)"
)
CAUGHT_UP = sa.text("SELECT coalesce(pg_last_wal_replay_lsn() >= CAST(:target AS pg_lsn), false)")
# The insert position, not pg_current_wal_lsn() (the write position): with
# synchronous_commit=off the commit record may not have been written out yet.
WRITE_POSITION = sa.text("SELECT pg_current_wal_insert_lsn()::text")
Verdict = Literal["use", "skip", "primary"]


def write_position(connection: sa.Connection) -> str:
    """The primary's WAL position now: after a commit, at or past that commit's record."""
    return str(connection.scalar(WRITE_POSITION))


class Replicas:
    """The read replicas of one store, with the store's last write position."""

    def __init__(self, urls: Sequence[str | sa.URL], *, max_lag: float, wait: float) -> None:
        if isinstance(urls, (str, sa.URL)):
            raise TypeError("read_urls must be a list of URLs, not one URL")
        if max_lag <= 0 or wait < 0:
            raise ValueError(f"need max_lag > 0 and wait >= 0, got {max_lag!r} and {wait!r}")
        self.engines = [_engine(url) for url in urls]
        self.max_lag, self.wait = max_lag, wait
        self.target: str | None = None  # the last write's WAL position, for read-your-writes
        self._aengines: list[AsyncEngine] | None = None
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._skipped_until: dict[int, float] = {}
        self._warned: set[int] = set()

    def _order(self) -> list[int]:
        now = time.monotonic()
        n = len(self.engines)
        start = next(self._turn) % n
        ring = [(start + i) % n for i in range(n)]
        return [i for i in ring if self._skipped_until.get(i, 0.0) <= now]

    def _skip(self, i: int, reason: str) -> None:
        with self._lock:
            self._skipped_until[i] = time.monotonic() + RETRY_AFTER
            if i in self._warned:
                return
            self._warned.add(i)
        warnings.warn(
            f"skipping read replica {mask_url(self.engines[i].url)}: {reason}; reads go to "
            "another replica or the primary until it is usable again",
            ReplicaWarning,
            stacklevel=5,
        )

    def _judge(self, i: int, recovering: bool, lag: float | None) -> Verdict:
        if not recovering:
            self._skip(i, "it is not a standby (pg_is_in_recovery() is false)")
            return "skip"
        if lag is not None and lag > self.max_lag:
            self._skip(i, f"it lags {lag:.1f} s behind the primary (max_lag {self.max_lag:g} s)")
            return "skip"
        with self._lock:
            self._warned.discard(i)
        return "use"

    def _failed(self, i: int, exc: sa.exc.DBAPIError) -> None:
        """Skip replica ``i`` if ``exc`` says it is unreachable; otherwise raise."""
        error = translated(exc, self.engines[i].url)
        # 40001 on a standby: a query cancelled by a conflict with WAL replay.
        if isinstance(error, DatabaseUnavailableError) or _sqlstate(exc) == "40001":
            reason = str(exc.orig or exc).strip().splitlines() or ["unknown error"]
            self._skip(i, reason[0])
            return
        if error is exc:
            raise exc
        raise error from exc

    def run(self, primary: sa.Engine, function: Callable[[sa.Connection], T], fresh: bool) -> T:
        """``function(connection)`` in a transaction on a usable replica, else the primary.
        ``fresh``: only on a replica that has replayed ``self.target``."""
        target = self.target if fresh else None
        for i in self._order():
            try:
                with self.engines[i].begin() as connection:
                    recovering, lag, caught_up = connection.execute(
                        STATUS, {"target": target}
                    ).one()
                    verdict = self._judge(i, recovering, _float(lag))
                    if verdict == "use" and not caught_up:
                        verdict = self._catch_up(connection, target)
                    if verdict == "use":
                        return function(connection)
            except sa.exc.DBAPIError as exc:
                self._failed(i, exc)
                continue
            if verdict == "primary":
                break
        with translate_errors(primary.url), primary.begin() as connection:
            return function(connection)

    def _catch_up(self, connection: sa.Connection, target: str | None) -> Verdict:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            time.sleep(POLL)
            if connection.scalar(CAUGHT_UP, {"target": target}):
                return "use"
        _log.info("no replica replayed %s within %s s; reading from the primary", target, self.wait)
        return "primary"

    async def arun(
        self, primary: AsyncEngine, function: Callable[[sa.Connection], T], fresh: bool
    ) -> T:
        """:meth:`run` on the async driver."""
        if self._aengines is None:
            self._aengines = [async_engine_for(engine) for engine in self.engines]
        target = self.target if fresh else None
        for i in self._order():
            try:
                async with self._aengines[i].begin() as connection:
                    status = await connection.execute(STATUS, {"target": target})
                    recovering, lag, caught_up = status.one()
                    verdict = self._judge(i, recovering, _float(lag))
                    deadline = time.monotonic() + self.wait
                    while verdict == "use" and not caught_up:
                        if time.monotonic() >= deadline:
                            verdict = "primary"
                            break
                        await asyncio.sleep(POLL)
                        caught_up = await connection.scalar(CAUGHT_UP, {"target": target})
                    if verdict == "use":
                        return await connection.run_sync(function)
            except sa.exc.DBAPIError as exc:
                self._failed(i, exc)
                continue
            if verdict == "primary":
                break
        with translate_errors(primary.url):
            async with primary.begin() as connection:
                return await connection.run_sync(function)

    def written(self, primary: sa.Engine) -> None:
        """Remember the primary's WAL position after this store's write committed."""
        with translate_errors(primary.url), primary.connect() as connection:
            self.target = write_position(connection)

    async def awritten(self, primary: AsyncEngine) -> None:
        with translate_errors(primary.url):
            async with primary.connect() as connection:
                self.target = str(await connection.scalar(WRITE_POSITION))

    def dispose(self) -> None:
        """Close the connections (inside a running event loop, on a worker thread's loop)."""
        if self._aengines is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(self.adispose())
            else:
                with ThreadPoolExecutor(1) as worker:
                    worker.submit(asyncio.run, self.adispose()).result()
        for engine in self.engines:
            engine.dispose()

    async def adispose(self) -> None:
        for aengine in self._aengines or []:
            await aengine.dispose()
        self._aengines = None
        for engine in self.engines:
            engine.dispose()


def _engine(url: str | sa.URL) -> sa.Engine:
    parsed = to_url(url)
    if "connect_timeout" not in parsed.query:  # in the URL so the async engine gets it too
        parsed = parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT)})
    return sa.create_engine(parsed, pool_pre_ping=True)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _sqlstate(exc: Exception) -> str:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return str(getattr(orig, "sqlstate", None) or "")
