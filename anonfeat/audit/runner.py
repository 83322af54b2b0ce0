"""The audit: fresh attackers and probes per store and seed, honest splits, aggregated metrics.

Protocol (per store, per seed i = seed + run):
0. Before any attacker runs: a sanitized or pruned store whose anonymizer recorded training videos
   that are test videos of these labels is refused (`allow_seen` overrides; the count is reported).
1. Videos are matched to the labels; their train/attacker/test split comes from the labels, or is
   derived with `split_seed` (`anonfeat.labels.stratified_split`), fixed across stores and seeds.
   Attackers and probes are fit on the attacker split, videos the anonymizer never saw (the realistic
   threat: an adversary holding labelled sanitized features of other people). Without attacker videos
   they are fit on train, and an anonymized store's figures are marked optimistic: a supervised
   anonymizer cleans its own training videos best. A validation part of the fitting split
   (`val_fraction`, stratified on the first task when possible) is drawn with seed i; test is never
   used before the final scoring.
2. Features are standardized with statistics of the remaining fitting samples.
3. Static attacker on static-clip features and clip attacker on clip features predict the k private
   attributes (BCE); a linear probe on clip features predicts each utility task (cross-entropy). Each
   keeps the epoch with the best validation score; the test split is scored once, at the end.
4. Metrics are averaged over seeds; the headline cMAP is the worse (higher) of the two attackers.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn

from anonfeat.audit.options import AuditOptions
from anonfeat.errors import AnonfeatError
from anonfeat.labels import Labels, Match, load_labels, match_videos
from anonfeat.probes import metrics
from anonfeat.probes.attackers import (Samples, Standardizer, TrainConfig, build_attacker, build_probe,
                                       predict_videos, seeded_model, select_samples, train_selected)
from anonfeat.store import FeatureStore, StoreHeader


# -- results ------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """One attacker's test metrics, mean (and std) over seeds."""

    cmap: float
    cmap_std: float
    f1: float
    f1_std: float
    chance_cmap: float
    per_attribute: dict[str, dict[str, float | None]]
    excluded: list[str]  # attributes with one class only among the test videos
    n_test: int


@dataclass
class StoreResult:
    path: str
    is_baseline: bool
    match: Match
    static: AttackResult | None
    clip: AttackResult
    utility: dict[str, dict[str, float]]
    leakage_reduction: float | None = None
    leakage_removed: float | None = None
    utility_drop: float | None = None
    bias: dict | None = None
    n_static_videos: int = 0
    best_epochs: dict[str, list[int]] = field(default_factory=dict)
    attacker_split: str = "attacker"  # the split attackers and probes were fit on: "attacker" or "train"
    test_seen_by_anonymizer: int | None = 0  # test videos in the anonymizer's record (None: no record)
    features: str = "raw"  # the store header's features: raw, sanitized or pruned

    @property
    def optimistic(self) -> bool:
        """Attackers fit on the train split of an anonymized store: that anonymizer may have trained on
        exactly those videos, so the leakage figures may be too low."""
        return self.attacker_split == "train" and self.features != "raw"

    @property
    def headline(self) -> AttackResult:
        """The worse (more leaking) attacker; static wins ties, being the papers' protocol."""
        if self.static is None or self.clip.cmap > self.static.cmap:
            return self.clip
        return self.static

    @property
    def headline_name(self) -> str:
        return "clip" if self.headline is self.clip else "static"


@dataclass
class AuditReport:
    stores: list[StoreResult]
    baseline: str | None
    attributes: list[str]
    tasks: list[str]
    labels: Labels
    options: AuditOptions
    warnings: list[str] = field(default_factory=list)


# -- features ------------------------------------------------------------------------------------
@dataclass
class StoreFeatures:
    """Features of the matched videos: rows of `clip`/`static` are owned by positions in `match.pairs`."""

    match: Match
    clip: tuple[np.ndarray, np.ndarray]
    static: tuple[np.ndarray, np.ndarray] | None
    dim: int
    features: str = "raw"  # the header's kind of features


