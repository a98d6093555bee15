"""``crab migrate`` and ``crab collections``: the database's schema and collections."""

from __future__ import annotations

import click

__all__ = ["collections", "migrate"]


@click.command()
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.option("--revision", default="head", show_default=True)
def migrate(database_url: str | None, revision: str) -> None:
    """Apply the schema migrations (the embedded server is migrated automatically)."""
    from ..pipeline import resolve_database_url
    from ..store import migrate as migrations

    url = database_url or resolve_database_url(None)
    migrations.upgrade(url, revision)
    click.echo(f"database at revision {migrations.current(url)}")


@click.group(invoke_without_command=True)
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.pass_context
def collections(ctx: click.Context, database_url: str | None) -> None:
    """List collections with their model, dimension and node count; `drop NAME` deletes one."""
    from ..pipeline import resolve_database_url
    from ..store.collections import list_collections

    ctx.meta["crab.database_url"] = database_url
    if ctx.invoked_subcommand is not None:
        return
    rows = list_collections(resolve_database_url(database_url))
    if not rows:
        click.echo("no collections yet; create one with: crab ingest PATH")
    for c in rows:
        state = "indexed" if c.indexed else "no index"
        click.echo(f"{c.name}\t{c.model}\t{c.dimension}-dim\t{c.count} nodes\t{state}")


@collections.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.pass_context
def drop(ctx: click.Context, name: str, yes: bool, database_url: str | None) -> None:
    """Delete collection NAME with all its nodes and its index."""
    from ..errors import CollectionNotFoundError
    from ..pipeline import resolve_database_url
    from ..store.collections import drop_collection, list_collections

    url = resolve_database_url(database_url or ctx.meta.get("crab.database_url"))
    found = [c for c in list_collections(url) if c.name == name]
    if not found:
        raise CollectionNotFoundError(f"no collection named {name!r}; see `crab collections`")
    if not yes:
        click.confirm(f"drop collection {name!r} and its {found[0].count} nodes?", abort=True)
    drop_collection(url, name)
    click.echo(f"dropped collection {name!r} ({found[0].count} nodes)")
