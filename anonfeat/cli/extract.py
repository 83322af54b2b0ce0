"""`anonfeat extract`: a video folder into an HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console, err_console


def finish_store_command(result) -> None:
    """End a store-writing command: rank 0 (or the only process) prints one summary line and one line
    per failed video and exits with the run's status; other ranks of a torchrun job exit quietly."""
    if not result.is_main:
        raise typer.Exit(0)
    console.print(f"[bold]{escape(str(result.store))}[/]: {len(result.written)} written, "
                  f"{len(result.skipped)} already done, "
                  f"{len(result.failed)} failed; {result.clips} clips in {result.seconds:.1f}s")
    fallbacks = getattr(result, "decoder_fallbacks", [])
    if fallbacks:
        shown = ", ".join(fallbacks[:5]) + (", ..." if len(fallbacks) > 5 else "")
        console.print(f"  {len(fallbacks)} videos decoded on the CPU (fallback: the {result.decoder} decoder "
                      f"cannot decode their stream): {shown}", highlight=False)
    for key, error in sorted(result.failed.items()):
        console.print(f"  [red]failed[/] {escape(key)}: {escape(error)}", highlight=False)
    for warning in getattr(result, "warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)


@app.command("extract")
def extract_command(
    videos: Path = typer.Argument(..., help="Folder of videos (searched recursively) or a text file listing them."),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 store to create or resume."),
    encoder: Optional[str] = opt.Encoder,
    checkpoint: Optional[Path] = opt.Checkpoint,
    random_init: bool = opt.RandomInit,
    clip_len: Optional[int] = opt.ClipLen,
    frame_stride: int = opt.FrameStride,
    clip_stride: Optional[int] = opt.ClipStride,
    num_clips: Optional[int] = opt.NumClips,
    static_clips: int = opt.StaticClips,
    resize: str = opt.Resize,
    batch_size: int = opt.BatchSize,
    workers: int = opt.Workers,
    device: str = opt.Device,
    decoder: str = opt.Decoder,
    compile: Optional[bool] = opt.Compile,
    dtype: str = opt.Dtype,
    compression: Optional[str] = opt.Compression,
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Write features sanitized by this adapter."),
    progress: bool = opt.Progress,
    keep_shards: bool = opt.KeepShards,
) -> None:
    """Extract clip features (and static clips) of every video into STORE; re-runs resume.

    Under torchrun (WORLD_SIZE > 1) each rank extracts its share into STORE.shards/ and rank 0
    merges them into STORE (docs/distributed.md)."""
    from anonfeat.extract import ExtractOptions
    from anonfeat.sharding import extract_sharded

    options = ExtractOptions(encoder=encoder, checkpoint=checkpoint, random_init=random_init, clip_len=clip_len,
                             frame_stride=frame_stride, clip_stride=clip_stride, num_clips=num_clips,
                             static_clips=static_clips, resize=resize, batch_size=batch_size, workers=workers,
                             device=device, dtype=dtype, compression=compression, progress=progress,
                             compile=compile, decoder=decoder)
    transform = None
    if adapter is not None:  # the pipeline knows no adapter: it gets the transform from here
        from anonfeat.adapter.sanitize import adapter_transform

        transform = adapter_transform(adapter)
    result = extract_sharded(videos, out, options, transform=transform, keep_shards=keep_shards)
    finish_store_command(result)
