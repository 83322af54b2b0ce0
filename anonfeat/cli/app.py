"""The Typer application shared by every command module, and the error boundary."""

from __future__ import annotations

import sys
from typing import Optional

import typer

try:  # recent typer versions vendor click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - typer with click as a dependency
    from click import exceptions as click_errors
from rich.console import Console
from rich.markup import escape

from anonfeat._version import __version__
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

# 0 done; 2 bad usage or input (one line on stderr); 3 some videos failed (recorded in the store);
# 4 `inspect --verify` found problems in the store.
EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_INVALID = 0, 2, 3, 4


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


def _bare_json(argv: list[str]) -> bool:
    """The spelling of earlier versions, `--json` with no destination, as the last argument."""
    return bool(argv) and argv[-1] == "--json"


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit status 2."""
    if _bare_json(sys.argv[1:]):
        err_console.print("[bold red]error:[/] --json takes a destination: `--json -` writes the JSON alone on "
                          "stdout, `--json FILE` writes it to FILE (a bare --json is no longer accepted)",
                          highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    try:
        status = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `anonfeat` alone: the help
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:  # click's own checks (a missing argument, a value not among the choices)
        command = exc.ctx.command_path if exc.ctx is not None else "anonfeat"
        err_console.print(f"[bold red]error:[/] {exc.format_message()} (see `{command} -h`)", highlight=False,
                          soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except click_errors.ClickException as exc:
        err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[bold red]interrupted[/]; completed videos are kept, re-run to resume")
        sys.exit(130)
    except AnonfeatError as exc:
        if getattr(exc, "quiet", False):  # a distributed run's error, reported by rank 0 with its status
            sys.exit(EXIT_OK)
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # disk full, permission denied, ... outside the store's own checks
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        text = str(exc).strip()
        reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
        err_console.print(f"[bold red]error:[/] {escape(where + str(reason))}; free space or fix the permissions "
                          "and re-run "
                          "(completed videos are kept)", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; completed videos are kept, re-run to resume")
        sys.exit(130)
    sys.exit(status or EXIT_OK)
