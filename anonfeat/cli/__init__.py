"""Command-line interface: thin Typer commands over the Python API, one module per verb."""

from anonfeat.cli.app import app, main
from anonfeat.cli import adapter, audit, bench, encoders, extract, inspect, prune, synth  # noqa: F401  (register commands)

__all__ = ["app", "main"]
