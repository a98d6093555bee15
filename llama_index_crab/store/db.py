"""Engine and URL helpers shared by the store, the collections and the migrations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..errors import CollectionNotFoundError, DatabaseUnavailableError, SchemaError, StoreError
from .plain import quote_userinfo

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DRIVER = "postgresql+psycopg"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_KEY = re.compile(r"(?i)\b((?:ssl|pg)?pass(?:word|wd)?|secret|token)(\s*=\s*)")
_MASK = "***"


def to_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url`` and select the psycopg 3 driver; other drivers are refused."""
    try:
        parsed = sa.make_url(quote_userinfo(url) if isinstance(url, str) else url)
    except sa.exc.ArgumentError:  # its message holds the URL, password and all
        raise ValueError(f"not a database URL: {mask_url(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres", DRIVER):
        return parsed.set(drivername=DRIVER)
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}; "
        "use postgresql:// or postgresql+psycopg:// (psycopg 3)"
    )


def mask_url(url: str | sa.URL) -> str:
    """``url`` with its secrets replaced by ``***``, safe to print (see :func:`mask_secrets`)."""
    if isinstance(url, sa.URL):
        query = {k: _MASK if _SECRET_KEY.fullmatch(f"{k}=") else v for k, v in url.query.items()}
        return mask_secrets(url.set(query=query).render_as_string(hide_password=True))
    return mask_secrets(str(url))


def mask_secrets(text: str) -> str:
    """``text`` with every secret a database URL or connection string in it may hold
    replaced by ``***``: the password of a URL's userinfo (up to the *last* ``@`` of the
    line, as it may hold unencoded blanks, ``@`` or quotes), ``password=`` in a query string
    and in a libpq ``key=value`` string (quoted values too). Masking errs towards hiding
    more: a line is never printed with a part of a password."""
    return "".join(_mask_keys(_mask_userinfo(line)) for line in text.splitlines(keepends=True))


def _mask_userinfo(line: str) -> str:
    out, pos = [], 0
    while (found := _SCHEME.search(line, pos)) is not None:
        start = found.end()
        user = re.match(r"[^:@/?#\s]*", line[start:])
        colon = start + (user.end() if user else 0)
        at = line.rfind("@", colon)
        if colon >= len(line) or line[colon] != ":" or at < 0:
            out.append(line[pos:start])
            pos = start
            continue
        out.append(line[pos : colon + 1] + _MASK)
        pos = at
    return "".join(out) + line[pos:]


def _mask_keys(line: str) -> str:
    out, pos = [], 0
    for found in _SECRET_KEY.finditer(line):
        if found.start() < pos:
            continue
        start = found.end()
        if start < len(line) and line[start] in "'\"":
            end = _closing_quote(line, start)
        else:
            value = re.match(r"[^\s&#'\"]*", line[start:])
            end = start + (value.end() if value else 0)
            if end > start and line[end - 1] == ":" and (end == len(line) or line[end].isspace()):
                end -= 1  # "...?password=x: reason": the colon is the message's
        out.append(line[pos:start] + _MASK)
        pos = end
    return "".join(out) + line[pos:]


def _closing_quote(line: str, start: int) -> int:
    """The index after the quote closing the one at ``start`` (backslash escapes, as libpq
    reads them), or the end of the line when it is not closed."""
    quote_char, i = line[start], start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
        elif line[i] == quote_char:
            return i + 1
        else:
            i += 1
    return len(line)


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
    if sqlstate == "23503" and "crab_nodes" in str(orig):  # its collection row is gone
        return CollectionNotFoundError(
            "the collection was dropped while this command wrote to it (`crab collections "
            "drop` meanwhile?); run the command again to fill a new one"
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
def transaction(bind: str | sa.URL | sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A connection in a transaction on ``bind``; an engine made from a URL is disposed after.
    A connection is used as it is, in the transaction its caller holds."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    engine, owned = engine_from(bind)
    try:
        with translate_errors(engine.url), engine.begin() as connection:
            yield connection
    finally:
        if owned:
            engine.dispose()
