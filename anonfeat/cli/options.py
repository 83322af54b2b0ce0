"""Command-line flags, declared once.

A command's flags come from two places, in the spirit of huggingface_hub's `cli/_cli_utils.py`:
- its options dataclass (anonfeat.options.ExtractOptions, PruneOptions, ...): `command` turns every
  field declared with `anonfeat.options.option(...)` into a flag, with the field's default, help,
  choices (an Enum, so --help lists them) and bounds, and hands the command the built options object;
- the `Annotated` aliases below for what is not an option of the Python API (inputs, outputs), so every
  command spells `-l/--labels`, `-o/--out`, ... the same way.
Every command also gets `--json PATH|-`, `-q/--quiet` and `-v/--verbose`, and receives an `Output`.

Adding a flag to a command with an options class is one field in that class, e.g. in ExtractOptions:
    decoder: str = option("auto", "Video decoding: ...", choices=DECODERS)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.markup import escape

from anonfeat.cli.output import STDOUT, Output, check_json_apart
from anonfeat.options import Flag, flag_of

# -- shared aliases of flags that are not options of the Python API ------------------------------
Labels = Annotated[Path, typer.Option(
    "--labels", "-l", help="Labels: CSV (video,split,action,<attributes>), a PA-HMDB51 PrivacyAttributes folder, "
                           "or a VP-HMDB51/VP-UCF101 .pkl.")]
KeepShards = Annotated[bool, typer.Option(
    "--keep-shards", help="Under torchrun: keep the per-rank shard stores (STORE.shards/) after merging them "
                          "into STORE.")]
VideosArg = Annotated[Path, typer.Argument(
    help="Folder of videos (searched recursively) or a text file listing them.")]


def out_option(help: str) -> Any:
    """`-o/--out`, required, with the command's own description of what it writes."""
    return Annotated[Path, typer.Option("--out", "-o", help=help)]


def _json_target(value: Optional[str]) -> Optional[str]:
    if value is not None and value.startswith("-") and value != STDOUT:
        raise typer.BadParameter(f"got the flag {value!r} as its value: --json takes a destination, `--json -` "
                                 "(JSON alone on stdout) or `--json FILE` (a bare --json is no longer accepted)")
    return value


JsonOut = Annotated[Optional[str], typer.Option(
    "--json", metavar="PATH|-", callback=_json_target,
    help="Write the result as JSON to PATH, or to stdout with `-` (then nothing else goes to stdout).")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress or status lines on stderr: only results (stdout) and errors.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Extra detail on stderr: the effective options, per-video lines, timings.")]

_COMMON = ("json_out", "quiet", "verbose")


# -- flags generated from an options dataclass ---------------------------------------------------
@functools.lru_cache(maxsize=None)
def choice_enum(name: str, choices: tuple[str, ...]) -> type[enum.Enum]:
    """A str Enum of `choices` (typer lists an Enum's values in --help and refuses others)."""
    return enum.Enum("".join(part.title() for part in name.split("_")), {c: c for c in choices}, type=str)


def _optional(tp: Any) -> Any:
    return tp if _allows_none(tp) else Optional[tp]


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _cli_type(name: str, field_type: Any, spec: Flag, default: Any) -> Any:
    """The type typer parses: the flag's cli_type, an Enum for choices, else the field's own type
    (`X | None` spelt Optional[X], which typer understands; `Any` as str)."""
    if spec.choices is not None:
        tp = choice_enum(name, spec.choices)
        return Optional[tp] if default is None else tp
    tp = spec.cli_type if spec.cli_type is not None else field_type
    if tp is Any:
        tp = str
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = Optional[args[0]] if len(args) == 1 else tp
    return _optional(tp) if default is None else tp


def declarations(name: str, spec: Flag) -> tuple[str, ...]:
    """The flag's spellings: its long names (`--field-name` unless it declares another), then shorts."""
    longs = [n for n in spec.names if n.startswith("--")]
    shorts = [n for n in spec.names if not n.startswith("--")]
    return (*(longs or ["--" + name.replace("_", "-")]), *shorts)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def cli_default(f: dataclasses.Field) -> Any:
    """The default as the command line holds it (an Enum member, a list for a repeatable flag)."""
    spec, default = flag_of(f), field_default(f)
    if default is None:
        return None
    if spec.choices is not None:
        return choice_enum(f.name, spec.choices)(default)
    if isinstance(default, tuple) and typing.get_origin(spec.cli_type) in (list, List):
        return list(default)
    if spec.parse is not None and spec.cli_type is not None and isinstance(default, tuple) and not default:
        return None  # "3,6,9"-style flags: no value is the field's empty tuple
    return default


def from_cli(f: dataclasses.Field, value: Any) -> Any:
    """A flag's parsed value as the dataclass field holds it."""
    spec = flag_of(f)
    if isinstance(value, enum.Enum):
        value = value.value
    if spec.parse is not None:
        return spec.parse(value)
    return value


def flag_fields(cls: type, exclude: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if flag_of(f) is not None and f.name not in exclude]


def field_parameters(cls: type, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per flag field of `cls`, annotated for typer."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in flag_fields(cls, exclude):
        spec = flag_of(f)
        default = field_default(f)
        option = typer.Option(*declarations(f.name, spec), help=spec.help, min=spec.min, max=spec.max,
                              metavar=spec.metavar if spec.choices is None else None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=cli_default(f),
                                        annotation=Annotated[_cli_type(f.name, hints[f.name], spec, default), option]))
    return params


# -- commands -------------------------------------------------------------------------------------
def command(app: typer.Typer, name: str, options: type | None = None, exclude: tuple[str, ...] = ()
            ) -> Callable[[Callable], Callable]:
    """Register the decorated function as command `name`.

    Its flags: the function's own parameters (declared with the aliases above), then one per flag field of
    the dataclass `options` (less `exclude`), then --json, -q, -v. The function is called with its own
    parameters, `options=` the built and validated options object (when `options` is given; -q turns its
    `progress` off) and `ui=` the command's `Output`.
    """
    def register(func: Callable) -> Callable:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(func).parameters.values() if p.name not in ("options", "ui")]
        generated = field_parameters(options, exclude) if options is not None else []
        common = [inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=JsonOut),
                  inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet),
                  inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose)]
        by_name = {f.name: f for f in flag_fields(options, exclude)} if options is not None else {}

        def run(**values: Any) -> Any:
            ui = Output(json_target=values.pop("json_out"), quiet=values.pop("quiet"), verbose=values.pop("verbose"))
            call = {p.name: values.pop(p.name) for p in own}
            if options is not None:
                built = options(**{key: from_cli(by_name[key], value) for key, value in values.items()})
                if ui.quiet and hasattr(built, "progress"):
                    built.progress = False
                built.validate()
                ui.detail(f"options: {escape(repr(built))}")
                call["options"] = built
            given = {p.name: call[p.name] for p in own}
            if options is not None:
                given.update({name: getattr(call["options"], name) for name in by_name})
            check_json_apart(ui.json_target, {name.replace("_", "-"): value for name, value in given.items()})
            return func(**call, ui=ui)

        params = own + generated + common
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__doc__, run.__name__, run.__module__ = func.__doc__, func.__name__, func.__module__
        run.options_class, run.options_exclude = options, exclude  # type: ignore[attr-defined]
        app.command(name)(run)
        return func

    return register
