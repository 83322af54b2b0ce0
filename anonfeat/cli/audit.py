"""`anonfeat audit`: privacy leakage and utility of feature stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from anonfeat.audit.options import AuditOptions
from anonfeat.cli.app import app
from anonfeat.cli.options import Labels, command
from anonfeat.cli.output import Output


@command(app, "audit", AuditOptions)
def audit(
    stores: Annotated[List[Path], typer.Argument(metavar="STORE.h5...", help="Feature stores to audit.")],
    labels: Labels,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="Raw store to compare against (audited too, marked in the table and JSON).")] = None,
    plot_out: Annotated[Optional[Path], typer.Option("--plot", help="Write a privacy-vs-utility PNG here.")] = None,
    options: AuditOptions = None,
    ui: Output = None,
) -> None:
    """Measure private-attribute leakage (cMAP, lower is better) and utility (top-1) of feature stores.

    Attackers and probes are fit on the attacker split (train when the labels have none: figures marked
    optimistic) and scored on test."""
    from anonfeat.audit import audit_stores, plot, render_table, report_json
    from anonfeat.audit.report import bias_lines, check_report_paths, match_lines
    from anonfeat.labels import load_labels

    check_report_paths(None if ui.json_to_stdout else ui.json_target, plot_out,
                       {**{f"STORE {s}": s for s in stores}, "--labels": labels, "--baseline": baseline})
    label_set = load_labels(labels, tasks=options.tasks, attributes=options.attributes, split_seed=options.split_seed,
                            keep=[options.bias_attribute] if options.bias_attribute else [])
    ui.status(escape(label_set.split_summary()))
    report = audit_stores(stores, label_set, baseline=baseline, options=options,
                          progress=lambda path: ui.status(f"auditing {escape(str(path))} ..."))
    ui.result(*match_lines(report), render_table(report), *bias_lines(report))
    for note in report.warnings:
        ui.status(f"[yellow]note:[/] {escape(note)}")
    if plot_out is not None:
        ui.status(f"wrote {escape(str(plot(report, plot_out)))}")
    ui.emit(report_json(report))