def read_store_features(path: str | Path, labels: Labels) -> StoreFeatures:
    """Read the clip and static features of every store video that matches a label row."""
    with FeatureStore(path) as store:
        match = match_videos(labels, store.videos())
        if not match.pairs:
            raise AnonfeatError(f"{path}: none of its {match.unmatched_store} videos matches a video of "
                                f"{labels.source} by path or file name; check that --labels belongs to this store")
        clips, clip_owner, statics, static_owner = [], [], [], []
        for position, (_, key) in enumerate(match.pairs):
            x = store.clip_features(key)
            clips.append(x)
            clip_owner.append(np.full(len(x), position, dtype=np.int64))
            s = store.static_features(key)
            if s is not None and len(s):
                statics.append(s)
                static_owner.append(np.full(len(s), position, dtype=np.int64))
        dim, kind = int(store.header.dim), store.header.features
    clip = (np.concatenate(clips).astype(np.float32), np.concatenate(clip_owner))
    static = (np.concatenate(statics).astype(np.float32), np.concatenate(static_owner)) if statics else None
    return StoreFeatures(match=match, clip=clip, static=static, dim=dim, features=kind)


# -- who saw what --------------------------------------------------------------------------------
def count_seen_test_videos(header: StoreHeader, labels: Labels) -> int | None:
    """How many test videos of `labels` the store's anonymizer trained on, matched to the label ids it
    recorded like store keys (`match_videos`). 0 for raw features (no anonymizer); None for an
    anonymized store whose anonymizer recorded nothing (made before anonfeat recorded it: unknown)."""
    if header.features == "raw":
        return 0
    if header.anonymizer_videos is None:
        return None
    seen = match_videos(labels, header.anonymizer_videos)
    return int(sum(labels.split[i] == "test" for i in seen.label_indices))


def check_not_seen(path: str, seen: int | None, labels: Labels) -> None:
    """Refuse a store whose anonymizer trained on test videos: its test figures would flatter it."""
    if seen:
        n_test = len(labels.indices("test"))
        raise AnonfeatError(f"{path}: its anonymizer trained on {seen} of the {n_test} test videos of "
                            f"{labels.source}; re-train it on the train split of these labels (same --split-seed) "
                            "or pass --allow-seen to audit it anyway (its figures then flatter it)")


# -- one training run --------------------------------------------------------------------------
@dataclass
class _Split:
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray


def validation_split(train: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, val) partition of the fitting videos, stratified on `strata` when every class allows."""
    if len(train) < 2:
        raise AnonfeatError(f"only {len(train)} video(s) of the fitting split matched; the audit needs at least 2 "
                            "(one to fit, one to validate)")
    n_val = min(max(1, int(round(len(train) * fraction))), len(train) - 1)
    try:
        fit, val = train_test_split(train, test_size=n_val, random_state=seed, stratify=strata)
    except ValueError:  # a class too small to stratify
        fit, val = train_test_split(train, test_size=n_val, random_state=seed)
    return np.sort(fit), np.sort(val)


def _prepare(view: tuple[np.ndarray, np.ndarray], split: _Split) -> tuple[Samples, Samples, Samples] | None:
    x, owner = view
    fit, val, test = (select_samples(x, owner, ids) for ids in (split.fit, split.val, split.test))
    if not len(fit) or not len(val) or not len(test):
        return None
    scale = Standardizer.fit(fit.x)
    for samples in (fit, val, test):
        samples.x = scale(samples.x)
    return fit, val, test


def _attribute_score(y_val: np.ndarray) -> Callable[[np.ndarray], tuple[float, float]]:
    """Validation score of an attacker: cMAP, then lower BCE."""
    targets = torch.from_numpy(y_val.astype(np.float32))

    def score(logits: np.ndarray) -> tuple[float, float]:
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), targets).item()
        value = metrics.cmap(y_val, logits)
        return (0.0 if np.isnan(value) else value, -loss)

    return score


def _task_score(y_val: np.ndarray) -> Callable[[np.ndarray], tuple[float, float]]:
    """Validation score of a probe: top-1, then lower cross-entropy."""
    targets = torch.from_numpy(y_val)

    def score(logits: np.ndarray) -> tuple[float, float]:
        loss = F.cross_entropy(torch.from_numpy(logits), targets).item()
        return (metrics.top1(y_val, logits), -loss)

    return score


def run_attacker(view, split: _Split, y: np.ndarray, options: AuditOptions, seed: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Train a fresh attacker; returns (test video ids, test logits, kept epoch), or None without data."""
    prepared = _prepare(view, split)
    if prepared is None:
        return None
    fit, val, test = prepared
    dim, k = fit.x.shape[1], y.shape[1]
    model = seeded_model(lambda: build_attacker(options.attacker, dim, k), seed)
    model, epoch = train_selected(model, fit, y[fit.videos].astype(np.float32), val,
                                  _attribute_score(y[val.videos]), nn.BCEWithLogitsLoss(),
                                  _config(options), seed, device)
    return test.videos, predict_videos(model, test, device), epoch


