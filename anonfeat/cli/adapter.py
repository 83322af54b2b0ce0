"""`anonfeat train-adapter` and `anonfeat sanitize`: latent anonymization of feature stores."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console

from anonfeat.adapter.options import AdapterTrainOptions

D = AdapterTrainOptions()  # flag defaults come from the API's options: the two cannot disagree


@app.command("train-adapter")
def train_adapter_command(
    store: Path = typer.Argument(..., help="Raw store with clip and static-clip features (extract --static-clips N)."),
    labels: Path = typer.Option(..., "--labels", "-l", help="Labels CSV (video,split,action,<attributes>)."),
    out: Path = typer.Option(..., "--out", "-o", help="Adapter file to write (.safetensors)."),
    method: str = typer.Option(D.method, "--method", help="aam (the trained adapter) or leace (closed-form LEACE "
                               "eraser of the --attributes columns on clip and static-clip rows; the loss flags "
                               "do not apply)."),
    task: Optional[List[str]] = typer.Option(None, "--task", help="Utility column to co-train (repeatable; default action)."),
    privacy_loss: str = typer.Option(D.privacy_loss, "--privacy-loss", help="ntxent (self-supervised), attributes (GRL on labels) or both."),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="Attribute columns a,b,c for --privacy-loss attributes|both."),
    pairs: str = typer.Option(D.pairs, "--pairs", help="NT-Xent pairs: static (paper) or all (static, clip and static-clip pairs)."),
    epochs: int = typer.Option(D.epochs, "--epochs", min=1),
    warmup_epochs: int = typer.Option(D.warmup_epochs, "--warmup-epochs", min=0, help="Epochs fitting heads on raw features first."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", min=2, help="Videos per step."),
    lr: float = typer.Option(D.lr, "--lr"),
    w_lc: float = typer.Option(D.w_lc, "--w-lc", help="Latent consistency weight (paper: 100)."),
    w_t: float = typer.Option(D.w_t, "--w-t", help="Utility weight (paper: 1)."),
    w_b: float = typer.Option(D.w_b, "--w-b", help="NT-Xent privacy weight (paper: 1)."),
    w_attr: float = typer.Option(D.w_attr, "--w-attr", help="Supervised attribute privacy weight."),
    attr_loss: str = typer.Option(D.attr_loss, "--attr-loss", help="Supervised term of --privacy-loss attributes|both: decorrelate (squared feature-attribute correlations, per view) or grl (MLP head through gradient reversal)."),
    temperature: float = typer.Option(D.temperature, "--temperature"),
    depth: int = typer.Option(D.depth, "--depth", min=1, help="Attention blocks (paper: 3)."),
    heads: int = typer.Option(D.heads, "--heads", min=1, help="Attention heads (paper: 8)."),
    seed: int = typer.Option(D.seed, "--seed"),
    split_seed: int = opt.SplitSeed,
    device: str = opt.Device,
    progress: bool = opt.Progress,
) -> None:
    """Train an Anonymizing Adapter (or fit a LEACE eraser) on a store's train split (no video is decoded).

    Under torchrun: DistributedDataParallel, --batch-size is the global batch split over the ranks;
    rank 0 writes the adapter (docs/distributed.md)."""
    from anonfeat.adapter.train import train_adapter

    options = AdapterTrainOptions(
        method=method, split_seed=split_seed, tasks=tuple(task or ("action",)), privacy_loss=privacy_loss,
        attributes=[a.strip() for a in attributes.split(",") if a.strip()] if attributes else None,
        pairs=pairs, epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, w_lc=w_lc, w_t=w_t,
        w_b=w_b, w_attr=w_attr, attr_loss=attr_loss, temperature=temperature, depth=depth, heads=heads, seed=seed, device=device,
        progress=progress)
    report = train_adapter(store, labels, out, options)
    if not report.is_main:  # other ranks of a torchrun job: rank 0 reports
        return
    console.print(f"trained on {report.train_videos} videos (validation {report.val_videos}); "
                  f"{report.unmatched_labels} label rows not in the store, {report.unmatched_store} store videos unlabelled")
    metrics = report.metrics
    if "leace" in metrics:
        fit = metrics["leace"]
        console.print(f"LEACE eraser of rank {fit['rank']} for {', '.join(fit['attributes'])}, fit on {fit['rows']} "
                      f"clip and static-clip rows; written to [bold]{report.adapter}[/]")
        return
    table = Table(title="utility top-1 (trained heads, video level)")
    table.add_column("task")
    for column in ("train raw", "train sanitized", "val raw", "val sanitized"):
        table.add_column(column, justify="right")
    for name in metrics["train_top1"]:
        cells = [metrics.get(k, {}).get(name) for k in ("train_top1_raw", "train_top1", "val_top1_raw", "val_top1")]
        table.add_row(name, *("-" if c is None else f"{c:.3f}" for c in cells))
    console.print(table)
    probe = metrics.get("privacy_probe") or {}
    if probe:
        ptable = Table(title="quick privacy probe on validation videos (cMAP, lower is more private)")
        for column in ("view", "raw", "sanitized"):
            ptable.add_column(column, justify="right")
        for view in ("static", "clip"):
            ptable.add_row(view, f"{probe[f'{view}_cmap_raw']:.3f}", f"{probe[f'{view}_cmap_sanitized']:.3f}")
        console.print(ptable)
    console.print(f"adapter written to [bold]{report.adapter}[/]")


@app.command("sanitize")
def sanitize_command(
    raw: Path = typer.Argument(..., help="Raw feature store."),
    adapter: Path = typer.Option(..., "--adapter", "-a", help="Adapter file from train-adapter."),
    out: Path = typer.Option(..., "--out", "-o", help="Sanitized store to write (never the raw one)."),
    device: str = opt.Device,
    progress: bool = opt.Progress,
) -> None:
    """Pass a raw store's clip and static features through an adapter into a new, sanitized store."""
    from anonfeat.adapter.sanitize import sanitize_store

    result = sanitize_store(raw, adapter, out, device=device, progress=progress)
    console.print(f"[bold]{out}[/]: {len(result.written)} sanitized, {len(result.skipped)} already done")
