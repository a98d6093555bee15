"""The database on plain psycopg, for the quick `crab query` path: no SQLAlchemy imported,
the statements of ``store.compiled``, the same errors as the store's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg

__all__ = ["connect", "quote_userinfo", "run"]

SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def connect(url: str) -> psycopg.Connection[Any] | None:
    """A psycopg connection to ``url`` (a transaction begins with the first statement);
    None for a URL the store's own parser should judge. A server that does not answer
    raises what the store raises."""
    import psycopg

    if not url.startswith(SCHEMES):
        return None
    conninfo = "postgresql://" + quote_userinfo(url).partition("://")[2]
    try:
        return psycopg.connect(conninfo)
    except psycopg.OperationalError as exc:
        from .db import to_url, translated

        raise translated(exc, to_url(url)) from exc
    except psycopg.Error:
        return None


def run(
    connection: psycopg.Connection[Any], statement: Any, *, dicts: bool = False, **values: Any
) -> list[Any]:
    """The rows of a compiled statement (``store.compiled``) with ``values`` for its
    named parameters: tuples, or with ``dicts`` column name -> value."""
    from psycopg.rows import dict_row, tuple_row

    sql, fixed = statement
    with connection.cursor(row_factory=dict_row if dicts else tuple_row) as cursor:
        cursor.execute(sql, {**fixed, **values})
        return cursor.fetchall() if cursor.description is not None else []


def quote_userinfo(url: str) -> str:
    """``url`` with a user name or password that holds an unencoded ``@`` percent-encoded,
    so the host is what follows the last ``@`` (as a person reading it would expect)."""
    scheme, sep, rest = url.partition("://")
    userinfo, _, host = rest.rpartition("@")
    if not sep or "@" not in userinfo or "/" in userinfo or "?" in userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    quoted = quote(user, safe="") + (colon + quote(password, safe="") if colon else "")
    return f"{scheme}://{quoted}@{host}"
