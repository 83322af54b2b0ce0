"""Presenting an audit: the JSON document, a rich table and a privacy-utility plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from anonfeat.audit.runner import AttackResult, AuditReport, StoreResult


# -- JSON -----------------------------------------------------------------------------------------
def _attack_json(attack: AttackResult) -> dict:
    return {
        "cmap": attack.cmap,
        "cmap_std": attack.cmap_std,
        "f1": attack.f1,
        "per_attribute": attack.per_attribute,
    }


def store_json(result: StoreResult) -> dict:
    """One store's entry; rates are fractions, undefined values null.

    attacker_split: the split attackers and probes were fit on ("attacker", or "train" when the labels
    have no attacker videos); optimistic: true when that is "train" for an anonymized store;
    test_seen_by_anonymizer: test videos the store's anonymizer trained on (0 for raw stores, null
    when the anonymizer recorded nothing)."""
    headline = result.headline
    return {
        "attacker_split": result.attacker_split,
        "optimistic": result.optimistic,
        "test_seen_by_anonymizer": result.test_seen_by_anonymizer,
        "privacy": {
            "cmap": headline.cmap,
            "cmap_std": headline.cmap_std,
            "f1": headline.f1,
            "chance_cmap": headline.chance_cmap,
            "static": None if result.static is None else _attack_json(result.static),
            "clip": _attack_json(result.clip),
        },
        "utility": result.utility,
        "leakage_reduction": result.leakage_reduction,
        "leakage_removed": result.leakage_removed,
        "utility_drop": result.utility_drop,
        "bias": result.bias,
    }


def report_json(report: AuditReport) -> dict:
    """{"stores": {path: ...}, "baseline": path or null, "split": ...} (the baseline is also one of the
    stores); "split" says where the split came from: {"derived", "split_seed", "stratified_on", "counts"}."""
    labels = report.labels
    split = {"derived": labels.split_generated, "split_seed": labels.split_seed,
             "stratified_on": labels.split_strata, "counts": labels.split_counts()}
    return _finite({"stores": {r.path: store_json(r) for r in report.stores}, "baseline": report.baseline,
                    "split": split})


def _finite(value):
    """NaN/inf become null so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: AuditReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2, allow_nan=False) + "\n")
    return path


# -- table ----------------------------------------------------------------------------------------
def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def render_table(report: AuditReport) -> Table:
    """One row per store: headline cMAP (worse attacker), both attackers, F1, top-1 and the comparison."""
    task = report.tasks[0]
    table = Table(title=f"anonfeat audit ({report.options.attacker} attacker, {report.options.seeds} seed(s), "
                        f"{len(report.attributes)} attributes)", title_justify="left")
    for name, justify in (("store", "left"), ("videos", "right"), ("cMAP ↓", "right"), ("static", "right"),
                          ("clip", "right"), ("chance", "right"), ("F1 ↓", "right"), (f"top-1 {task} ↑", "right"),
                          ("leak. red.", "right"), ("leak. removed", "right"), ("util. drop", "right"),
                          ("attackers fit on", "left")):
        table.add_column(name, justify=justify)
    for result in report.stores:
        headline = result.headline
        name = f"{result.path} [bold](baseline)[/]" if result.is_baseline else result.path
        table.add_row(
            name,
            str(len(result.match.pairs)),
            f"{_fmt(headline.cmap, headline.cmap_std)} ({result.headline_name})",
            _fmt(None if result.static is None else result.static.cmap),
            _fmt(result.clip.cmap),
            _fmt(headline.chance_cmap),
            _fmt(headline.f1),
            _fmt(result.utility[task]["top1"], result.utility[task]["top1_std"]),
            _fmt(result.leakage_reduction),
            _fmt(result.leakage_removed),
            _fmt(result.utility_drop),
            result.attacker_split + (" [yellow](optimistic)[/]" if result.optimistic else ""),
        )
    return table


