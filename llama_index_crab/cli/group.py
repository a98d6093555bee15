"""The ``crab`` group's error handling: every error one line, secrets masked."""

from __future__ import annotations

import io
import sys
import warnings
from typing import Any

import click

__all__ = ["CrabGroup", "fail"]


class CrabGroup(click.Group):
    """Turns every error into one line (exit code 1, 2 for a bad argument); ``--debug``
    shows the traceback instead, with secrets masked there too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                # Ours and other user warnings: shown once each, as one masked line.
                warnings.simplefilter("default", UserWarning)
                warnings.showwarning = _show_warning
                result = super().invoke(ctx)
                sys.stdout.flush()  # a closed pipe fails here, not in the last flush at exit
                return result
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `crab query ... | head`: the reader left, stop quietly
            _silence_stdout()
            ctx.exit(0)
        except click.UsageError as exc:
            if ctx.meta.get("crab.debug"):
                raise
            path = (exc.ctx or ctx).command_path.split()[1:]
            fail(f"{exc.format_message()} (see `{' '.join(['crab', *path])} --help`)")
            ctx.exit(exc.exit_code)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo(
                "interrupted; finished documents are kept, run the command again to resume",
                err=True,
            )
            ctx.exit(130)
        except Exception as exc:
            if ctx.meta.get("crab.debug"):
                sys.excepthook = _masked_excepthook
                raise
            fail(_one_line(exc))
            ctx.exit(1)


def _one_line(exc: Exception) -> str:
    """The message of ``exc`` on one line; an error we did not expect says so."""
    from ..errors import describe

    return describe(exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _show_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> None:
    """A warning as one line, ``warning: MESSAGE``, without its source line."""
    click.secho(f"warning: {_safe(' '.join(str(message).split()))}", fg="yellow", err=True)


def fail(message: str) -> None:
    click.secho(f"error: {_safe(message)}", fg="red", err=True)


def _masked_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    import traceback

    sys.stderr.write(_safe("".join(traceback.format_exception(kind, value, tb))))


def _safe(message: str) -> str:
    """Hide the secrets of every database URL (and ``password=`` setting) in a message."""
    from ..store.db import mask_secrets

    return mask_secrets(message)
