"""`anonfeat synth`: the embedded demo privacy benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anonfeat.cli.app import app
from anonfeat.cli.options import command
from anonfeat.cli.output import Output
from anonfeat.options import SynthOptions


@command(app, "synth", SynthOptions)
def synth_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write videos/ and labels.csv into.")],
    options: SynthOptions = None,
    ui: Output = None,
) -> None:
    """Write a synthetic benchmark: appearance carries private attributes, motion the action.

    labels.csv splits each action 50/25/25 into train (anonymizers), attacker (the audit's attackers
    and probes) and test."""
    from anonfeat.synth import make_benchmark

    labels = make_benchmark(out_dir, n_videos=options.n_videos, size=(options.size, options.size),
                            n_frames=options.n_frames, fps=options.fps, seed=options.seed, progress=options.progress)
    ui.result(f"wrote {options.n_videos} videos under {escape(str(out_dir / 'videos'))} and {escape(str(labels))}")
    ui.emit({"videos_dir": out_dir / "videos", "labels": labels, "videos": options.n_videos})
