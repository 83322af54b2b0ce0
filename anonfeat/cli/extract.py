"""`anonfeat extract`: a video folder into an HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console


@app.command("extract")
def extract_command(
    videos: Path = typer.Argument(..., help="Folder of videos (searched recursively) or a text file listing them."),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 store to create or resume."),
    encoder: Optional[str] = opt.Encoder,
    checkpoint: Optional[Path] = opt.Checkpoint,
    random_init: bool = opt.RandomInit,
    clip_len: Optional[int] = typer.Option(None, "--clip-len", min=1, help="Frames per clip (default: the encoder's)."),
    frame_stride: int = typer.Option(4, "--frame-stride", min=1, help="Sampling rate: frames between a clip's frames."),
    clip_stride: Optional[int] = typer.Option(None, "--clip-stride", min=1,
                                              help="Frames between clip starts (default: clip_len x frame_stride)."),
    num_clips: Optional[int] = typer.Option(None, "--num-clips", min=1, help="N evenly spaced clips instead of sliding windows."),
    static_clips: int = opt.StaticClips,
    resize: str = typer.Option("short", "--resize", help="short: short side + centre crop; full: stretch the frame."),
    batch_size: int = opt.BatchSize,
    workers: int = opt.Workers,
    device: str = opt.Device,
    dtype: str = opt.Dtype,
    compression: Optional[str] = typer.Option(None, "--compression", help="gzip or lzf (default: none)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Write features sanitized by this adapter."),
    progress: bool = opt.Progress,
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Under torchrun: keep the per-rank shard "
                                     "stores (STORE.shards/) after merging them into STORE."),
) -> None:
    """Extract clip features (and static clips) of every video into STORE; re-runs resume.

    Under torchrun (WORLD_SIZE > 1) each rank extracts its share into STORE.shards/ and rank 0
    merges them into STORE (README "Running on many GPUs and nodes")."""
    from anonfeat import distributed
    from anonfeat.extract import ExtractOptions

    options = ExtractOptions(encoder=encoder, checkpoint=checkpoint, random_init=random_init, clip_len=clip_len,
                             frame_stride=frame_stride, clip_stride=clip_stride, num_clips=num_clips,
                             static_clips=static_clips, resize=resize, batch_size=batch_size, workers=workers,
                             device=device, dtype=dtype, compression=compression, progress=progress)
    result = distributed.extract_sharded(videos, out, options, adapter=adapter, keep_shards=keep_shards)
    if not distributed.is_main():  # rank 0 reports the whole run and carries its exit status
        distributed.shutdown()
        raise typer.Exit(0)
    distributed.shutdown()
    console.print(f"[bold]{out}[/]: {len(result.written)} written, {len(result.skipped)} already done, "
                  f"{len(result.failed)} failed; {result.clips} clips in {result.seconds:.1f}s")
    for key, error in sorted(result.failed.items()):
        console.print(f"  [red]failed[/] {key}: {error}", highlight=False)
    raise typer.Exit(result.exit_code)
