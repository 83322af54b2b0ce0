"""Print the flag tables of docs/cli.md, generated from the CLI itself (names, defaults, help).

    PYTHONPATH=$PWD python scripts/cli_reference.py [COMMAND ...]

One Markdown section per command (all of them, in the page's order, or those named): the usage line,
the command's docstring, then an `argument / flag | default | meaning` table. Paste the tables into
docs/cli.md whenever a flag changes, so the page never drifts from the parser.
"""

from __future__ import annotations

import sys

import click
import typer

import anonfeat.cli  # noqa: F401 - registers every command on the app
from anonfeat.cli.app import app

PAGE_ORDER = ["encoders", "extract", "inspect", "train-adapter", "sanitize", "train-pruner", "prune", "audit",
              "bench", "synth"]
TYPE_NAMES = {"float range": "FLOAT", "float": "FLOAT", "int range": "INT", "int": "INT", "list[str]": "TEXT",
              "path": "PATH", "str": "TEXT"}


def markdown_cell(text: str | None) -> str:
    """Help text safe inside a Markdown table cell."""
    return (text or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def default_cell(param) -> str:
    """The default as the page shows it: `required`, `off`/`on` for flags, `–` for none."""
    if param.required:
        return "required"
    if param.param_type_name == "argument":
        return ""
    if param.is_flag and not param.secondary_opts:
        return "off"
    if param.default is None:
        return "–"
    if param.secondary_opts:
        return "on" if param.default else "off"
    default = param.default
    if isinstance(default, (list, tuple)):
        default = ",".join(str(getattr(d, "value", d)) for d in default)
    return f"`{getattr(default, 'value', default)}`"


def names_cell(param, ctx) -> str:
    """`--long TYPE`, `-s` (choices spelled out, e.g. `--resize short|full`)."""
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}" + (" ..." if param.nargs == -1 else "") + "`"
    opts = list(param.opts)
    if param.secondary_opts:
        opts = [f"{param.opts[0]}/{param.secondary_opts[0]}"] + opts[1:]
    if not param.is_flag:
        if opts[0] == "--json":  # a file, or - for stdout
            type_name = "PATH|-"
        else:  # typer's display type: <int>, <path>, <short|full> ...
            shown = str(param.display_type(ctx)).strip("<>")
            type_name = TYPE_NAMES.get(shown.lower(), shown if "|" in shown else shown.upper())
        opts[0] = f"{opts[0]} {type_name}".replace("|", "\\|")
    return ", ".join(f"`{o}`" for o in opts)


def command_section(name: str, command: click.Command, parent: click.Context) -> str:
    ctx = click.Context(command, info_name=name, parent=parent)
    lines = [f"### {name}", "", f"usage: {' '.join(command.collect_usage_pieces(ctx))}", "",
             (command.help or "").strip(), "", "| argument / flag | default | meaning |", "| --- | --- | --- |"]
    for param in command.params:
        if param.name == "help":
            continue
        lines.append(f"| {names_cell(param, ctx)} | {default_cell(param)} | {markdown_cell(getattr(param, 'help', ''))} |")
    return "\n".join(lines) + "\n"


def main(names: list[str]) -> None:
    root = typer.main.get_command(app)
    ctx = click.Context(root)
    known = root.list_commands(ctx)
    wanted = names or [n for n in PAGE_ORDER if n in known] + sorted(set(known) - set(PAGE_ORDER))
    for name in wanted:
        command = root.get_command(ctx, name)
        if command is None:
            sys.exit(f"{name}: no such command (commands: {', '.join(known)})")
        print(command_section(name, command, ctx))


if __name__ == "__main__":
    main(sys.argv[1:])
