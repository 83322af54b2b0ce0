"""Pieces shared by the trainers (adapter, pruner): seeding, validation hold-out, schedule, DDP, progress."""

from __future__ import annotations

import math
import random
from typing import Protocol, TypeVar

import numpy as np
import torch

from anonfeat.progress import RichBar


class _Subsettable(Protocol):
    def __len__(self) -> int: ...
    def subset(self, index: np.ndarray): ...


T = TypeVar("T", bound=_Subsettable)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def split_validation(data: T, fraction: float, seed: int) -> tuple[T, T | None]:
    """Hold out a seeded part of the train videos to report validation utility and privacy."""
    n_val = int(round(len(data) * fraction))
    if n_val < 2 or len(data) - n_val < 2:
        return data, None
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` under DistributedDataParallel as both trainers use it: gradients averaged over the
    ranks; unused parameters allowed (a warm-up phase or an optional head leaves some without a
    gradient); buffers not broadcast (the trainers keep none that differ between ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


class EpochProgress(RichBar):
    """A progress bar over epochs showing the last epoch's loss terms."""

    def __init__(self, label: str, total: int, enabled: bool):
        from rich.progress import TextColumn, TimeRemainingColumn

        columns = [TextColumn("epochs {task.fields[terms]}"), TimeRemainingColumn()] if enabled else []
        super().__init__(enabled, label, total, columns, terms="")

    def update(self, record: dict) -> None:
        terms = " ".join(f"{k}={v:.3f}" for k, v in record.items()
                         if k not in ("epoch", "phase") and isinstance(v, float))
        phase = f"[{record['phase']}] " if "phase" in record else ""
        self.step(terms=f"{phase}{terms}")
