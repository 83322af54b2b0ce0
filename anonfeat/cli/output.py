"""Where a command's output goes: results on stdout, everything else on stderr.

Results are the final table or summary line, or the JSON document (`--json -`, then alone on stdout).
Status lines, notes and progress go to stderr; `-q` silences them (results and errors remain), `-v`
adds detail (per-video lines, timings, the effective options).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from anonfeat.errors import AnonfeatError
from anonfeat.paths import check_writable_file, same_file

STDOUT = "-"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def json_ready(value: Any) -> Any:
    """Plain JSON values: paths and numpy scalars as Python values, NaN/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # arrays and numpy scalars
        return json_ready(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_json_target(target: str | None) -> None:
    """Refuse, before any work, a --json file that would overwrite a store or a folder."""
    if target is None or target == STDOUT:
        return
    path = Path(target)
    if path.is_dir():
        raise AnonfeatError(f"--json {target}: is a folder; give a file such as result.json, or - for stdout")
    if path.is_file():
        with open(path, "rb") as handle:
            if handle.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC:
                raise AnonfeatError(f"--json {target}: is an HDF5 file (a feature store?), which --json would "
                                    "overwrite; give a .json file, or - for stdout")


def check_json_apart(target: str | None, paths: dict[str, Any]) -> None:
    """Refuse, before any work, a --json file that is one of the command's other paths (an input it
    would overwrite, or an output such as --out written first and then overwritten), or that cannot
    be written (the run's result would be lost at its end)."""
    if target is None or target == STDOUT:
        return
    for name, value in paths.items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(path, str) and Path(path).exists():  # e.g. a --checkpoint file
                path = Path(path)
            if isinstance(path, Path) and same_file(target, path):
                raise AnonfeatError(f"--json {target}: is also {name} ({path}), which it would overwrite; "
                                    "give another file, or - for stdout")
    check_writable_file(target, "--json")


@dataclass
class Output:
    """A command's output settings: `--json` (None, "-" or a path), `-q`, `-v`."""

    json_target: str | None = None
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        check_json_target(self.json_target)

    @property
    def json_to_stdout(self) -> bool:
        return self.json_target == STDOUT

    @property
    def progress(self) -> bool:
        """Whether progress bars and lines may be shown (the options' own `progress` aside)."""
        return not self.quiet

    def status(self, message: str) -> None:
        """A line about the run (not a result): stderr, unless -q."""
        if not self.quiet:
            _err().print(message, highlight=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        """A problem with the run's result that is not a failed video (e.g. a folder that could not be
        read, exit status 3): stderr, even with -q."""
        _err().print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    def detail(self, message: str) -> None:
        """A -v line: stderr, only with -v."""
        if self.verbose and not self.quiet:
            _err().print(message, highlight=False, soft_wrap=True)

    def result(self, *renderables: Any) -> None:
        """Human-readable results: stdout, unless the JSON document goes there (`--json -`)."""
        if self.json_to_stdout:
            return
        from anonfeat.cli.app import console

        for item in renderables:
            console.print(item, highlight=False, soft_wrap=isinstance(item, str))

    def emit(self, document: dict) -> None:
        """Write the command's JSON result where --json says (nothing without --json)."""
        if self.json_target is None:
            return
        text = json.dumps(json_ready(document), indent=2, allow_nan=False) + "\n"
        if self.json_to_stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        path = Path(self.json_target)
        check_json_target(self.json_target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.status(f"wrote {escape(str(path))}")


def _err():
    from anonfeat.cli.app import err_console

    return err_console