def run_probe(view, split: _Split, y: np.ndarray, num_classes: int, options: AuditOptions, seed: int,
              device: torch.device) -> tuple[np.ndarray, np.ndarray, int]:
    """Train a fresh linear probe for one task; returns (test video ids, test logits, kept epoch)."""
    prepared = _prepare(view, split)
    if prepared is None:
        raise AnonfeatError("no clip features in the fit, validation or test part; check the store and labels")
    fit, val, test = prepared
    model = seeded_model(lambda: build_probe(fit.x.shape[1], num_classes), seed)
    model, epoch = train_selected(model, fit, y[fit.videos], val, _task_score(y[val.videos]),
                                  nn.CrossEntropyLoss(), _config(options), seed, device)
    return test.videos, predict_videos(model, test, device), epoch


def _config(options: AuditOptions) -> TrainConfig:
    return TrainConfig(epochs=options.epochs, lr=options.lr, batch_size=options.batch_size)


# -- aggregation ---------------------------------------------------------------------------------
def _summarize_attack(runs: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray, names: list[str]) -> AttackResult:
    """Mean/std over seeds of one attacker's test metrics (`runs`: (test video ids, logits) per seed)."""
    cmaps, f1s, aps, f1_attr = [], [], [], []
    for videos, logits in runs:
        y_test = y[videos]
        cmaps.append(metrics.cmap(y_test, logits))
        f1s.append(metrics.macro_f1(y_test, logits))
        ap, f1 = metrics.per_attribute(y_test, logits)
        aps.append(ap)
        f1_attr.append(f1)
    y_test = y[runs[0][0]]
    mask = metrics.evaluable(y_test)
    mean_ap, mean_f1 = np.mean(aps, axis=0), np.mean(f1_attr, axis=0)
    positive_rate = y_test.mean(axis=0) if len(y_test) else np.full(len(names), np.nan)
    per_attribute = {name: {"ap": _num(mean_ap[j]), "f1": _num(mean_f1[j]),
                            "chance_ap": _num(positive_rate[j]) if mask[j] else None}  # AP of a constant score
                     for j, name in enumerate(names)}
    return AttackResult(
        cmap=float(np.mean(cmaps)), cmap_std=float(np.std(cmaps)),
        f1=float(np.mean(f1s)), f1_std=float(np.std(f1s)),
        chance_cmap=metrics.chance_cmap(y_test),
        per_attribute=per_attribute,
        excluded=[name for name, ok in zip(names, mask) if not ok],
        n_test=len(y_test),
    )


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _bias(labels_rows: np.ndarray, labels: Labels, column: str, task_runs, y_task: np.ndarray, task: str) -> dict:
    """Top-1 of `task` per value of `column` on the test videos, and the gap between the groups."""
    groups = np.array(labels.group_values(column), dtype=object)[labels_rows]
    per_seed: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    gaps = []
    for videos, logits in task_runs:
        accs = {}
        for value in sorted(set(groups[videos])):
            members = groups[videos] == value
            accs[value] = metrics.top1(y_task[videos][members], logits[members])
            counts[value] = int(members.sum())
            per_seed.setdefault(value, []).append(accs[value])
        gaps.append(max(accs.values()) - min(accs.values()))
    return {
        "attribute": column,
        "task": task,
        "groups": {v: {"top1": float(np.mean(a)), "top1_std": float(np.std(a)), "n": counts[v]}
                   for v, a in per_seed.items()},
        "gap": float(np.mean(gaps)),
        "gap_std": float(np.std(gaps)),
    }


