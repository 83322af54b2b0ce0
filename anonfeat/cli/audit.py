"""`anonfeat audit`: privacy leakage and utility of feature stores."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console


class Attacker(str, Enum):
    mlp = "mlp"
    linear = "linear"


@app.command("audit")
def audit(
    stores: List[Path] = typer.Argument(..., metavar="STORE.h5...", help="Feature stores to audit."),
    labels: Path = typer.Option(..., "--labels", help="Labels: CSV (video,split,action,<attributes>), a "
                                "PA-HMDB51 PrivacyAttributes folder, or a VP-HMDB51/VP-UCF101 .pkl."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Raw store to compare against "
                                            "(audited too, marked in the table and JSON)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a privacy-vs-utility PNG here."),
    attacker: Attacker = typer.Option(Attacker.mlp, "--attacker", help="Attacker: Linear-ReLU-Linear "
                                      "(the papers') or linear."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Runs with seeds 0..N-1; mean and std reported."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda:N."),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="Private attribute columns a,b,c "
                                             "(default: every label column but video, split and tasks)."),
    task: List[str] = typer.Option(["action"], "--task", help="Utility column (repeatable)."),
    bias_attribute: Optional[str] = typer.Option(None, "--bias-attribute", help="Report top-1 of the first "
                                                 "task per value of this column and the gap between groups."),
    epochs: int = typer.Option(100, "--epochs", min=1, help="Training epochs of attackers and probes "
                               "(the epoch kept is chosen on validation data)."),
    split_seed: int = opt.SplitSeed,
    allow_seen: bool = typer.Option(False, "--allow-seen", help="Audit stores whose anonymizer trained on test "
                                    "videos (refused by default: their figures flatter them)."),
) -> None:
    """Measure private-attribute leakage (cMAP, lower is better) and utility (top-1) of feature stores.

    Attackers and probes are fit on the attacker split (train when the labels have none: figures marked
    optimistic) and scored on test."""
    from anonfeat.audit import AuditOptions, audit_stores, plot, render_table, write_json
    from anonfeat.audit.report import bias_lines, match_lines
    from anonfeat.labels import load_labels

    names = [a.strip() for a in attributes.split(",") if a.strip()] if attributes is not None else None
    options = AuditOptions(attacker=attacker.value, seeds=seeds, epochs=epochs, tasks=tuple(task),
                           attributes=names, bias_attribute=bias_attribute, device=device, split_seed=split_seed,
                           allow_seen=allow_seen)
    label_set = load_labels(labels, tasks=options.tasks, attributes=names, split_seed=split_seed,
                            keep=[bias_attribute] if bias_attribute else [])
    console.print(label_set.split_summary(), highlight=False)
    report = audit_stores(stores, label_set, baseline=baseline, options=options,
                          progress=lambda path: console.print(f"auditing {path} ...", highlight=False))
    for line in match_lines(report):
        console.print(line, highlight=False)
    console.print(render_table(report))
    for line in bias_lines(report):
        console.print(line, highlight=False)
    for note in report.warnings:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_out is not None:
        console.print(f"wrote {write_json(report, json_out)}")
    if plot_out is not None:
        console.print(f"wrote {plot(report, plot_out)}")
