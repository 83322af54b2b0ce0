"""`anonfeat synth`: the embedded demo privacy benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from anonfeat.cli.app import app, console


@app.command("synth")
def synth_command(
    out_dir: Path = typer.Argument(..., help="Folder to write videos/ and labels.csv into."),
    videos: int = typer.Option(60, "--videos", "-n", min=1, help="Number of videos."),
    size: int = typer.Option(128, "--size", min=16, help="Frame height and width in pixels."),
    frames: int = typer.Option(48, "--frames", min=1, help="Frames per video."),
    fps: float = typer.Option(24.0, "--fps", min=1.0),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a synthetic benchmark: appearance carries private attributes, motion the action.

    labels.csv splits each action 50/25/25 into train (anonymizers), attacker (the audit's attackers
    and probes) and test."""
    from anonfeat.synth import make_benchmark

    labels = make_benchmark(out_dir, n_videos=videos, size=(size, size), n_frames=frames, fps=fps,
                            seed=seed, progress=True)
    console.print(f"wrote {videos} videos under {out_dir / 'videos'} and {labels}")
