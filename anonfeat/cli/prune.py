"""`anonfeat train-pruner` and `anonfeat prune`: tubelet pruning with action and privacy CLS tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console
from anonfeat.cli.extract import finish_store_command
from anonfeat.errors import AnonfeatError
from anonfeat.pruning.options import PrunerTrainOptions

D = PrunerTrainOptions()  # flag defaults come from the API's options: the two cannot disagree


def _numbers(text: Optional[str], kind: type, flag: str) -> tuple:
    if not text:
        return ()
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AnonfeatError(f"{flag} {text!r}: give comma-separated numbers, e.g. {flag} 3,6,9") from None


@app.command("train-pruner")
def train_pruner_command(
    videos: Path = typer.Argument(..., help="Folder of videos (or a list file) the labels refer to."),
    labels: Path = typer.Option(..., "--labels", "-l", help="Labels CSV (video,split,action,<attributes>)."),
    out: Path = typer.Option(..., "--out", "-o", help="Pruner file to write (.safetensors)."),
    encoder: Optional[str] = opt.Encoder,
    checkpoint: Optional[Path] = opt.Checkpoint,
    random_init: bool = opt.RandomInit,
    task: str = typer.Option(D.task, "--task", help="Utility column the action CLS learns."),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="Attribute columns a,b,c (default: all)."),
    privacy_loss: str = typer.Option(D.privacy_loss, "--privacy-loss",
                                     help="attributes (BCE through gradient reversal), ntxent (static clips, no "
                                          "labels needed) or auto (attributes when the labels have them)."),
    prune_blocks: Optional[str] = typer.Option(None, "--prune-blocks", help="Prune after these blocks, 1-based "
                                               "(default: quarters of the depth, 3,6,9 for 12 blocks)."),
    keep: Optional[str] = typer.Option(None, "--keep", help="Keep rate per pruning block, or one for all (default 0.9)."),
    lam: float = typer.Option(D.lam, "--lambda", help="Score s = a_act - lambda * a_priv."),
    train_blocks: Optional[int] = typer.Option(None, "--train-blocks", min=0,
                                               help="Trainable last blocks (default: a third of the depth)."),
    epochs: int = typer.Option(D.epochs, "--epochs", min=1),
    warmup_epochs: int = typer.Option(D.warmup_epochs, "--warmup-epochs", min=0),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", "-b", min=2, help="Clips per step."),
    lr: float = typer.Option(D.lr, "--lr"),
    w_privacy: float = typer.Option(D.w_privacy, "--w-privacy", help="Weight of the reversed privacy gradient."),
    temperature: float = typer.Option(D.temperature, "--temperature", help="NT-Xent temperature."),
    clip_len: Optional[int] = opt.ClipLen,
    frame_stride: int = opt.FrameStride,
    resize: str = opt.Resize,
    flip: bool = typer.Option(D.flip, "--flip/--no-flip", help="Mirror clips at random (not for left/right actions)."),
    workers: int = opt.Workers,
    decoder: str = opt.Decoder,
    seed: int = typer.Option(D.seed, "--seed"),
    split_seed: int = opt.SplitSeed,
    device: str = opt.Device,
    progress: bool = opt.Progress,
) -> None:
    """Train a tubelet pruner on decoded clips of the train split."""
    from anonfeat.pruning.train import train_pruner

    options = PrunerTrainOptions(
        encoder=encoder, checkpoint=str(checkpoint) if checkpoint else None, random_init=random_init, task=task,
        attributes=[a.strip() for a in attributes.split(",") if a.strip()] if attributes else None,
        privacy_loss=privacy_loss, prune_blocks=_numbers(prune_blocks, int, "--prune-blocks"),
        keep_rates=_numbers(keep, float, "--keep"), lam=lam, train_blocks=train_blocks, epochs=epochs,
        warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, w_privacy=w_privacy, temperature=temperature,
        clip_len=clip_len, frame_stride=frame_stride, resize=resize, flip=flip, workers=workers, seed=seed,
        split_seed=split_seed, device=device, decoder=decoder, progress=progress)
    report = train_pruner(videos, labels, out, options)
    if not report.is_main:  # other ranks of a torchrun job: rank 0 reports
        return
    console.print(f"trained on {report.train_videos} videos (validation {report.val_videos}); "
                  f"{report.unmatched_labels} label rows without a video, {report.unmatched_videos} videos unlabelled, "
                  f"{report.failed_videos} clips failed to decode")
    if report.decoder_fallbacks:
        console.print(f"{report.decoder_fallbacks} clips decoded on the CPU (fallback: --decoder could not "
                      "decode their video)")
    val, unpruned = report.metrics.get("val", {}), report.metrics.get("val_unpruned", {})
    if val:
        table = Table(title="validation videos (centre clip)")
        for column in ("metric", "pruned", "keep 1.0"):
            table.add_column(column, justify="right")
        table.add_row("action top-1", f"{val['top1']:.3f}", f"{unpruned.get('top1', float('nan')):.3f}")
        if "privacy_head_cmap" in val:
            table.add_row("privacy head cMAP", f"{val['privacy_head_cmap']:.3f}",
                          f"{unpruned.get('privacy_head_cmap', float('nan')):.3f}")
        console.print(table)
    console.print(f"pruner written to [bold]{report.pruner}[/]")


@app.command("prune")
def prune_command(
    videos: Path = typer.Argument(..., help="Folder of videos (searched recursively) or a text file listing them."),
    pruner: Path = typer.Option(..., "--pruner", "-p", help="Pruner file from train-pruner."),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 store to create or resume."),
    keep_ratio: Optional[float] = typer.Option(None, "--keep-ratio", help="Keep rate for every pruning block "
                                               "(overrides the trained schedule; 1.0 prunes nothing)."),
    features: str = typer.Option("masked", "--features",
                                 help="masked: the source encoder's features of the clips with dropped tubelets "
                                      "black (what the anonymized video gives); action-cls: the pruner's own "
                                      "action-CLS features."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="Weights of the encoder the pruner was built from (default: "
                                                   "the path recorded in the pruner file; sha256 checked)."),
    save_videos: Optional[Path] = typer.Option(None, "--save-videos", help="Write anonymized videos here as "
                                               "DIR/<relative path>.mp4 (H.264, source resolution, no audio)."),
    fill: str = typer.Option("black", "--fill", help="How dropped tubelets look in saved videos: black, blur or "
                                                     "pixelate (pixels the model never saw stay black)."),
    lossless: bool = typer.Option(False, "--lossless", help="Saved videos as lossless yuv444p H.264 (qp 0) instead "
                                                            "of yuv420p CRF 18 (which most players need)."),
    save_heatmaps: Optional[Path] = typer.Option(None, "--save-heatmaps", help="Write score-map PNGs here."),
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
    dtype: str = opt.Dtype,
    compression: Optional[str] = opt.Compression,
    progress: bool = opt.Progress,
    keep_shards: bool = opt.KeepShards,
) -> None:
    """Pruned features of every video into STORE, in extract's layout and sampling; re-runs resume.

    By default the features are the source encoder's on the masked clips (dropped tubelets black).

    Under torchrun each rank prunes its share into STORE.shards/ and rank 0 merges them."""
    from anonfeat.pruning.run import PruneOptions, prune_sharded

    options = PruneOptions(clip_len=clip_len, frame_stride=frame_stride, clip_stride=clip_stride, num_clips=num_clips,
                           static_clips=static_clips, resize=resize, batch_size=batch_size, workers=workers,
                           device=device, dtype=dtype, compression=compression, progress=progress,
                           keep_ratio=keep_ratio, features=features, checkpoint=checkpoint, save_videos=save_videos,
                           fill=fill, lossless=lossless, save_heatmaps=save_heatmaps, decoder=decoder)
    finish_store_command(prune_sharded(videos, out, pruner, options, keep_shards=keep_shards))
