"""`anonfeat inspect`: what a store holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anonfeat.cli.app import EXIT_INVALID, app
from anonfeat.cli.options import command
from anonfeat.cli.output import Output


def store_summary(path: Path) -> dict:
    """The JSON of `anonfeat inspect --json`: encoder, per-video counts, failures."""
    from anonfeat.store import FeatureStore

    with FeatureStore(path) as store:
        header = store.header
        videos = {}
        for key in store.videos():  # shapes only: no feature is read (nor the pruning datasets)
            clips, statics = store.feature_shape(key), store.feature_shape(key, "static_features")
            videos[key] = {"n_clips": int(clips[0]), "dim": int(clips[1]),
                           "n_static": 0 if statics is None else int(statics[0])}
        return {
            "encoder": {"name": header.encoder, "config": header.encoder_config.to_dict(),
                        "checkpoint_sha256": header.checkpoint_sha256},
            "sampling": header.sampling, "features": header.features, "dtype": header.dtype, "dim": header.dim,
            "adapter_sha256": header.adapter_sha256 or None, "extra": header.extra,
            "anonfeat_version": store.attrs.get("anonfeat_version"),
            "videos": videos, "failed": store.failures(),
        }


def verify_summary(path: Path) -> dict:
    """The JSON of `anonfeat inspect --verify --json`: {"ok", "videos", "failed", "problems"}."""
    from anonfeat.store import FeatureStore

    with FeatureStore(path) as store:
        problems = store.verify()
        return {"ok": not problems, "videos": len(store.videos()), "failed": len(store.failures()),
                "problems": [{"video": p.key, "problem": p.message} for p in problems]}


def _print_verify(store: Path, ui: Output) -> None:
    report = verify_summary(store)
    if report["ok"]:
        ui.result(f"OK: {escape(str(store))}: {report['videos']} complete videos and {report['failed']} recorded "
                  "failures match the root header")
    else:
        table = Table("video", "problem", title=f"{escape(str(store))}: {len(report['problems'])} problem(s)")
        for problem in report["problems"]:
            table.add_row(escape(problem["video"] or "(store)"), escape(problem["problem"]))
        ui.result(table)
    ui.emit(report)
    if not report["ok"]:
        raise typer.Exit(EXIT_INVALID)


@command(app, "inspect")
def inspect_command(
    store: Annotated[Path, typer.Argument(help="HDF5 feature store.")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every video's datasets against the root header "
                                                          "(dim, dtype, counts, NaN/Inf, complete mark); exit 4 on "
                                                          "problems.")] = False,
    ui: Output = None,
) -> None:
    """Summarize a feature store: encoder, sampling, videos and failures (--verify: check it)."""
    if verify:
        _print_verify(store, ui)
        return
    summary = store_summary(store)
    enc = summary["encoder"]
    videos = summary["videos"]
    table = Table(title=escape(str(store)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", f"{enc['name']} (dim {summary['dim']}, sha256 {enc['checkpoint_sha256'][:16]})")
    table.add_row("features", f"{summary['features']} {summary['dtype']}"
                  + (f", adapter {summary['adapter_sha256'][:16]}" if summary["adapter_sha256"] else ""))
    table.add_row("sampling", ", ".join(f"{k}={v}" for k, v in summary["sampling"].items()))
    pruning = (summary.get("extra") or {}).get("pruner")
    if pruning:
        stages = ", ".join(f"block {b}: keep {r:g} -> {n}" for b, r, n in
                           zip(pruning["prune_blocks"], pruning["keep_rates"], pruning["kept_counts"]))
        table.add_row("pruning", f"{stages} of {pruning['num_tubelets']} tubelets (lambda {pruning['lam']:g}, "
                                 f"pruner {pruning['file']})")
    table.add_row("videos", str(len(videos)))
    table.add_row("clips", str(sum(v["n_clips"] for v in videos.values())))
    table.add_row("static clips", str(sum(v["n_static"] for v in videos.values())))
    table.add_row("failed", str(len(summary["failed"])))
    ui.result(table)
    if summary["failed"]:
        failures = Table("failed video", "error", title="failures")
        for key, error in sorted(summary["failed"].items()):
            failures.add_row(escape(key), escape(error))
        ui.result(failures)
    ui.emit(summary)
