"""``crab doctor`` (checks with a fix for each failure) and ``crab db`` (the embedded server)."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

Check = Callable[[], str]


class Notice(Exception):
    """Something to know, or to fix by hand, that does not fail the doctor."""


def _run(name: str, check: Check, failures: list[str]) -> None:
    try:
        detail = check()
    except Notice as notice:
        click.secho(f"warn {name}: {notice}", fg="yellow")
    except Exception as exc:  # each check reports its own failure and the doctor goes on
        failures.append(name)
        click.secho(f"FAIL {name}: {exc}", fg="red")
    else:
        click.secho(f"ok   {name}: {detail}", fg="green")


@click.command()
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.option("--collection", "-c", envvar="CRAB_COLLECTION", default="default")
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL")
@click.option("--rerank-model", envvar="CRAB_RERANK_MODEL")
@click.option("--chat-model", envvar="CRAB_CHAT_MODEL")
@click.option("--remeasure", is_flag=True, help="Time the models' weight candidates again.")
def doctor(
    database_url: str | None,
    collection: str,
    embed_model: str | None,
    rerank_model: str | None,
    chat_model: str | None,
    remeasure: bool,
) -> None:
    """Check models, database, pgvector, migrations and the collection; say how to fix each."""
    import sqlalchemy as sa

    from ..models.chat import default_chat_model
    from ..models.embedding import LlamaCppEmbedding
    from ..models.rerank import LlamaCppRerank
    from ..pipeline import (
        default_embed_model,
        default_rerank_model,
        recorded_weights,
        resolve_database_url,
    )
    from ..store import migrate
    from ..store.collections import get_collection

    failures: list[str] = []
    state: dict[str, object] = {}

    def embedder() -> str:
        state["embed_path"] = source = embed_model or default_embed_model()
        model = LlamaCppEmbedding(source)
        state["identity"] = model.identity()
        p = model.prompts
        prompts = f"{p.family} prompts: query {p.query!r}, document {p.text!r}"
        prompts = prompts if p.query or p.text else "no prompts"
        shape = f"pooling {model.resolved_pooling}, {model.dimension}-dim"
        return f"{model.model_name}, {shape}, {prompts}"

    def reranker() -> str:
        chosen = rerank_model or default_rerank_model()
        if not chosen:
            return "none configured: results are not reranked (--rerank-model to add one)"
        model = LlamaCppRerank(chosen)
        return f"{os.path.basename(model.model_path)}, rank pooling, {model.pair_format}"

    def chat() -> str:
        return os.path.basename(chat_model or str(default_chat_model()))

    def database() -> str:
        from ..store.db import mask_url, to_url

        url = resolve_database_url(database_url)
        engine = sa.create_engine(to_url(url))
        state["engine"] = engine
        with engine.connect() as c:
            version = c.execute(sa.text("SHOW server_version")).scalar()
        return f"PostgreSQL {version} at {mask_url(sa.make_url(url))}"

    def server_access() -> str:
        return embedded_access()

    def engine() -> sa.Engine:
        if "engine" not in state:
            raise RuntimeError("skipped: the database is not reachable")
        return state["engine"]  # type: ignore[return-value]

    def pgvector() -> str:
        with engine().connect() as c:
            return f"pgvector {migrate.check_pgvector(c)}"

    def revision() -> str:
        with engine().connect() as c:
            migrate.check(c)
        return f"at {migrate.head()}"

    def weights() -> str:
        from ..models.cpu import cpu_model, llama_build
        from ..models.gguf import resolve_model_path
        from ..models.weights import choose

        lines = [
            f"weights='auto' times each model once on {cpu_model()}, {llama_build()} "
            "(one decode, one thread, CPU time; --remeasure times again):"
        ]
        roles = {"embedder": embed_model or default_embed_model()}
        roles["reranker"] = rerank_model or default_rerank_model() or ""
        for role, spec in roles.items():
            if spec:
                path = resolve_model_path(spec)
                found = choose(path, remeasure=remeasure)
                lines.append(f"     {role} {path.name}: {found.describe()}")
        return "\n".join(lines)

    def collection_check() -> str:
        with engine().connect() as c:
            found = get_collection(c, collection)
        note = ""
        identity = state.get("identity")
        if identity is not None and not embed_model:
            # As build_pipeline does: a collection keeps the bundled weights it was filled with.
            kept = default_embed_model(found.identity.model)
            if kept != state.get("embed_path"):
                identity = LlamaCppEmbedding(kept, weights=recorded_weights(kept)).identity()
                note = f"; uses {os.path.basename(kept)}, the weights it was filled with"
        if identity is not None:
            found.check(identity)  # type: ignore[arg-type]
        return f"{collection!r}: {found.identity.describe()}{note}"

    for name, check in [
        ("weights", weights),  # first: the models below load a re-measured choice
        ("embedding model", embedder),
        ("reranker", reranker),
        ("chat model", chat),
        ("database", database),
        *([("server access", server_access)] if not database_url else []),
        ("pgvector", pgvector),
        ("migrations", revision),
        ("collection", collection_check),
    ]:
        _run(name, check, failures)
    if "engine" in state:
        engine().dispose()
    if failures:
        raise SystemExit(1)


def embedded_access() -> str:
    """Which account runs the embedded server and what it may pass through."""
    import pwd

    from ..server import postgres, processes
    from ..server.access import granted, opened_above

    pgdata = postgres.data_dir().expanduser().resolve()
    if os.geteuid() != 0:
        return f"data in {pgdata}; the server runs as you, no folder is opened to anyone"
    name = processes.SYSTEM_USER
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return f"data in {pgdata}; not started as root yet"
    folders = granted(pgdata, uid) + granted(processes._bin(), uid)
    passes = ", ".join(map(str, folders)) or "no folder needed it"
    detail = (
        f"data in {pgdata}; started by root, the server runs as {name!r}, which may pass "
        f"through (ACL entry user:{name}:--x: no listing, no reading) {passes}"
    )
    opened = opened_above(pgdata)
    if opened:
        shown = ", ".join(f"{folder} ({oct(mode)})" for folder, mode in opened)
        paths = " ".join(f"'{folder}'" for folder, _ in opened)
        raise Notice(
            f"{detail}; every user may read {shown}: versions before this one opened these "
            f"on every start as root; if you did not choose it, run `chmod go-rx {paths}`"
        )
    return detail


@click.group()
def db() -> None:
    """Manage the embedded PostgreSQL server (data in your user data directory)."""


@db.command()
def start() -> None:
    """Start the embedded server (and migrate it); print its URL, password masked."""
    from ..server import postgres as server
    from ..store import migrate
    from ..store.db import mask_url

    started = server.start()
    migrate.upgrade(started)
    click.echo(mask_url(started))


@db.command()
def stop() -> None:
    """Stop the embedded server."""
    from ..server import postgres as server

    click.echo("stopped" if server.stop() else "not running")


@db.command()
def status() -> None:
    """Say whether the embedded server runs, and where its data is."""
    from ..server import postgres as server
    from ..store.db import to_url

    s = server.status()
    if not s.running:
        click.echo(f"stopped, data {s.pgdata}")
        return
    sockets = to_url(s.url).query["host"] if s.url else "?"
    click.echo(f"running (pid {s.pid}), data {s.pgdata}, socket in {sockets}")


@db.command()
def url() -> None:
    """Print the embedded server's URL with its password (for CRAB_DATABASE_URL)."""
    click.echo(_url())


def _url() -> str:
    from ..server import postgres as server

    return server.url()
