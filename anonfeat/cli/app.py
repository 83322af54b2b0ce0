"""The Typer application shared by every command module, and the error boundary."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from anonfeat import __version__
from anonfeat.errors import AnonfeatError

app = typer.Typer(
    name="anonfeat",
    help="Extract, store and share video features without leaking who is in the videos.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Logs and pipes get wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 2, 3


def _version(value: bool) -> None:
    if value:
        console.print(f"anonfeat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Show the version and exit."),
) -> None:
    """anonfeat: privacy-preserving video features."""


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except AnonfeatError as exc:
        if getattr(exc, "quiet", False):  # a distributed run's error, reported by rank 0 with its status
            sys.exit(EXIT_OK)
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; completed videos are kept, re-run to resume")
        sys.exit(130)
