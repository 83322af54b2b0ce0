"""`anonfeat train-pruner` and `anonfeat prune`: tubelet pruning with action and privacy CLS tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anonfeat.cli.app import app
from anonfeat.cli.extract import finish_store_command
from anonfeat.cli.options import KeepShards, Labels, VideosArg, command, out_option
from anonfeat.cli.output import Output
from anonfeat.pruning.options import PruneOptions, PrunerTrainOptions


@command(app, "train-pruner", PrunerTrainOptions)
def train_pruner_command(
    videos: Annotated[Path, typer.Argument(help="Folder of videos (or a list file) the labels refer to.")],
    labels: Labels,
    out: out_option("Pruner file to write (.safetensors)."),
    options: PrunerTrainOptions = None,
    ui: Output = None,
) -> None:
    """Train a tubelet pruner on decoded clips of the train split."""
    from anonfeat.pruning.train import train_pruner

    report = train_pruner(videos, labels, out, options)
    if not report.is_main:  # other ranks of a torchrun job: rank 0 reports
        return
    ui.result(f"trained on {report.train_videos} videos (validation {report.val_videos}); "
              f"{report.unmatched_labels} label rows without a video, {report.unmatched_videos} videos unlabelled, "
              f"{report.failed_videos} clips failed to decode")
    if report.decoder_fallbacks:
        ui.result(f"{report.decoder_fallbacks} clips decoded on the CPU (fallback: --decoder could not decode "
                  "their video)")
    val, unpruned = report.metrics.get("val", {}), report.metrics.get("val_unpruned", {})
    if val:
        table = Table(title="validation videos (centre clip)")
        for column in ("metric", "pruned", "keep 1.0"):
            table.add_column(column, justify="right")
        table.add_row("action top-1", f"{val['top1']:.3f}", f"{unpruned.get('top1', float('nan')):.3f}")
        if "privacy_head_cmap" in val:
            table.add_row("privacy head cMAP", f"{val['privacy_head_cmap']:.3f}",
                          f"{unpruned.get('privacy_head_cmap', float('nan')):.3f}")
        ui.result(table)
    for record in report.history:
        ui.detail("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    ui.result(f"pruner written to [bold]{escape(str(report.pruner))}[/]")
    ui.emit({"pruner": report.pruner, "train_videos": report.train_videos, "val_videos": report.val_videos,
             "unmatched_labels": report.unmatched_labels, "unmatched_videos": report.unmatched_videos,
             "failed_videos": report.failed_videos, "decoder_fallbacks": report.decoder_fallbacks, "metrics": report.metrics, "history": report.history})


@command(app, "prune", PruneOptions, exclude=("encoder", "random_init", "compile"))
def prune_command(
    videos: VideosArg,
    pruner: Annotated[Path, typer.Option("--pruner", "-p", help="Pruner file from train-pruner.")],
    out: out_option("HDF5 store to create or resume."),
    keep_shards: KeepShards = False,
    options: PruneOptions = None,
    ui: Output = None,
) -> None:
    """Pruned features of every video into STORE, in extract's layout and sampling; re-runs resume.

    By default the features are the source encoder's on the masked clips (dropped tubelets black).

    Under torchrun each rank prunes its share into STORE.shards/ and rank 0 merges them."""
    from anonfeat.pruning.run import prune_sharded

    finish_store_command(prune_sharded(videos, out, pruner, options, keep_shards=keep_shards), ui)
