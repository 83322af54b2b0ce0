"""Training the Anonymizing Adapter Module on features cached in a store.

Loss (docs/method.md; AAM, arXiv 2511.08666, extended where the probe showed the paper's form falls short):
    L = w_lc * MSE(f_A(h), h) + w_t * sum_task CE(head_task(f_A(h)), y) - w_b * privacy
    privacy = NT-Xent(f_A(s1), f_A(s2))                  static clips of one video (paper)
            + NT-Xent(f_A(c_a), f_A(c_b))                two motion clips of one video (clip pairs)
            + NT-Xent(f_A(s1), f_A(c_a))                 a static and a motion clip of one video
    optional supervised term (--privacy-loss attributes|both), added with weight w_attr:
      decorrelate (default --attr-loss): sum over feature dims of squared Pearson correlation with
        each private attribute, per view (sanitized static-clip rows, sanitized clip rows), every
        row carrying its video's labels; zero cross-covariance leaves no linear attacker signal;
      grl: BCE of an MLP attribute head through gradient reversal.
All terms are computed on standardized features (train statistics, stored with the adapter).
Heads are warmed up on raw features first, then trained jointly with the adapter.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonfeat import comm
from anonfeat.adapter.adversary import AttackerEnsemble
from anonfeat.adapter.data import VideoFeatures, read_training_features
from anonfeat.adapter.io import save_adapter
from anonfeat.adapter.leace import fit_leace
from anonfeat.adapter.model import AnonymizingAdapter, pad_sequences
from anonfeat.adapter.options import AdapterTrainOptions
from anonfeat.comm import DistContext
from anonfeat.device import autocast, rank_device
from anonfeat.errors import AnonfeatError
from anonfeat.labels import load_labels
from anonfeat.nn.losses import attribute_correlation, grl_weight, latent_consistency, nt_xent, reverse_gradient
from anonfeat.options import with_overrides
from anonfeat.paths import check_outputs
from anonfeat.probes.attackers import TrainConfig, build_attacker, fit_rows, seeded_model
from anonfeat.training import EpochProgress, seed_everything, split_validation, wrap_ddp

@dataclass
class TrainReport:
    adapter: Path
    train_videos: int
    val_videos: int
    unmatched_labels: int
    unmatched_store: int
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    is_main: bool = True  # this process reports the run (rank 0 of a launched job, or the only process)


def _statistics(data: VideoFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.cat([*data.clips, *data.statics])
    return rows.mean(0), rows.std(0)


class _Batch:
    """One step's tensors: padded clip windows, two static clips and two clip positions per video."""

    def __init__(self, data: VideoFeatures, index: list[int], max_clips: int, rng: random.Random,
                 device: torch.device):
        windows = []
        for i in index:
            clips = data.clips[i]
            start = rng.randrange(0, len(clips) - max_clips + 1) if len(clips) > max_clips else 0
            windows.append(clips[start:start + max_clips])
        padded, valid = pad_sequences(windows)
        lengths = [len(w) for w in windows]
        pos_a = [rng.randrange(n) for n in lengths]
        pos_b = [rng.choice([p for p in range(n) if p != a]) if n > 1 else a for n, a in zip(lengths, pos_a)]
        s1, s2 = [], []
        for i in index:
            statics = data.statics[i]
            a = rng.randrange(len(statics))
            b = rng.choice([p for p in range(len(statics)) if p != a]) if len(statics) > 1 else a
            s1.append(statics[a])
            s2.append(statics[b])
        self.clips, self.valid = padded.to(device), valid.to(device)
        self.pos_a = torch.tensor(pos_a, device=device)
        self.pos_b = torch.tensor(pos_b, device=device)
        self.has_pair = torch.tensor([n > 1 for n in lengths], device=device)
        self.static = torch.stack([torch.stack(s1), torch.stack(s2)], dim=1).to(device)  # (B, 2, D)
        idx = torch.tensor(index)
        self.targets = {t: v[idx].to(device) for t, v in data.task_targets.items()}
        self.attributes = data.attributes[idx].to(device)
        self.index = idx.to(device)


