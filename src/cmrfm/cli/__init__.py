"""The ``cmrfm`` command: thin argument parsing that calls into the library.

Each subcommand group lives in its own module exposing ``register(app)``; heavy imports happen
inside command bodies so ``cmrfm --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from cmrfm import __version__
from cmrfm.errors import CmrfmError

#: Modules under ``cmrfm.cli`` that add commands, in help order.
SUBCOMMAND_MODULES = ("data", "simulate", "pretrain", "tasks", "analyze")

app = typer.Typer(
    name="cmrfm",
    help="cmrfm: a vision foundation model toolkit for cardiac MRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cmrfm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """cmrfm: pretrain a CMR backbone, adapt it with few labels, analyse studies."""
    if debug:
        os.environ["CMRFM_DEBUG"] = "1"


for _name in SUBCOMMAND_MODULES:
    try:
        _module = importlib.import_module(f"cmrfm.cli.{_name}")
    except ModuleNotFoundError as _err:  # a group not written yet
        if _err.name != f"cmrfm.cli.{_name}":
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app, turning cmrfm errors into one clear line."""
    try:
        # Without standalone mode click returns (not raises) the code of a `typer.Exit`.
        result = app(args=argv, standalone_mode=False)
    except CmrfmError as err:
        if os.environ.get("CMRFM_DEBUG"):
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        return 2
    except typer.Exit as exit_:
        return exit_.exit_code
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        return 130
    except typer.Abort:
        return 1
    except Exception as err:
        # Usage errors of the click that typer bundles: they print themselves (no traceback).
        show, code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
