"""Command-line interface: thin Typer commands over the Python API, one module per verb."""

import importlib
import importlib.util

from anonfeat.cli.app import app, main
from anonfeat.cli import encoders, extract, inspect, synth  # noqa: F401  (register commands)

for _verb in ("audit",):  # TEMP until every command module lands
    if importlib.util.find_spec(f"anonfeat.cli.{_verb}") is not None:
        importlib.import_module(f"anonfeat.cli.{_verb}")

__all__ = ["app", "main"]
