"""Engine and URL helpers shared by the store, the collections and the migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .errors import DatabaseUnavailableError, SchemaError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DRIVER = "postgresql+psycopg"


def to_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url`` and select the psycopg 3 driver; other drivers are refused."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {mask_url(url)!r}") from exc
    if parsed.drivername in ("postgresql", "postgres", DRIVER):
        return parsed.set(drivername=DRIVER)
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}; "
        "use postgresql:// or postgresql+psycopg:// (psycopg 3)"
    )


def mask_url(url: str | sa.URL) -> str:
    """``url`` with its password replaced by ``***``, safe for logs and error messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def engine_from(url_or_engine: str | sa.URL | sa.Engine) -> tuple[sa.Engine, bool]:
    """Return ``(engine, owned)``; an engine we create is ours to dispose."""
    if isinstance(url_or_engine, sa.Engine):
        if url_or_engine.dialect.name != "postgresql":
            raise ValueError(f"expected a PostgreSQL engine, got {url_or_engine.dialect.name!r}")
        return url_or_engine, False
    return sa.create_engine(to_url(url_or_engine), pool_pre_ping=True), True


def async_engine_for(engine: sa.Engine) -> AsyncEngine:
    """An async psycopg engine for the same database as ``engine``."""
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(to_url(engine.url), pool_pre_ping=True)


@contextmanager
def translate_errors(url: sa.URL) -> Iterator[None]:
    """Turn connection failures and missing tables into this package's errors."""
    import psycopg

    try:
        yield
    except (sa.exc.DBAPIError, psycopg.Error) as exc:  # COPY raises the driver's own errors
        error = translated(exc, url)
        if error is exc:
            raise
        raise error from exc


def translated(exc: sa.exc.DBAPIError | Exception, url: sa.URL) -> Exception:
    import psycopg

    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    invalidated = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    # 08: connection exception; 57P: the server shut down or restarted.
    if (
        invalidated
        or (not sqlstate and isinstance(orig, psycopg.OperationalError))
        or sqlstate.startswith(("08", "57P"))
    ):
        return DatabaseUnavailableError(
            f"cannot connect to {mask_url(url)}: {_first_line(orig)}; "
            "check that the server is running and the URL is right"
        )
    if sqlstate.startswith("53"):  # disk full, out of memory, too many connections
        return DatabaseUnavailableError(
            f"the database server at {mask_url(url)} is out of resources: {_first_line(orig)}; "
            "free disk space or memory on the server, or close other connections"
        )
    if sqlstate == "42P01" and "crab_" in str(orig):
        return SchemaError(
            f"database {mask_url(url)} is not migrated ({_first_line(orig)}); "
            "run `python -m llama_index_crab.migrate upgrade`"
        )
    return exc


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "unknown"


@contextmanager
def transaction(bind: str | sa.URL | sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction on ``bind``; an engine made from a URL is disposed after."""
    engine, owned = engine_from(bind)
    try:
        with translate_errors(engine.url), engine.begin() as connection:
            yield connection
    finally:
        if owned:
            engine.dispose()
