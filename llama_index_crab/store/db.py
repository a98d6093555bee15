"""Engine and URL helpers shared by the store, the collections and the migrations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import sqlalchemy as sa

from ..errors import DatabaseUnavailableError, SchemaError, StoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DRIVER = "postgresql+psycopg"
# A URL up to the next blank or quote; its userinfo is everything before the *last* "@" of
# the authority, since a password may hold an unencoded "@" (or ":" or "/").
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")
_SECRET_PARAM = re.compile(r"(?i)\b((?:ssl)?pass(?:word|wd)?|secret|token)=([^&\s'\"]*)")


def to_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url`` and select the psycopg 3 driver; other drivers are refused."""
    try:
        parsed = sa.make_url(_quote_userinfo(url) if isinstance(url, str) else url)
    except sa.exc.ArgumentError:  # its message holds the URL, password and all
        raise ValueError(f"not a database URL: {mask_url(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres", DRIVER):
        return parsed.set(drivername=DRIVER)
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}; "
        "use postgresql:// or postgresql+psycopg:// (psycopg 3)"
    )


def _quote_userinfo(url: str) -> str:
    """``url`` with a user name or password that holds an unencoded ``@`` percent-encoded,
    so the host is what follows the last ``@`` (as a person reading it would expect)."""
    scheme, sep, rest = url.partition("://")
    userinfo, _, host = rest.rpartition("@")
    if not sep or "@" not in userinfo or "/" in userinfo or "?" in userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    quoted = quote(user, safe="") + (colon + quote(password, safe="") if colon else "")
    return f"{scheme}://{quoted}@{host}"


def mask_url(url: str | sa.URL) -> str:
    """``url`` with its secrets replaced by ``***`` (the password of the userinfo, even one
    with an unencoded ``@``, and ``password=`` query parameters), safe to print."""
    text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else str(url)
    return mask_secrets(text)


def mask_secrets(text: str) -> str:
    """``text`` with the secrets of every URL in it, and of ``password=`` settings (as in
    a libpq connection string), replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1=***", _URL.sub(_mask_one, text))


def _mask_one(match: re.Match[str]) -> str:
    url = match.group(0)
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")  # over-masks when a query value holds "@": safe, and rare
    if at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{rest[at + 1 :]}"


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
            f"database {mask_url(url)} is not migrated ({_first_line(orig)}); run `crab migrate`"
        )
    if sqlstate == "42501":  # insufficient privilege
        return StoreError(
            f"the role {url.username or 'in use'!r} lacks a privilege on {mask_url(url)}: "
            f"{_first_line(orig)}; connect as the database owner, or grant the privilege "
            f"(for `crab migrate`: GRANT CREATE ON SCHEMA public TO {url.username or 'the role'})"
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
