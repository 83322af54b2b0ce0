"""Training a tubelet pruner on decoded clips (DESIGN.md section 2).

Loss: cross-entropy of the action head on the action CLS, and a privacy loss on the privacy CLS:
BCE on attribute labels, or (without attributes) NT-Xent between two static clips of each video.
The privacy branch (privacy head, privacy CLS token) minimizes the privacy loss, so the privacy CLS
learns where private content is and its attention can be subtracted in the tubelet score; the shared
backbone (and the action CLS token) receives that gradient reversed, weighted by the DANN schedule
2 / (1 + exp(-10 p)) - 1 (p: fraction of training done) times --w-privacy, so it learns to hide it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from anonfeat.adapter.losses import grl_weight, nt_xent
from anonfeat.device import autocast, resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.labels import load_labels
from anonfeat.pruning.backbone import build_pruner
from anonfeat.pruning.data import LabelledVideos, TrainingClips, collate, labelled_videos, normalize_clips
from anonfeat.pruning.io import save_pruner
from anonfeat.pruning.model import TubeletPruner
from anonfeat.pruning.options import PrunerTrainOptions
from anonfeat.training import EpochProgress, seed_everything, split_validation, warmup_cosine


@dataclass
class PrunerTrainReport:
    pruner: Path
    train_videos: int
    val_videos: int
    unmatched_labels: int
    unmatched_videos: int
    failed_videos: int
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def set_trainable(pruner: TubeletPruner, train_blocks: int | None) -> list[torch.nn.Parameter]:
    """CLS tokens, heads, final norm and the last `train_blocks` blocks train; the rest stays frozen."""
    depth = len(pruner.blocks)
    n = max(1, math.ceil(depth / 3)) if train_blocks is None else min(train_blocks, depth)
    pruner.requires_grad_(False)
    for module in (pruner.action_head, pruner.privacy_head, pruner.norm, *pruner.blocks[depth - n:]):
        module.requires_grad_(True)
    pruner.cls_tokens.requires_grad_(True)
    return [p for p in pruner.parameters() if p.requires_grad]


def apply_privacy_gradients(pruner: TubeletPruner, params: list[torch.nn.Parameter],
                            privacy_grads: tuple[torch.Tensor | None, ...], weight: float) -> None:
    """Add the privacy loss's gradients: as they are to the privacy branch (privacy head, privacy CLS
    token), reversed and scaled by `weight` to everything else (the gradient-reversal layer)."""
    own = {id(p) for p in pruner.privacy_head.parameters()}
    for param, grad in zip(params, privacy_grads):
        if grad is None:
            continue
        if id(param) in own:
            update = grad
        elif param is pruner.cls_tokens:  # row 0 action CLS (reversed), row 1 privacy CLS (as is)
            update = grad * torch.tensor([-weight, 1.0], device=grad.device, dtype=grad.dtype).view(1, 2, 1)
        else:
            update = -weight * grad
        param.grad = update if param.grad is None else param.grad + update


class PrunerTrainer:
    def __init__(self, pruner: TubeletPruner, options: PrunerTrainOptions, device: torch.device):
        self.pruner, self.options, self.device = pruner.to(device), options, device
        enc = pruner.config.encoder
        self.mean = torch.tensor(enc.mean, device=device)
        self.std = torch.tensor(enc.std, device=device)
        self.params = set_trainable(pruner, options.train_blocks)
        self.optimizer = torch.optim.AdamW(self.params, lr=options.lr, weight_decay=options.weight_decay)

    def clips(self, frames: torch.Tensor) -> torch.Tensor:
        return normalize_clips(frames.to(self.device, non_blocking=True), self.mean, self.std)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.pruner.config
        out = self.pruner(self.clips(batch["clip"]))
        action = batch["action"].to(self.device)
        logits = self.pruner.action_head(out.action)
        terms = {"action": F.cross_entropy(logits.float(), action),
                 "acc": (logits.argmax(1) == action).float().mean()}
        if cfg.privacy_loss == "attributes":
            priv = self.pruner.privacy_head(out.privacy).float()
            terms["privacy"] = F.binary_cross_entropy_with_logits(priv, batch["attributes"].to(self.device))
        else:
            statics = batch["static"]
            b = statics.shape[0]
            z = self.pruner.privacy_head(self.pruner(self.clips(statics.flatten(0, 1))).privacy).view(b, 2, -1)
            terms["privacy"] = nt_xent(z[:, 0], z[:, 1], self.options.temperature)
        terms["kept"] = torch.tensor(out.final_kept.shape[1] / cfg.encoder.num_tokens if out.kept else 1.0)
        return terms

    def step(self, batch: dict, progress: float) -> dict[str, float]:
        self.pruner.train()
        with autocast(self.device):
            terms = self.losses(batch)
        weight = self.options.w_privacy * grl_weight(progress)
        self.optimizer.zero_grad(set_to_none=True)
        privacy_grads = torch.autograd.grad(terms["privacy"], self.params, retain_graph=True, allow_unused=True)
        terms["action"].backward()
        apply_privacy_gradients(self.pruner, self.params, privacy_grads, weight)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}


def _loader(dataset: TrainingClips, options: PrunerTrainOptions, shuffle: bool, generator: torch.Generator | None,
            device: torch.device) -> DataLoader:
    workers = min(options.workers, len(dataset))
    return DataLoader(dataset, batch_size=options.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def fit_pruner(pruner: TubeletPruner, videos: LabelledVideos, options: PrunerTrainOptions
               ) -> tuple[PrunerTrainer, list[dict], int]:
    """Train; returns the trainer, the per-epoch history and how many clips failed to decode."""
    device = resolve_device(options.device)
    generator = seed_everything(options.seed)
    trainer = PrunerTrainer(pruner, options, device)
    enc = pruner.config.encoder
    dataset = TrainingClips(videos, enc.clip_len, options.frame_stride, enc.img_size, options.resize,
                            augment=True, statics=pruner.config.privacy_loss == "ntxent", flip=options.flip,
                            seed=options.seed)
    steps_per_epoch = math.ceil(len(dataset) / options.batch_size)
    total = options.epochs * steps_per_epoch
    scheduler = warmup_cosine(trainer.optimizer, options.warmup_epochs * steps_per_epoch, total)
    history, failed, step = [], 0, 0
    with EpochProgress("train-pruner", options.epochs, options.progress) as bar:
        for epoch in range(options.epochs):
            dataset.set_epoch(epoch)
            sums, batches = {}, 0
            for batch in _loader(dataset, options, True, generator, device):
                if batch is None or len(batch["action"]) < 2:
                    failed += 0 if batch is None else batch["failed"]
                    step += 1
                    scheduler.step()
                    continue
                failed += batch["failed"]
                terms = trainer.step(batch, step / total)
                scheduler.step()
                step += 1
                batches += 1
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
            record = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in sums.items()},
                      "grl": grl_weight(step / total)}
            history.append(record)
            bar.update(record)
    pruner.eval()
    return trainer, history, failed


@torch.no_grad()
def evaluate(pruner: TubeletPruner, videos: LabelledVideos, options: PrunerTrainOptions,
             keep_ratio: float | None = None) -> dict[str, float]:
    """Action top-1 of the action head and, with attribute labels, cMAP of the privacy head, on the
    centre clip (centre crop) of each video."""
    from anonfeat.audit.metrics import cmap

    device = next(pruner.parameters()).device
    enc = pruner.config.encoder
    mean, std = torch.tensor(enc.mean, device=device), torch.tensor(enc.std, device=device)
    dataset = TrainingClips(videos, enc.clip_len, options.frame_stride, enc.img_size, options.resize, augment=False)
    pruner.eval()
    predictions, targets, priv, attrs = [], [], [], []
    for batch in _loader(dataset, options, False, None, device):
        if batch is None:
            continue
        with autocast(device):
            out = pruner(normalize_clips(batch["clip"].to(device), mean, std), keep_ratio)
            predictions.append(pruner.action_head(out.action).argmax(1).cpu())
            priv.append(pruner.privacy_head(out.privacy).float().cpu())
        targets.append(batch["action"])
        attrs.append(batch["attributes"])
    if not predictions:
        return {}
    metrics = {"top1": float((torch.cat(predictions) == torch.cat(targets)).float().mean())}
    if pruner.config.privacy_loss == "attributes" and videos.attributes.shape[1]:
        metrics["privacy_head_cmap"] = cmap(torch.cat(attrs).numpy(), torch.cat(priv).numpy())
    return metrics


def train_pruner(source: str | Path, labels: str | Path, out: str | Path,
                 options: PrunerTrainOptions | None = None, **overrides) -> PrunerTrainReport:
    """`anonfeat train-pruner`: fit on the train split of `labels`, write the pruner to `out`."""
    options = options or PrunerTrainOptions()
    for name, value in overrides.items():
        setattr(options, name, value)
    options.validate()
    label_set = load_labels(labels, tasks=(options.task,), attributes=options.attributes, seed=options.seed,
                            require_attributes=False)
    attributes = label_set.attribute_names
    privacy_loss = options.privacy_loss
    if privacy_loss == "auto":
        privacy_loss = "attributes" if attributes else "ntxent"
    if privacy_loss == "attributes" and not attributes:
        raise AnonfeatError(f"{labels}: --privacy-loss attributes needs attribute columns; "
                            "add them or use --privacy-loss ntxent")
    videos = labelled_videos(source, label_set, options.task, attributes)
    fit, val = split_validation(videos, options.val_fraction, options.seed)
    seed_everything(options.seed)  # the new CLS tokens and heads are drawn from the seed too
    pruner, backbone = build_pruner(
        options.encoder, options.checkpoint, options.random_init, actions=tuple(videos.action_classes),
        attributes=tuple(attributes), privacy_loss=privacy_loss, prune_blocks=tuple(options.prune_blocks),
        keep_rates=tuple(options.keep_rates), lam=options.lam, num_frames=options.clip_len)
    trainer, history, failed = fit_pruner(pruner, fit, options)
    metrics = {}
    if val is not None:
        metrics["val"] = evaluate(pruner, val, options)
        metrics["val_unpruned"] = evaluate(pruner, val, options, keep_ratio=1.0)
    info = {
        "backbone": backbone,
        "sampling": {"clip_len": pruner.config.encoder.clip_len, "frame_stride": options.frame_stride,
                     "resize": options.resize},
        "training": {k: v for k, v in asdict(options).items() if k not in ("progress", "device", "extra")},
        "metrics": metrics,
        "final_losses": history[-1] if history else {},
    }
    path = save_pruner(pruner.cpu(), out, info)
    return PrunerTrainReport(pruner=path, train_videos=len(fit), val_videos=0 if val is None else len(val),
                             unmatched_labels=videos.unmatched_labels, unmatched_videos=videos.unmatched_videos,
                             failed_videos=failed, history=history, metrics=metrics)
