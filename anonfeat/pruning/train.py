"""Training a tubelet pruner on decoded clips (docs/method.md#losses-and-training).

Loss: cross-entropy of the action head on the action CLS, and a privacy loss on the privacy CLS:
BCE on attribute labels, or (without attributes) NT-Xent between two static clips of each video.
The privacy branch (privacy head, privacy CLS token) minimizes the privacy loss, so the privacy CLS
learns where private content is and its attention can be subtracted in the tubelet score; the shared
backbone (and the action CLS token) receives that gradient reversed, weighted by the DANN schedule
2 / (1 + exp(-10 p)) - 1 (p: fraction of training done) times --w-privacy, so it learns to hide it.
"""

from __future__ import annotations

import math
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from anonfeat import comm
from anonfeat.comm import DistContext
from anonfeat.device import autocast, rank_device, resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.labels import load_labels
from anonfeat.nn.losses import grl_weight, nt_xent
from anonfeat.options import with_overrides
from anonfeat.paths import check_outputs
from anonfeat.pruning.backbone import build_pruner
from anonfeat.pruning.data import (GlobalBatches, LabelledVideos, TrainingClips, collate, labelled_videos,
                                   normalize_clips)
from anonfeat.pruning.io import save_pruner
from anonfeat.pruning.model import TubeletPruner
from anonfeat.pruning.options import PrunerTrainOptions
from anonfeat.training import EpochProgress, seed_everything, split_validation, warmup_cosine, wrap_ddp
from anonfeat.video.decoders import DecoderBackend, select_decoder
from anonfeat.video.sampling import Sampling


@dataclass
class PrunerTrainReport:
    pruner: Path
    train_videos: int
    val_videos: int
    unmatched_labels: int
    unmatched_videos: int
    failed_videos: int
    decoder_fallbacks: int = 0  # clips decoded on the CPU because --decoder could not decode their video
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    is_main: bool = True  # this process reports the run (rank 0 of a launched job, or the only process)


def set_trainable(pruner: TubeletPruner, train_blocks: int | None) -> list[torch.nn.Parameter]:
    """CLS tokens, heads, final norm and the last `train_blocks` blocks train; the rest stays frozen."""
    depth = len(pruner.blocks)
    n = max(1, math.ceil(depth / 3)) if train_blocks is None else min(train_blocks, depth)
    pruner.requires_grad_(False)
    for module in (pruner.action_head, pruner.privacy_head, pruner.norm, *pruner.blocks[depth - n:]):
        module.requires_grad_(True)
    pruner.cls_tokens.requires_grad_(True)
    return [p for p in pruner.parameters() if p.requires_grad]


class _PrunerForward(nn.Module):
    """Clips -> (action logits, privacy outputs): the part of a step that runs on this rank's rows
    (what DistributedDataParallel wraps). Privacy outputs: attribute logits of the clips, or the
    privacy-head projections of two static clips per video (NT-Xent; `statics` holds them video by
    video, 2B clips)."""

    def __init__(self, pruner: TubeletPruner):
        super().__init__()
        self.pruner = pruner

    def forward(self, clips: torch.Tensor, statics: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pruner(clips)
        logits = self.pruner.action_head(out.action)
        if statics is None:
            return logits, self.pruner.privacy_head(out.privacy)
        z = self.pruner.privacy_head(self.pruner(statics).privacy)
        return logits, z.view(len(clips), 2, -1)


class PrunerTrainer:
    """One `step` per global batch. Under torch.distributed each rank runs the model on its rows,
    the outputs are gathered with gradients and every rank computes the global losses, so the
    result equals the single-process step at the same global batch (see anonfeat.comm)."""

    def __init__(self, pruner: TubeletPruner, options: PrunerTrainOptions, device: torch.device,
                 ctx: DistContext | None = None):
        self.pruner, self.options, self.device = pruner.to(device), options, device
        self.ctx = ctx or DistContext()
        self.params = set_trainable(pruner, options.train_blocks)
        self.branch = [*pruner.privacy_head.parameters(), pruner.cls_tokens]
        self.optimizer = torch.optim.AdamW(self.params, lr=options.lr, weight_decay=options.weight_decay)
        self.forward = _PrunerForward(pruner)
        if self.ctx.enabled:
            self.forward = wrap_ddp(self.forward, device)

    def clips(self, frames: torch.Tensor) -> torch.Tensor:
        return normalize_clips(frames.to(self.device, non_blocking=True), self.pruner.config.encoder)

    def losses(self, batch: dict, sizes: list[int]) -> dict[str, torch.Tensor]:
        """The loss terms of the global batch (`sizes`: rows per rank)."""
        cfg = self.pruner.config
        ntxent = cfg.privacy_loss == "ntxent"
        statics = self.clips(batch["static"].flatten(0, 1)) if ntxent else None  # (2B, ...): 2 per video
        logits, privacy = self.forward(self.clips(batch["clip"]), statics)
        logits, privacy = (comm.all_gather_with_grad(self.ctx, t, sizes) for t in (logits, privacy))
        action = comm.all_gather_with_grad(self.ctx, batch["action"].to(self.device), sizes)
        terms = {"action": F.cross_entropy(logits.float(), action),
                 "acc": (logits.argmax(1) == action).float().mean()}
        if ntxent:
            terms["privacy"] = nt_xent(privacy[:, 0], privacy[:, 1], self.options.temperature)
        else:
            attributes = comm.all_gather_with_grad(self.ctx, batch["attributes"].to(self.device), sizes)
            terms["privacy"] = F.binary_cross_entropy_with_logits(privacy.float(), attributes)
        return terms

    def step(self, batch: dict, sizes: list[int], progress: float) -> dict[str, float]:
        """Privacy branch (privacy head, privacy CLS) descends the privacy loss; everything else gets
        it reversed with weight w: one backward of CE - w * P, then the branch's own P gradient
        (computed first) added back (1 + w) times."""
        self.pruner.train()
        with autocast(self.device):
            terms = self.losses(batch, sizes)
        weight = self.options.w_privacy * grl_weight(progress)
        self.optimizer.zero_grad(set_to_none=True)
        branch_grads = torch.autograd.grad(terms["privacy"], self.branch, retain_graph=True, allow_unused=True)
        (terms["action"] - weight * terms["privacy"]).backward()
        add_branch_gradients(self.pruner, self.branch, branch_grads, weight, self.ctx)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}