class AdapterTrainer:
    """Holds the adapter, the utility heads and the optional privacy head; one `step` per batch."""

    def __init__(self, data: VideoFeatures, options: AdapterTrainOptions, device: torch.device,
                 ctx: DistContext | None = None):
        dim = data.header.dim
        if dim % options.heads:
            raise AnonfeatError(f"--heads {options.heads} does not divide the feature dim {dim}")
        self.options, self.device, self.ctx = options, device, ctx or DistContext()
        self.adapter = AnonymizingAdapter(dim, options.depth, options.heads, options.mlp_ratio)
        self.adapter.set_statistics(*_statistics(data))
        self.heads = nn.ModuleDict({t: nn.Linear(dim, len(c)) for t, c in data.task_classes.items()})
        n_attr = data.attributes.shape[1]
        self.use_attributes = options.privacy_loss in ("attributes", "both")
        if self.use_attributes and n_attr == 0:
            raise AnonfeatError("--privacy-loss attributes needs attribute columns in --labels")
        self.privacy_head = build_attacker("mlp", dim, max(n_attr, 1))
        for module in (self.adapter, self.heads, self.privacy_head):
            module.to(device)
        self.adversary = None
        if self.use_attributes and options.attr_loss == "adversary":
            self.adversary = AttackerEnsemble(dim, n_attr, options.attackers, options.attacker_steps,
                                              options.attacker_reset, seed=options.seed).to(device)
            self.base_rate = data.attributes.mean(0).clamp(1e-3, 1 - 1e-3).to(device)
            # Each training video's fold: attacker k never fits fold k and alone judges it.
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(options.seed))
            self.folds = torch.empty(len(data), dtype=torch.long)
            self.folds[order] = torch.arange(len(data)) % options.attackers
            self.folds = self.folds.to(device)

    def _sanitize(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The adapter on a batch of standardized sequences. Under torch.distributed each rank runs
        it on its part of the rows only and the parts are gathered with gradients, so every rank
        then computes the losses of the whole global batch: the single-process losses."""
        ctx = self.ctx
        if not ctx.enabled:
            return self.adapter.forward_standardized(z, valid)
        lo, hi = comm.row_range(len(z), ctx.rank, ctx.world_size)
        sizes = comm.row_sizes(len(z), ctx.world_size)
        local = self.adapter.forward_standardized(z[lo:hi], None if valid is None else valid[lo:hi])
        return comm.all_gather_with_grad(ctx, local, sizes)

    def losses(self, batch: _Batch, progress: float, warmup: bool) -> dict[str, torch.Tensor]:
        o = self.options
        adapter = self.adapter
        z_in = adapter.standardize(batch.clips)
        s_in = adapter.standardize(batch.static)  # (B, 2, D)
        if warmup:  # heads only, on raw (standardized) features
            return {"task": self._task_loss(z_in, batch)}
        z_out = self._sanitize(z_in, batch.valid)
        s_out = self._sanitize(s_in.reshape(-1, 1, s_in.shape[-1])).reshape(s_in.shape)
        valid = batch.valid
        terms = {
            "lc": latent_consistency(z_out[valid], z_in[valid]) + latent_consistency(s_out, s_in),
            "task": self._task_loss(z_out, batch),
        }
        privacy = torch.zeros((), device=self.device)
        if o.privacy_loss in ("ntxent", "both"):
            rows = torch.arange(len(z_out), device=self.device)
            clip_a, clip_b = z_out[rows, batch.pos_a], z_out[rows, batch.pos_b]
            privacy = nt_xent(s_out[:, 0], s_out[:, 1], o.temperature)
            if o.pairs == "all":
                paired = batch.has_pair
                if int(paired.sum()) >= 2:
                    privacy = privacy + nt_xent(clip_a[paired], clip_b[paired], o.temperature)
                privacy = privacy + nt_xent(s_out[:, 0], clip_a, o.temperature)
        terms["ntxent"] = privacy
        if not self.use_attributes:
            return terms
        # Per view (the audit's two attackers), every clip row carries its video's attributes.
        per_clip = batch.attributes[:, None].expand(*valid.shape, -1)[valid]
        per_static = batch.attributes[:, None].expand(*s_out.shape[:2], -1).reshape(-1, batch.attributes.shape[1])
        if self.adversary is not None:
            rows = torch.cat([s_out.reshape(-1, s_out.shape[-1]), z_out[valid]])
            targets = torch.cat([per_static, per_clip])
            fold = self.folds[batch.index]
            folds = torch.cat([fold[:, None].expand(*s_out.shape[:2]).reshape(-1), fold[:, None].expand(valid.shape)[valid]])
            terms["attacker_bce"] = torch.tensor(self.adversary.update(rows, targets, folds))
            terms["attr"] = self.adversary.privacy_loss(rows, folds, self.base_rate)
            if o.linear_guard:  # no linear signal left in either view, however few videos the attackers see
                terms["attr"] = terms["attr"] + (
                    attribute_correlation(s_out.reshape(-1, s_out.shape[-1]), per_static)
                    + attribute_correlation(z_out[valid], per_clip))
        elif o.attr_loss == "decorrelate":
            terms["attr"] = (attribute_correlation(s_out.reshape(-1, s_out.shape[-1]), per_static)
                             + attribute_correlation(z_out[valid], per_clip))
        else:
            weight = grl_weight(progress)
            video_repr = torch.cat([_masked_mean(z_out, valid), s_out[:, 0]])
            logits = self.privacy_head(reverse_gradient(video_repr, weight))
            terms["attr"] = F.binary_cross_entropy_with_logits(logits, batch.attributes.repeat(2, 1))
        return terms

    def _task_loss(self, z: torch.Tensor, batch: _Batch) -> torch.Tensor:
        valid = batch.valid
        total = torch.zeros((), device=self.device)
        for task, head in self.heads.items():
            targets = batch.targets[task][:, None].expand(valid.shape)[valid]
            total = total + F.cross_entropy(head(z[valid]), targets)
        return total

    def total(self, terms: dict[str, torch.Tensor], warmup: bool) -> torch.Tensor:
        o = self.options
        if warmup:
            return terms["task"]
        loss = o.w_lc * terms["lc"] + o.w_t * terms["task"] - o.w_b * terms["ntxent"]
        if "attr" in terms:
            loss = loss + o.w_attr * terms["attr"]
        return loss


class _LossModule(nn.Module):
    """The trainer's modules with `losses` as forward: what DistributedDataParallel wraps."""

    def __init__(self, trainer: AdapterTrainer):
        super().__init__()
        self.adapter, self.heads, self.privacy_head = trainer.adapter, trainer.heads, trainer.privacy_head
        self._losses = trainer.losses

    def forward(self, batch: _Batch, progress: float, warmup: bool) -> dict[str, torch.Tensor]:
        return self._losses(batch, progress, warmup)


def _distributed_losses(trainer: AdapterTrainer, device: torch.device):
    """DDP over adapter and heads (gradients averaged over ranks; the loss every rank computes is
    the global one, see AdapterTrainer._sanitize). Unused parameters: the adapter in warm-up, the
    attribute head without --privacy-loss attributes|both."""
    return wrap_ddp(_LossModule(trainer), device)


def _masked_mean(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(z.dtype)[..., None]
    return (z * weights).sum(1) / weights.sum(1).clamp_min(1)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # NT-Xent needs at least two videos
        batches[-2].extend(batches.pop())
    return batches


def fit_adapter(data: VideoFeatures, options: AdapterTrainOptions, ctx: DistContext | None = None
                ) -> tuple[AdapterTrainer, list[dict]]:
    """Warm up the heads, then train adapter and heads jointly (on the ranks of `ctx`, default this
    process alone); returns the trainer and loss history."""
    options.validate()
    ctx = ctx or DistContext()
    device = rank_device(options.device, ctx.local_rank, ctx.world_size)
    generator = seed_everything(options.seed)
    rng = random.Random(options.seed)
    trainer = AdapterTrainer(data, options, device, ctx)
    # Every rank draws the same global batches (same seed); each runs the adapter on its rows.
    compute_losses = _distributed_losses(trainer, device) if ctx.enabled else trainer.losses
    warm_opt = torch.optim.AdamW(trainer.heads.parameters(), lr=options.lr)
    params = [*trainer.adapter.parameters(), *trainer.heads.parameters(), *trainer.privacy_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(data) / options.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, options.epochs * steps_per_epoch))
    history: list[dict] = []
    total_epochs = options.warmup_epochs + options.epochs
    with EpochProgress("train-adapter", total_epochs, options.progress and ctx.is_main) as bar:
        for epoch in range(total_epochs):
            warmup = epoch < options.warmup_epochs
            sums: dict[str, float] = {}
            batches = _batches(len(data), options.batch_size, generator)
            for step, index in enumerate(batches):
                batch = _Batch(data, index, options.max_clips, rng, device)
                progress = (epoch - options.warmup_epochs + step / len(batches)) / options.epochs
                trainer.adapter.train(not warmup)
                with autocast(device):
                    terms = compute_losses(batch, max(progress, 0.0), warmup)
                    loss = trainer.total(terms, warmup)
                opt = warm_opt if warmup else optimizer
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not warmup:
                    scheduler.step()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(batches)
            record = {"epoch": epoch + 1, "phase": "warmup" if warmup else "joint", **sums}
            history.append(record)
            bar.update(record)
    trainer.adapter.eval()
    return trainer, history


@torch.no_grad()
def utility_accuracy(trainer: AdapterTrainer, data: VideoFeatures, sanitized: bool = True) -> dict[str, float]:
    """Video-level top-1 of the trained heads (mean clip logits), on sanitized or raw features."""
    adapter = trainer.adapter
    out: dict[str, float] = {}
    padded, valid = pad_sequences(data.clips)
    z = adapter.standardize(padded.to(trainer.device))
    valid = valid.to(trainer.device)
    if sanitized:
        z = adapter.forward_standardized(z, valid)
    for task, head in trainer.heads.items():
        logits = _masked_mean(head(z), valid)
        out[task] = float((logits.argmax(1).cpu() == data.task_targets[task]).float().mean())
    return out


def quick_privacy_probe(trainer: AdapterTrainer, fit: VideoFeatures, val: VideoFeatures, epochs: int = 60,
                        seed: int = 0) -> dict[str, float]:
    """cMAP of a fresh MLP attacker (raw vs sanitized static clips and clip means), fitted on the
    training videos and scored on the held-out validation videos. A quick look, not the audit."""
    from anonfeat.probes.metrics import cmap

    if fit.attributes.shape[1] == 0:
        return {}
    adapter = trainer.adapter
    results = {}
    for view in ("static", "clip"):
        for sanitized in (False, True):
            x_fit, x_val = (_probe_inputs(adapter, d, view, sanitized, trainer.device) for d in (fit, val))
            dim, k = x_fit.shape[1], fit.attributes.shape[1]
            attacker = seeded_model(lambda: build_attacker("mlp", dim, k), seed).to(trainer.device)
            full_batch = TrainConfig(epochs=epochs, lr=1e-3, batch_size=len(x_fit), min_steps_per_epoch=1)
            fit_rows(attacker, x_fit, fit.attributes.to(trainer.device), nn.BCEWithLogitsLoss(), full_batch, seed)
            with torch.no_grad():
                scores = attacker(x_val).cpu().numpy()
            results[f"{view}_cmap_{'sanitized' if sanitized else 'raw'}"] = cmap(val.attributes.numpy(), scores)
    return results


@torch.no_grad()
def _probe_inputs(adapter: AnonymizingAdapter, data: VideoFeatures, view: str, sanitized: bool,
                  device: torch.device) -> torch.Tensor:
    if view == "static":
        x = torch.stack([s.mean(0) if not sanitized else adapter(s.to(device)[:, None])[:, 0].mean(0).cpu()
                         for s in data.statics])
    else:
        padded, valid = pad_sequences(data.clips)
        padded, valid = padded.to(device), valid.to(device)
        out = adapter(padded, valid) if sanitized else padded
        x = _masked_mean(out, valid).cpu()
    return adapter.standardize(x.to(device))


def _file_config(data: VideoFeatures, options: AdapterTrainOptions, **facts) -> dict:
    """What an adapter file says about itself besides its architecture: the encoder whose features it
    takes, the flags, the label ids of every video it read (its fit and validation parts), and `facts`."""
    header = data.header
    return {
        "encoder": {"name": header.encoder, "checkpoint_sha256": header.checkpoint_sha256,
                    "config": header.encoder_config.to_dict()},
        "store_sampling": header.sampling,
        "training": {k: v for k, v in asdict(options).items() if k not in ("progress", "device")},
        "training_videos": list(data.videos),
        **facts,
    }


def train_adapter(store: str | Path, labels: str | Path, out: str | Path,
                  options: AdapterTrainOptions | None = None, **overrides) -> TrainReport:
    """`anonfeat train-adapter`: fit on the train split of `labels`, write the adapter to `out`.

    Only label rows of the train split are read (labels without a split column get the derived one,
    seeded by `options.split_seed`); the validation part is carved out of them. With
    `options.method == "leace"` a LEACE eraser of the attributes is fit instead (`anonfeat.adapter.leace`).
    """
    options = with_overrides(options, AdapterTrainOptions, overrides)
    options.validate()
    check_outputs({"--out": out}, {"STORE": store, "--labels": labels})  # before any process group starts
    # torchrun: DDP over the ranks
    return comm.run_in_group(partial(rank_device, options.device), _train_adapter, store, labels, out, options)


def _train_adapter(ctx: DistContext, store: str | Path, labels: str | Path, out: str | Path,
                   options: AdapterTrainOptions) -> TrainReport:
    needs_attributes = options.method == "leace" or options.privacy_loss != "ntxent"
    label_set = load_labels(labels, tasks=options.tasks, attributes=options.attributes,
                            split_seed=options.split_seed, require_attributes=needs_attributes)
    data = read_training_features(store, label_set, split="train")
    if options.method == "leace":
        return _train_leace(data, out, options, ctx)
    fit, val = split_validation(data, options.val_fraction, options.seed)
    trainer, history = fit_adapter(fit, options, ctx)
    if not ctx.is_main:  # rank 0 alone evaluates and writes the adapter
        return TrainReport(adapter=Path(out), train_videos=len(fit), val_videos=0 if val is None else len(val),
                           unmatched_labels=data.unmatched_labels, unmatched_store=data.unmatched_store,
                           history=history, is_main=False)
    metrics = {"train_top1": utility_accuracy(trainer, fit), "train_top1_raw": utility_accuracy(trainer, fit, False)}
    if val is not None:
        metrics["val_top1"] = utility_accuracy(trainer, val)
        metrics["val_top1_raw"] = utility_accuracy(trainer, val, False)
        metrics["privacy_probe"] = quick_privacy_probe(trainer, fit, val, seed=options.seed)
    config = _file_config(data, options, metrics=metrics, final_losses=history[-1] if history else {},
                          history=history, world_size=ctx.world_size)
    path = save_adapter(trainer.adapter.cpu(), out, config)
    return TrainReport(adapter=path, train_videos=len(fit), val_videos=0 if val is None else len(val),
                       unmatched_labels=data.unmatched_labels, unmatched_store=data.unmatched_store,
                       history=history, metrics=metrics)


def _train_leace(data: VideoFeatures, out: str | Path, options: AdapterTrainOptions, ctx: DistContext
                 ) -> TrainReport:
    """Closed form on every train video (no validation part: nothing is tuned); rank 0 writes it."""
    eraser = fit_leace(data)
    rows = sum(len(c) + len(s) for c, s in zip(data.clips, data.statics))
    metrics = {"leace": {"rank": eraser.rank, "rows": rows, "attributes": list(data.attribute_names)}}
    report = TrainReport(adapter=Path(out), train_videos=len(data), val_videos=0,
                         unmatched_labels=data.unmatched_labels, unmatched_store=data.unmatched_store,
                         metrics=metrics)
    if ctx.is_main:
        report.adapter = save_adapter(eraser, out, _file_config(data, options, metrics=metrics,
                                                                world_size=ctx.world_size))
    return report