def match_lines(report: AuditReport) -> list[str]:
    """How many videos of each store matched the labels, and how many did not."""
    lines = []
    for result in report.stores:
        m = result.match
        static = f", {result.n_static_videos} with static clips" if result.n_static_videos else ", no static clips"
        lines.append(f"{result.path}: {len(m.pairs)} videos matched{static}; {m.unmatched_store} store videos "
                     f"without labels, {m.unmatched_labels} labelled videos not in the store")
    return lines


def bias_lines(report: AuditReport) -> list[str]:
    lines = []
    for result in report.stores:
        if result.bias:
            groups = ", ".join(f"{v}: {g['top1']:.3f} (n={g['n']})" for v, g in result.bias["groups"].items())
            lines.append(f"{result.path}: {result.bias['task']} top-1 by {result.bias['attribute']}: {groups}; "
                         f"gap {result.bias['gap']:.3f} ± {result.bias['gap_std']:.3f}")
    return lines


# -- plot -----------------------------------------------------------------------------------------
def plot(report: AuditReport, path: str | Path) -> Path:
    """PNG: privacy (headline cMAP, lower is better) against utility (top-1), and per-attribute AP bars
    (see `audit_figure`)."""
    import matplotlib.pyplot as plt

    fig = audit_figure(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def audit_figure(report: AuditReport):
    """The audit plot as a matplotlib Figure: left, headline cMAP against top-1 per store with the chance
    cMAP as a dashed line; right, each attribute's AP per store with its chance level (the attribute's
    positive rate among the test videos, the AP of a constant score) as a dashed mark over each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    task = report.tasks[0]
    fig, (ax_trade, ax_bars) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    for i, result in enumerate(report.stores):
        headline, utility = result.headline, result.utility[task]
        label = Path(result.path).stem + (" (baseline)" if result.is_baseline else "")
        ax_trade.errorbar(headline.cmap, utility["top1"], xerr=headline.cmap_std, yerr=utility["top1_std"],
                          fmt="*" if result.is_baseline else "o", markersize=14 if result.is_baseline else 8,
                          color="black" if result.is_baseline else f"C{i}", capsize=4, label=label)
    chance = report.stores[0].headline.chance_cmap
    if math.isfinite(chance):
        ax_trade.axvline(chance, color="gray", linestyle="--", linewidth=1, label="chance cMAP")
    ax_trade.set_xlabel("privacy leakage: cMAP of the worse attacker (lower is better)")
    ax_trade.set_ylabel(f"utility: {task} top-1 (higher is better)")
    ax_trade.set_title("privacy vs utility")
    ax_trade.grid(alpha=0.3)
    ax_trade.legend(fontsize=8)

    names = report.attributes
    width = 0.8 / max(len(report.stores), 1)
    positions = np.arange(len(names))
    chance_y, chance_x = [], []
    for i, result in enumerate(report.stores):
        values = [result.headline.per_attribute[n]["ap"] for n in names]
        heights = [np.nan if v is None else v for v in values]
        ax_bars.bar(positions + i * width, heights, width,
                    color="black" if result.is_baseline else f"C{i}",
                    label=Path(result.path).stem + (" (baseline)" if result.is_baseline else ""))
        for j, name in enumerate(names):
            chance = result.headline.per_attribute[name].get("chance_ap")
            if chance is not None:
                chance_y.append(chance)
                chance_x.append(positions[j] + i * width)
    if chance_y:
        x = np.asarray(chance_x)
        ax_bars.hlines(chance_y, x - width / 2, x + width / 2, colors="red", linestyles="--", linewidth=1.5,
                       label="chance (positive rate)", gid="chance")
    ax_bars.set_xticks(positions + width * (len(report.stores) - 1) / 2)
    ax_bars.set_xticklabels(names, rotation=30, ha="right")
    ax_bars.set_ylim(0, 1)
    ax_bars.set_ylabel("AP (worse attacker)")
    ax_bars.set_title("per-attribute leakage")
    ax_bars.legend(fontsize=8)
    fig.tight_layout()
    return fig
