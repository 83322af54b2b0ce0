"""`anonfeat extract`: a video folder into an HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from anonfeat.cli.app import app
from anonfeat.cli.options import KeepShards, VideosArg, command, out_option
from anonfeat.cli.output import Output
from anonfeat.options import ExtractOptions


def finish_store_command(result, ui: Output) -> None:
    """End a store-writing command: rank 0 (or the only process) reports the summary (a line and one
    line per failed video on stdout, or the JSON) and exits with the run's status; other ranks of a
    torchrun job exit quietly."""
    if not result.is_main:
        raise typer.Exit(0)
    ui.result(f"[bold]{escape(str(result.store))}[/]: {len(result.written)} written, "
              f"{len(result.skipped)} already done, "
              f"{len(result.failed)} failed; {result.clips} clips in {result.seconds:.1f}s")
    fallbacks = getattr(result, "decoder_fallbacks", [])
    if fallbacks:
        shown = ", ".join(fallbacks[:5]) + (", ..." if len(fallbacks) > 5 else "")
        ui.result(f"  {len(fallbacks)} videos decoded on the CPU (fallback: the {result.decoder} decoder "
                  f"cannot decode their stream): {escape(shown)}")
    for key, error in sorted(result.failed.items()):
        ui.result(f"  [red]failed[/] {escape(key)}: {escape(error)}")
    for warning in getattr(result, "warnings", []):
        ui.warning(escape(warning))
    for key in result.written:
        ui.detail(f"  written {escape(key)}")
    ui.detail(f"waited {result.decode_wait_s:.1f}s for decoded frames and {result.device_wait_s:.1f}s for the "
              f"model; {result.heap_trims} heap trims ({result.heap_trim_seconds:.2f}s)")
    ui.emit(result.to_json())
    raise typer.Exit(result.exit_code)


@command(app, "extract", ExtractOptions)
def extract_command(
    videos: VideosArg,
    out: out_option("HDF5 store to create or resume."),
    adapter: Annotated[Optional[Path], typer.Option("--adapter", "-a", help="Write features sanitized by this "
                                                    "adapter (a file from train-adapter).")] = None,
    keep_shards: KeepShards = False,
    options: ExtractOptions = None,
    ui: Output = None,
) -> None:
    """Extract clip features (and static clips) of every video into STORE; re-runs resume.

    Under torchrun (WORLD_SIZE > 1) each rank extracts its share into STORE.shards/ and rank 0
    merges them into STORE (docs/distributed.md)."""
    from anonfeat.sharding import extract_sharded

    transform = None
    if adapter is not None:  # the pipeline knows no adapter: it gets the transform from here
        from anonfeat.adapter.sanitize import adapter_transform

        transform = adapter_transform(adapter)
    result = extract_sharded(videos, out, options, transform=transform, keep_shards=keep_shards)
    finish_store_command(result, ui)
