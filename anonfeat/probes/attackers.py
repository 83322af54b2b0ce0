"""Attackers and probes trained on frozen features, with validation-based epoch selection.

Every sample (a clip, or a static clip) carries its video's labels; a video's prediction is the mean of its
samples' logits. The epoch kept is the one with the best validation score, so the test split is only read
once, after training, for reporting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from anonfeat.options import ATTACKERS  # noqa: F401  (re-exported)


def build_attacker(kind: str, dim: int, num_attributes: int) -> nn.Module:
    """The papers' attacker, Linear(D, D)-ReLU-Linear(D, k), or a linear one."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_attributes))
    if kind == "linear":
        return nn.Linear(dim, num_attributes)
    raise ValueError(f"unknown attacker {kind!r}; choose one of {', '.join(ATTACKERS)}")


def build_probe(dim: int, num_classes: int) -> nn.Module:
    """Linear probe for a utility task."""
    return nn.Linear(dim, num_classes)


@dataclass
class Samples:
    """Feature rows of some videos: `owner[i]` is the position in `videos` of the video row i comes from."""

    x: np.ndarray  # (n_samples, dim) float32
    owner: np.ndarray  # (n_samples,) int64
    videos: np.ndarray  # (n_videos,) ids of the videos, in the caller's numbering

    def __len__(self) -> int:
        return len(self.x)


def select_samples(x: np.ndarray, owner: np.ndarray, videos: np.ndarray) -> Samples:
    """The rows of `x` owned by `videos` (ids as in `owner`); videos without rows are dropped."""
    videos = np.asarray(videos, dtype=np.int64)
    keep = np.isin(owner, videos)
    present = videos[np.isin(videos, owner[keep])]
    position = {int(v): i for i, v in enumerate(present)}
    new_owner = np.array([position[int(v)] for v in owner[keep]], dtype=np.int64)
    return Samples(x=x[keep], owner=new_owner, videos=present)


@dataclass
class Standardizer:
    """Per-dimension standardization with statistics of the training samples only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        x = x.astype(np.float64)
        return cls(mean=x.mean(axis=0), std=np.maximum(x.std(axis=0), 1e-6))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


@dataclass
class TrainConfig:
    """AdamW, lr 1e-3, mini-batches of up to `batch_size` samples.

    Small label sets get smaller batches so that every epoch has at least `min_steps_per_epoch` steps:
    with a few hundred videos a 512 batch would mean one step per epoch, an under-trained attacker, and
    leakage that looks smaller than it is.
    """

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.01
    min_steps_per_epoch: int = 8

    def batch_for(self, num_samples: int) -> int:
        return max(1, min(self.batch_size, math.ceil(num_samples / self.min_steps_per_epoch)))


def pool_by_video(logits: torch.Tensor, owner: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Mean of the sample logits of each video."""
    total = torch.zeros(num_videos, logits.shape[1], device=logits.device, dtype=logits.dtype)
    total.index_add_(0, owner, logits)
    counts = torch.bincount(owner, minlength=num_videos).clamp_min(1).to(logits.dtype)
    return total / counts[:, None]


@torch.no_grad()
def predict_videos(model: nn.Module, samples: Samples, device: torch.device) -> np.ndarray:
    """(n_videos, outputs) mean logits per video of `samples`."""
    model.eval()
    x = torch.from_numpy(samples.x).to(device)
    owner = torch.from_numpy(samples.owner).to(device)
    return pool_by_video(model(x), owner, len(samples.videos)).float().cpu().numpy()


def train_selected(
    model: nn.Module,
    fit: Samples,
    fit_targets: np.ndarray,
    val: Samples,
    val_score: Callable[[np.ndarray], tuple[float, ...]],
    loss_fn: nn.Module,
    config: TrainConfig,
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, int]:
    """Train on `fit` (targets per video of `fit.videos`), keep the epoch with the best `val_score`.

    `val_score` maps validation video logits to a tuple compared lexicographically (higher is better);
    ties keep the earlier epoch. Returns the model loaded with the kept weights and that epoch (1-based).
    """
    model.to(device)
    x = torch.from_numpy(fit.x).to(device)
    targets = torch.from_numpy(fit_targets).to(device)[torch.from_numpy(fit.owner).to(device)]
    best_score: tuple[float, ...] | None = None
    best_state, best_epoch = _copy_state(model), 0

    def keep_best(epoch: int) -> None:
        nonlocal best_score, best_state, best_epoch
        score = val_score(predict_videos(model, val, device))
        if best_score is None or score > best_score:
            best_score, best_state, best_epoch = score, _copy_state(model), epoch

    fit_rows(model, x, targets, loss_fn, config, seed, after_epoch=keep_best)
    model.load_state_dict(best_state)
    return model, best_epoch


def fit_rows(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, config: TrainConfig,
             seed: int, after_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """The training loop of every attacker and probe: AdamW (`config`) over the rows of `x` for
    `config.epochs` epochs, in mini-batches of `config.batch_for(len(x))` rows shuffled by `seed`
    (the global RNG is left alone); `after_epoch(epoch)` (1-based) after each epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch_size = config.batch_for(len(x))
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            loss = loss_fn(model(x[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if after_epoch is not None:
            after_epoch(epoch)
    return model


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def seeded_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with initial weights fixed by `seed`, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