# -- the audit -----------------------------------------------------------------------------------
def audit_store(path: str | Path, labels: Labels, attributes: list[str], options: AuditOptions,
                device: torch.device, is_baseline: bool = False) -> StoreResult:
    """Audit one store: both attackers and every utility probe, over `options.seeds` seeds."""
    features = read_store_features(path, labels)
    rows = features.match.label_indices
    y_attr = labels.attribute_matrix(attributes)[rows]
    split = np.array(labels.split, dtype=object)[rows]
    # Attackers fit on videos the anonymizer never saw when there are any (module docstring, step 1);
    # one attacker video alone cannot be both fit and validated on.
    attacker_split = "attacker" if (split == "attacker").sum() >= 2 else "train"
    fitting, test = np.flatnonzero(split == attacker_split), np.flatnonzero(split == "test")
    for name, ids in ((attacker_split, fitting), ("test", test)):
        if not len(ids):
            raise AnonfeatError(f"{path}: none of the matched videos is in the {name} split of {labels.source}; "
                                "label the store's videos in train (or attacker) and test")
    if not metrics.evaluable(y_attr[test]).any():
        raise AnonfeatError(f"{path}: no private attribute has both values among the test videos of "
                            f"{labels.source}; the audit cannot measure leakage (relabel or resplit)")
    first_task = labels.task_targets(options.tasks[0])[rows]

    static_runs, clip_runs = [], []
    task_runs: dict[str, list] = {t: [] for t in options.tasks}
    epochs: dict[str, list[int]] = {"static": [], "clip": [], **{t: [] for t in options.tasks}}
    for run in range(options.seeds):
        seed = options.seed + run
        fit, val = validation_split(fitting, first_task[fitting], options.val_fraction, seed)
        split_ids = _Split(fit=fit, val=val, test=test)
        if features.static is not None:
            result = run_attacker(features.static, split_ids, y_attr, options, seed, device)
            if result is not None:
                static_runs.append(result[:2])
                epochs["static"].append(result[2])
        result = run_attacker(features.clip, split_ids, y_attr, options, seed, device)
        if result is None:
            raise AnonfeatError(f"{path}: no clip features in the fit, validation or test part")
        clip_runs.append(result[:2])
        epochs["clip"].append(result[2])
        for task in options.tasks:
            y_task = labels.task_targets(task)[rows]
            videos, logits, epoch = run_probe(features.clip, split_ids, y_task, len(labels.task_classes(task)),
                                              options, seed, device)
            task_runs[task].append((videos, logits))
            epochs[task].append(epoch)

    utility = {}
    for task, runs in task_runs.items():
        y_task = labels.task_targets(task)[rows]
        scores = [metrics.top1(y_task[videos], logits) for videos, logits in runs]
        utility[task] = {"top1": float(np.mean(scores)), "top1_std": float(np.std(scores))}
    bias = None
    if options.bias_attribute:
        task = options.tasks[0]
        bias = _bias(rows, labels, options.bias_attribute, task_runs[task], labels.task_targets(task)[rows], task)
    n_static = 0 if features.static is None else len(np.unique(features.static[1]))
    return StoreResult(
        path=str(path),
        is_baseline=is_baseline,
        match=features.match,
        static=_summarize_attack(static_runs, y_attr, attributes) if static_runs else None,
        clip=_summarize_attack(clip_runs, y_attr, attributes),
        utility=utility,
        bias=bias,
        n_static_videos=n_static,
        best_epochs=epochs,
        attacker_split=attacker_split,
        features=features.features,
    )


def compare(result: StoreResult, baseline: StoreResult, first_task: str) -> None:
    """Fill the comparison with the baseline, all on the headline (worse-attacker) cMAP."""
    base, own = baseline.headline, result.headline
    drop = base.cmap - own.cmap
    result.leakage_reduction = drop / base.cmap if base.cmap > 0 else None
    above_chance = base.cmap - base.chance_cmap
    result.leakage_removed = drop / above_chance if above_chance > 1e-12 else None
    result.utility_drop = baseline.utility[first_task]["top1"] - result.utility[first_task]["top1"]