def add_branch_gradients(pruner: TubeletPruner, branch: list[torch.nn.Parameter],
                         grads: tuple[torch.Tensor | None, ...], weight: float, ctx: DistContext | None = None) -> None:
    """After backward of CE - w * P: give the privacy head and the privacy CLS row their P gradient
    with a plus sign (+ (1 + w) * dP); averaged over the ranks of `ctx` like DDP averages the rest."""
    ctx = ctx or DistContext()
    for param, grad in zip(branch, grads):
        if grad is None:
            continue
        grad = comm.all_reduce_mean(ctx, grad)
        update = (1.0 + weight) * grad
        if param is pruner.cls_tokens:  # only row 1, the privacy CLS; row 0 keeps the reversed gradient
            update = update * torch.tensor([0.0, 1.0], device=grad.device, dtype=grad.dtype).view(1, 2, 1)
        param.grad = update if param.grad is None else param.grad + update


def training_sampling(clip_len: int, options: PrunerTrainOptions) -> dict:
    """The sampling recorded in the pruner file (a record: `prune` samples as `extract` does, by its own
    flags, so pruned and extracted stores line up)."""
    sampling = Sampling(clip_len, options.frame_stride, resize=options.resize, sample_fps=options.sample_fps)
    return {k: v for k, v in sampling.to_dict().items() if k in ("clip_len", "frame_stride", "sample_fps", "resize")}


def fit_pruner(pruner: TubeletPruner, videos: LabelledVideos, options: PrunerTrainOptions,
               device: torch.device | None = None, ctx: DistContext | None = None,
               decoder: DecoderBackend | None = None) -> tuple[PrunerTrainer, list[dict], int, int]:
    """Train (on the ranks of `ctx`, default this process alone); returns the trainer, the per-epoch
    history, how many clips failed to decode and how many the CPU path decoded because `decoder`
    (default: options.decoder) could not."""
    ctx = ctx or DistContext()
    device = device or resolve_device(options.device)
    decoder = decoder or select_decoder(options.decoder, device)
    seed_everything(options.seed)
    trainer = PrunerTrainer(pruner, options, device, ctx)
    cfg = pruner.config
    enc = cfg.encoder
    n_static = 2 if cfg.privacy_loss == "ntxent" else 0
    dataset = TrainingClips(videos, enc.clip_len, options.frame_stride, enc.img_size, options.resize,
                            sample_fps=options.sample_fps, augment=True, statics=n_static > 0, flip=options.flip,
                            seed=options.seed, decoder=decoder)
    sampler = GlobalBatches(len(dataset), options.batch_size, options.seed, ctx.rank, ctx.world_size)
    gather = partial(collate, clip_shape=(enc.clip_len, enc.img_size, enc.img_size, 3), n_static=n_static,
                     n_attributes=videos.attributes.shape[1])
    total = options.epochs * len(sampler)
    scheduler = warmup_cosine(trainer.optimizer, options.warmup_epochs * len(sampler), total)
    history, failed, fallbacks, step = [], 0, 0, 0
    with EpochProgress("train-pruner", options.epochs, options.progress and ctx.is_main) as bar:
        for epoch in range(options.epochs):
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=min(options.workers, len(dataset)),
                                collate_fn=gather, pin_memory=device.type == "cuda")
            sums, batches = {}, 0
            for batch in loader:
                # (rows, clips that failed, clips decoded by the CPU fallback) per rank
                counts = [(len(batch["action"]), batch["failed"], batch["fallbacks"])]
                if ctx.enabled:
                    counts = comm.all_gather_objects(ctx, counts[0])
                sizes = [int(rows) for rows, _, _ in counts]
                failed += sum(lost for _, lost, _ in counts)
                fallbacks += sum(cpu for _, _, cpu in counts)
                if sum(sizes) >= 2:  # every rank takes the same decision: collectives stay in step
                    for name, value in trainer.step(batch, sizes, step / total).items():
                        sums[name] = sums.get(name, 0.0) + value
                    batches += 1
                scheduler.step()
                step += 1
            record = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in sums.items()},
                      "grl": grl_weight(step / total)}
            history.append(record)
            bar.update(record)
    pruner.eval()
    return trainer, history, failed, fallbacks


