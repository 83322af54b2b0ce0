"""Turns the audit JSON of scripts/evaluate.sh into the figures the README quotes.

Stores are named `<method>-s<training seed>.h5`; every figure is the mean ± std over the training
seeds of a method (each already a mean over the audit's attacker seeds). Writes:

* evaluation.json: the settings, every store's figures, and per method mean/std/n of each figure;
* evaluation.md: the results tables (privacy, utility of the trained and of the unseen task);
* privacy_utility.png: leakage removed against top-1 of each task over the privacy-weight sweep.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

METHOD_LABELS = {
    "leace": "LEACE (closed form, `--method leace`)",
    "aam-attributes": "AAM, attribute labels (`--privacy-loss attributes`)",
    "aam-selfsupervised": "AAM, self-supervised default (no labels)",
    "pruned-masked": "pruning: masked clips (default)",
    "pruned-keep1": "pruning: `--keep-ratio 1.0` control",
    "pruned-action-cls": "pruning: action-CLS features",
}
FIGURES = ("cmap", "static_cmap", "clip_cmap", "leakage_removed", "leakage_reduction", "utility_drop")


def store_figures(entry: dict, baseline: dict | None, tasks: list[str]) -> dict:
    privacy = entry["privacy"]
    row = {"cmap": privacy["cmap"], "chance_cmap": privacy["chance_cmap"],
           "static_cmap": (privacy.get("static") or {}).get("cmap"),
           "clip_cmap": (privacy.get("clip") or {}).get("cmap"),
           "leakage_removed": entry.get("leakage_removed"), "leakage_reduction": entry.get("leakage_reduction"),
           "utility_drop": entry.get("utility_drop"), "attacker_split": entry.get("attacker_split"),
           "test_seen_by_anonymizer": entry.get("test_seen_by_anonymizer")}
    for task in tasks:
        top1 = entry["utility"][task]["top1"]
        row[f"top1_{task}"] = top1
        if baseline is not None:
            row[f"drop_{task}"] = baseline["utility"][task]["top1"] - top1
    return row


def summarize(values: list[float | None]) -> dict:
    clean = [v for v in values if v is not None]
    if not clean:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(clean)), "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0,
            "n": len(clean)}


def fmt(stat: dict, digits: int = 3, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    if stat["n"] == 1:
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit_json", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bench-seed", type=int, required=True)
    parser.add_argument("--videos", type=int, required=True)
    parser.add_argument("--pruner-epochs", type=int, required=True)
    parser.add_argument("--default-w-attr", type=float, required=True)
    parser.add_argument("--no-plot", action="store_true", help="tables and JSON only")
    args = parser.parse_args()

    audit = json.loads(args.audit_json.read_text())
    baseline_path = audit["baseline"]
    baseline = audit["stores"][baseline_path]
    tasks = list(baseline["utility"])
    unseen = [t for t in tasks if t != "action"]
    raw = store_figures(baseline, None, tasks)

    per_store, groups = {}, defaultdict(list)
    for path, entry in audit["stores"].items():
        if path == baseline_path:
            continue
        match = re.fullmatch(r"(.+)-s(\d+)", Path(path).stem)
        method, seed = (match.group(1), int(match.group(2))) if match else (Path(path).stem, None)
        row = store_figures(entry, baseline, tasks) | {"method": method, "training_seed": seed}
        per_store[Path(path).name] = row
        groups[method].append(row)

    keys = [*FIGURES, *(f"top1_{t}" for t in tasks), *(f"drop_{t}" for t in tasks)]
    methods = {m: {k: summarize([r.get(k) for r in rows]) for k in keys}
               | {"training_seeds": sorted(r["training_seed"] for r in rows)} for m, rows in groups.items()}

    leace = methods.get("leace", {}).get("leakage_removed", {}).get("mean")
    supervised = methods.get("aam-attributes", {}).get("leakage_removed", {}).get("mean")
    targets = {}
    if supervised is not None:
        drop = methods["aam-attributes"]["drop_action"]["mean"]
        targets["adapter_supervised"] = {
            "leakage_removed_ge_0.5": supervised >= 0.5, "action_drop_le_3pts": drop <= 0.03,
            "at_least_twice_leace": leace is not None and supervised >= 2 * leace,
            "per_seed_leakage_removed": [r["leakage_removed"] for r in groups["aam-attributes"]],
            "per_seed_action_drop": [r["drop_action"] for r in groups["aam-attributes"]]}
    if "pruned-masked" in methods:
        pm = methods["pruned-masked"]
        targets["pruning_masked"] = {"leakage_removed_ge_0.3": pm["leakage_removed"]["mean"] >= 0.3,
                                     "action_drop_le_5pts": pm["drop_action"]["mean"] <= 0.05}

    settings = {"benchmark_seed": args.bench_seed, "videos": args.videos, "split": audit.get("split"),
                "attacker": "MLP Linear(D,D)-ReLU-Linear(D,k), BCE, epoch chosen on a validation part of the "
                            "attacker split; 3 attacker seeds; headline cMAP = the worse of the static-clip "
                            "and clip attackers",
                "tasks": tasks, "unseen_tasks": unseen, "pruner_epochs": args.pruner_epochs,
                "default_w_attr": args.default_w_attr}
    doc = {"settings": settings, "raw": raw, "methods": methods, "stores": per_store, "targets": targets}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")

    # -- tables ------------------------------------------------------------------------------------
    head = ["method", "cMAP ↓", "static", "clip", "leakage removed ↑", "action top-1", "action drop (pts)"]
    head += [f"{t} top-1 (unseen)" for t in unseen]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    raw_cells = ["raw features", f"{raw['cmap']:.3f}", f"{raw['static_cmap']:.3f}", f"{raw['clip_cmap']:.3f}",
                 "–", f"{raw['top1_action']:.3f}", "–", *(f"{raw[f'top1_{t}']:.3f}" for t in unseen)]
    lines.append("| " + " | ".join(raw_cells) + " |")
    order = [m for m in METHOD_LABELS if m in methods] + sorted(
        (m for m in methods if m.startswith("sweep-w")), key=lambda m: float(m[len("sweep-w"):]))
    order += sorted(m for m in methods if m not in order)  # other candidates (scripts/validate.sh), by name
    for m in order:
        s = methods[m]
        sweep_label = m.replace("sweep-w", "AAM attributes, `--w-attr ") + "`"
        label = METHOD_LABELS.get(m, sweep_label if m.startswith("sweep-w") else f"`{m}`")
        cells = [label, fmt(s["cmap"]), fmt(s["static_cmap"]), fmt(s["clip_cmap"]), fmt(s["leakage_removed"], 2),
                 fmt(s["top1_action"]), fmt(s["drop_action"], 1, 100), *(fmt(s[f"top1_{t}"]) for t in unseen)]
        lines.append("| " + " | ".join(cells) + " |")
    chance = raw["chance_cmap"]
    notes = [f"Benchmark: `anonfeat synth --seed {args.bench_seed}` ({args.videos} videos; split "
             f"{(audit.get('split') or {}).get('counts')}), `videomae-demo` features. Chance cMAP {chance:.3f}. "
             "Mean ± std over training seeds "
             + ", ".join(f"{m}: {methods[m]['training_seeds']}" for m in order) + "."]
    (args.out / "evaluation.md").write_text("\n".join(lines + [""] + notes) + "\n")

    # -- the privacy-utility curve -------------------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = []
    for m in methods:
        w = None
        if m.startswith("sweep-w"):
            w = float(m[len("sweep-w"):])
        elif m == "aam-attributes":
            w = args.default_w_attr
        if w is not None:
            sweep.append((w, m))
    sweep.sort()
    if sweep and not args.no_plot:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for task, marker in zip(tasks, "os^v"):
            x = [methods[m]["leakage_removed"]["mean"] for _, m in sweep]
            y = [methods[m][f"top1_{task}"]["mean"] for _, m in sweep]
            label = f"{task} top-1" + (" (unseen task)" if task in unseen else " (trained task)")
            ax.plot(x, y, marker=marker, label=label)
            for (w, _), xi, yi in zip(sweep, x, y):
                ax.annotate(f"w={w:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
            colour = ax.lines[-1].get_color()
            ax.axhline(raw[f"top1_{task}"], linestyle=":", color=colour, linewidth=1)
            if "leace" in methods:  # the closed-form baseline, on each task's scale
                ax.scatter([methods["leace"]["leakage_removed"]["mean"]], [methods["leace"][f"top1_{task}"]["mean"]],
                           marker="x", color=colour, s=60, zorder=3,
                           label=f"LEACE, {task} top-1")
        ax.set_xlabel("leakage removed (share of above-chance cMAP, higher is more private)")
        ax.set_ylabel("top-1 (dotted: raw features)")
        ax.set_title(f"Supervised AAM, privacy weight sweep (synth seed {args.bench_seed})", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / "privacy_utility.png", dpi=120)


if __name__ == "__main__":
    main()