def audit_stores(stores: Sequence[str | Path], labels: Labels | str | Path, baseline: str | Path | None = None,
                 options: AuditOptions | None = None, progress: Callable[[str], None] | None = None,
                 **overrides) -> AuditReport:
    """Audit feature stores for private-attribute leakage and task utility.

    stores: HDF5 stores made by `anonfeat extract` (raw or sanitized).
    labels: a `Labels` object or a path for `load_labels` (loaded with the options' tasks/attributes).
    baseline: the raw store the others are compared with; it is audited too and listed first.
    options / overrides: `AuditOptions`, or its fields as keyword arguments.
    """
    from anonfeat.device import resolve_device

    unknown_options = [name for name in overrides if name not in AuditOptions.__dataclass_fields__]
    if unknown_options:
        raise TypeError(f"audit_stores() got unknown option(s) {', '.join(unknown_options)}")
    options = dataclasses.replace(options or AuditOptions(), **overrides)
    options.tasks = tuple(options.tasks)
    options.validate()
    device = options.device if isinstance(options.device, torch.device) else resolve_device(options.device)
    if not isinstance(labels, Labels):
        keep = [options.bias_attribute] if options.bias_attribute else []
        labels = load_labels(labels, tasks=options.tasks, attributes=options.attributes,
                             split_seed=options.split_seed, keep=keep)
    missing = [t for t in options.tasks if t not in labels.tasks]
    if missing:
        raise AnonfeatError(f"{labels.source}: no task column {', '.join(missing)}; "
                            f"tasks loaded: {', '.join(labels.tasks)}")
    attributes = list(options.attributes) if options.attributes is not None else labels.attribute_names
    unknown = [a for a in attributes if a not in labels.attributes]
    if unknown:
        raise AnonfeatError(f"{labels.source}: no attribute {', '.join(unknown)}; "
                            f"choose among {', '.join(labels.attribute_names)}")
    if options.bias_attribute:
        labels.group_values(options.bias_attribute)  # fails early on an unknown column

    paths = [str(p) for p in stores]
    if not paths and baseline is None:
        raise AnonfeatError("give at least one STORE.h5 to audit")
    order = ([str(baseline)] if baseline is not None else []) + [p for p in paths if p != str(baseline)]
    seen: dict[str, int | None] = {}
    for path in order:  # before any attacker runs: minutes later is too late to learn this
        with FeatureStore(path) as store:
            seen[path] = count_seen_test_videos(store.header, labels)
        if not options.allow_seen:
            check_not_seen(path, seen[path], labels)
    results = []
    for path in order:
        if progress:
            progress(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn's single-class warnings: handled above
            result = audit_store(path, labels, attributes, options, device,
                                 is_baseline=baseline is not None and path == str(baseline))
        result.test_seen_by_anonymizer = seen[path]
        results.append(result)
    notes = []
    if options.attributes is None and labels.class_columns:
        notes.append(f"{labels.source}: {', '.join(labels.class_columns)} hold class names, not 0/1, so they are "
                     "not audited as private attributes; binarize a column to audit it, or audit it as a "
                     "utility task with --task")
    for result in results:
        if result.optimistic:
            notes.append(f"{result.path}: no attacker-split videos, so attackers and probes were fit on the train "
                         "split, which its anonymizer may have trained on: its figures are optimistic (give the "
                         "labels an attacker split, or drop the split column for a derived one)")
        if result.test_seen_by_anonymizer is None:
            notes.append(f"{result.path}: its anonymizer did not record its training videos (made by an older "
                         "anonfeat); whether it saw test videos is unknown")
        elif result.test_seen_by_anonymizer:
            notes.append(f"{result.path}: its anonymizer trained on {result.test_seen_by_anonymizer} test videos "
                         "(--allow-seen): its figures flatter it")
    if baseline is not None:
        base = results[0]
        for result in results[1:]:
            compare(result, base, options.tasks[0])
            if result.match.keys != base.match.keys:
                notes.append(f"{result.path} matched {len(result.match.pairs)} videos, the baseline "
                             f"{len(base.match.pairs)}: comparisons cover different videos")
    for result in results:
        for name, attack in (("static", result.static), ("clip", result.clip)):
            if attack is not None and attack.excluded:
                notes.append(f"{result.path}: {name} attacker: {', '.join(attack.excluded)} has one class only "
                             "in test; reported as null and left out of the means")
    return AuditReport(stores=results, baseline=None if baseline is None else str(baseline),
                       attributes=attributes, tasks=list(options.tasks), labels=labels, options=options,
                       warnings=notes)
