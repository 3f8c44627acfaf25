"""The ``caloforge`` command. Thin: parses arguments, calls the library, prints, sets the exit code.

Every command's errors that come from bad input (``CaloforgeError``) or the file system (``OSError``) are
printed as one line ``error: ...`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import sys

import typer

from caloforge.errors import CaloforgeError

app = typer.Typer(
    name="caloforge",
    help="Train, run, validate and ship generative calorimeter-shower models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print an error line and leave with exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# ---- commands are added below, one section per concern ------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CaloforgeError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
