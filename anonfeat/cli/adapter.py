"""`anonfeat train-adapter` and `anonfeat sanitize`: latent anonymization of feature stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anonfeat.adapter.options import AdapterTrainOptions, SanitizeOptions
from anonfeat.cli.app import app
from anonfeat.cli.options import Labels, command, out_option
from anonfeat.cli.output import Output


@command(app, "train-adapter", AdapterTrainOptions)
def train_adapter_command(
    store: Annotated[Path, typer.Argument(help="Raw store with clip and static-clip features (extract "
                                               "--static-clips N).")],
    labels: Labels,
    out: out_option("Adapter file to write (.safetensors)."),
    options: AdapterTrainOptions = None,
    ui: Output = None,
) -> None:
    """Train an Anonymizing Adapter (or fit a LEACE eraser) on a store's train split (no video is decoded).

    Under torchrun: DistributedDataParallel, --batch-size is the global batch split over the ranks;
    rank 0 writes the adapter (docs/distributed.md)."""
    from anonfeat.adapter.train import train_adapter

    report = train_adapter(store, labels, out, options)
    if not report.is_main:  # other ranks of a torchrun job: rank 0 reports
        return
    ui.result(f"trained on {report.train_videos} videos (validation {report.val_videos}); "
              f"{report.unmatched_labels} label rows not in the store, {report.unmatched_store} store videos unlabelled")
    metrics = report.metrics
    summary = {"adapter": report.adapter, "method": options.method, "train_videos": report.train_videos,
               "val_videos": report.val_videos, "unmatched_labels": report.unmatched_labels,
               "unmatched_store": report.unmatched_store, "metrics": report.metrics, "history": report.history}
    if "leace" in metrics:
        fit = metrics["leace"]
        ui.result(f"LEACE eraser of rank {fit['rank']} for {', '.join(fit['attributes'])}, fit on {fit['rows']} "
                  f"clip and static-clip rows; written to [bold]{report.adapter}[/]")
        ui.emit(summary)
        return
    table = Table(title="utility top-1 (trained heads, video level)")
    table.add_column("task")
    for column in ("train raw", "train sanitized", "val raw", "val sanitized"):
        table.add_column(column, justify="right")
    for name in metrics["train_top1"]:
        cells = [metrics.get(k, {}).get(name) for k in ("train_top1_raw", "train_top1", "val_top1_raw", "val_top1")]
        table.add_row(name, *("-" if c is None else f"{c:.3f}" for c in cells))
    ui.result(table)
    probe = metrics.get("privacy_probe") or {}
    if probe:
        ptable = Table(title="quick privacy probe on validation videos (cMAP, lower is more private)")
        for column in ("view", "raw", "sanitized"):
            ptable.add_column(column, justify="right")
        for view in ("static", "clip"):
            ptable.add_row(view, f"{probe[f'{view}_cmap_raw']:.3f}", f"{probe[f'{view}_cmap_sanitized']:.3f}")
        ui.result(ptable)
    for record in report.history:
        ui.detail("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    ui.result(f"adapter written to [bold]{escape(str(report.adapter))}[/]")
    ui.emit(summary)


@command(app, "sanitize", SanitizeOptions)
def sanitize_command(
    raw: Annotated[Path, typer.Argument(help="Raw feature store.")],
    adapter: Annotated[Path, typer.Option("--adapter", "-a", help="Adapter file from train-adapter.")],
    out: out_option("Sanitized store to write (never the raw one)."),
    options: SanitizeOptions = None,
    ui: Output = None,
) -> None:
    """Pass a raw store's clip and static features through an adapter into a new, sanitized store."""
    from anonfeat.adapter.sanitize import sanitize_store

    result = sanitize_store(raw, adapter, out, **dataclasses.asdict(options))
    ui.result(f"[bold]{escape(str(out))}[/]: {len(result.written)} sanitized, {len(result.skipped)} already done")
    for key in result.written:
        ui.detail(f"  sanitized {escape(key)}")
    ui.emit({"store": result.store, "written": result.written, "skipped": result.skipped})