@torch.no_grad()
def evaluate(pruner: TubeletPruner, videos: LabelledVideos, options: PrunerTrainOptions,
             keep_ratio: float | None = None) -> dict[str, float]:
    """Action top-1 of the action head and, with attribute labels, cMAP of the privacy head, on the
    centre clip (centre crop) of each video."""
    from anonfeat.probes.metrics import cmap

    device = next(pruner.parameters()).device
    enc = pruner.config.encoder
    dataset = TrainingClips(videos, enc.clip_len, options.frame_stride, enc.img_size, options.resize,
                            sample_fps=options.sample_fps, augment=False, decoder=select_decoder(options.decoder, device))
    gather = partial(collate, clip_shape=(enc.clip_len, enc.img_size, enc.img_size, 3), n_static=0,
                     n_attributes=videos.attributes.shape[1])
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=min(options.workers, len(dataset)),
                        collate_fn=gather)
    pruner.eval()
    predictions, targets, priv, attrs = [], [], [], []
    for batch in loader:
        if not len(batch["action"]):
            continue
        with autocast(device):
            out = pruner(normalize_clips(batch["clip"].to(device), enc), keep_ratio)
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
    """`anonfeat train-pruner`: fit on the train split of `labels`, write the pruner to `out`.

    Only label rows of the train split are read (labels without a split column get the derived one,
    seeded by `options.split_seed`); the validation part is carved out of them. The file records the
    label ids of every video read (`training_videos`)."""
    options = with_overrides(options, PrunerTrainOptions, overrides)
    options.validate()
    check_outputs({"--out": out}, {"VIDEOS": source, "--labels": labels, "--checkpoint": options.checkpoint})
    # torchrun: DDP over the ranks
    return comm.run_in_group(partial(rank_device, options.device), _train_pruner, source, labels, out, options)


def _train_pruner(ctx: DistContext, source: str | Path, labels: str | Path, out: str | Path,
                  options: PrunerTrainOptions) -> PrunerTrainReport:
    decoder = select_decoder(options.decoder, ctx.device)  # refused here, before any work
    label_set = load_labels(labels, tasks=(options.task,), attributes=options.attributes,
                            split_seed=options.split_seed, require_attributes=False)
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
    trainer, history, failed, fallbacks = fit_pruner(pruner, fit, options, ctx.device, ctx, decoder)
    report = PrunerTrainReport(pruner=Path(out), train_videos=len(fit), val_videos=0 if val is None else len(val),
                               unmatched_labels=videos.unmatched_labels, unmatched_videos=videos.unmatched_videos,
                               failed_videos=failed, decoder_fallbacks=fallbacks, history=history,
                               is_main=ctx.is_main)
    if not ctx.is_main:  # rank 0 alone evaluates and writes the pruner
        return report
    metrics = {}
    if val is not None:
        metrics["val"] = evaluate(pruner, val, options)
        metrics["val_unpruned"] = evaluate(pruner, val, options, keep_ratio=1.0)
    info = {
        "backbone": backbone,
        "sampling": training_sampling(pruner.config.encoder.clip_len, options),
        "training": {k: v for k, v in asdict(options).items() if k not in ("progress", "device", "decoder", "extra")},
        "training_videos": list(videos.videos),
        "metrics": metrics,
        "final_losses": history[-1] if history else {},
        "history": history,
        "world_size": ctx.world_size,
    }
    report.pruner, report.metrics = save_pruner(pruner.cpu(), out, info), metrics
    return report
