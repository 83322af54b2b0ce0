"""An adversary that keeps up with the adapter: an ensemble of MLP attribute attackers.

Why: a single attacker trained jointly with the adapter (gradient reversal) is fooled by small
feature changes that a fresh attacker, trained afterwards on new videos, sees straight through.
This adversary follows the audit's threat instead:

- K attackers with the audit's architecture (Linear(D, D)-ReLU-Linear(D, k)), trained with BCE on
  the sanitized rows of both views alike (static clips and motion clips, each row carrying its
  video's attributes), several inner steps per adapter step, on the detached sanitized features;
- cross-fitted: the training videos are dealt into K folds, attacker k never trains on fold k, and
  the adapter is judged on fold k's rows by attacker k only. An attacker judged on the rows it fit
  would memorize those few videos, and the adapter would chase that memory instead of removing what
  an attacker learns about new people (the audit fits its attackers on other videos than it tests);
- one attacker, in turn, is re-initialized every `reset_every` adapter steps, so the ensemble always
  holds attackers that learned from scratch on the current sanitized features (what the audit does);
- the adapter is then asked to make every attacker predict each attribute's base rate (the training
  prevalence): BCE against the base rate, minimal when the prediction carries no information. Unlike
  maximizing the attackers' loss (gradient reversal), this cannot be met by flipping their answers,
  which would leak just as much.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anonfeat.probes.attackers import build_attacker


class AttackerEnsemble(nn.Module):
    """K fresh-able MLP attackers on sanitized (standardized) feature rows."""

    def __init__(self, dim: int, num_attributes: int, size: int, steps: int, reset_every: int,
                 lr: float = 1e-3, seed: int = 0):
        super().__init__()
        if size < 1 or steps < 1 or reset_every < 0:
            raise ValueError("attacker ensemble: size and steps must be >= 1, reset_every >= 0")
        self.dim, self.num_attributes = dim, num_attributes
        self.steps, self.reset_every, self.lr = steps, reset_every, lr
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.attackers = nn.ModuleList(self._fresh() for _ in range(size))
        self.optimizers = [self._optimizer(a) for a in self.attackers]
        self.updates, self._next_reset = 0, 0

    def _fresh(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            return build_attacker("mlp", self.dim, self.num_attributes)

    def _optimizer(self, attacker: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(attacker.parameters(), lr=self.lr, weight_decay=0.01)

    def update(self, rows: torch.Tensor, targets: torch.Tensor, folds: torch.Tensor) -> float:
        """`steps` BCE steps of every attacker on the detached rows outside its fold; re-initializes one in
        turn on schedule. Returns the attackers' last mean loss (a sign of how much they still find)."""
        if self.reset_every and self.updates and self.updates % self.reset_every == 0:
            i = self._next_reset
            device = next(self.attackers[i].parameters()).device
            self.attackers[i] = self._fresh().to(device)
            self.optimizers[i] = self._optimizer(self.attackers[i])
            self._next_reset = (i + 1) % len(self.attackers)
        self.updates += 1
        rows, targets = rows.detach().float(), targets.float()
        losses = []
        with torch.enable_grad():
            for _ in range(self.steps):
                losses = []
                for k, (attacker, optimizer) in enumerate(zip(self.attackers, self.optimizers)):
                    own = self._fit_rows(folds, k)
                    if not own.any():
                        continue
                    loss = F.binary_cross_entropy_with_logits(attacker(rows[own]), targets[own])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
        return sum(losses) / max(len(losses), 1)

    def _fit_rows(self, folds: torch.Tensor, k: int) -> torch.Tensor:
        """Rows attacker k trains on: every fold but its own (all rows for a single attacker)."""
        return folds != k if len(self.attackers) > 1 else torch.ones_like(folds, dtype=torch.bool)

    def privacy_loss(self, rows: torch.Tensor, folds: torch.Tensor, base_rate: torch.Tensor) -> torch.Tensor:
        """KL from the base rate of each row's prediction by the attacker that never trained on its fold
        (BCE against the base rate minus its entropy): zero when the attackers learned nothing that carries
        over to new videos. Gradients reach the rows only (the attackers are not stepped on it)."""
        base_rate = base_rate.to(rows.device, torch.float32)
        logits = torch.zeros(len(rows), self.num_attributes, device=rows.device)
        for k, attacker in enumerate(self.attackers):
            judged = ~self._fit_rows(folds, k) if len(self.attackers) > 1 else torch.ones_like(folds, dtype=torch.bool)
            if not judged.any():
                continue
            for p in attacker.parameters():
                p.requires_grad_(False)
            logits = logits.index_put((judged.nonzero()[:, 0],), attacker(rows[judged].float()))
            for p in attacker.parameters():
                p.requires_grad_(True)
        target = base_rate.expand(len(rows), -1)
        floor = F.binary_cross_entropy(base_rate, base_rate)  # entropy of the base rate
        return F.binary_cross_entropy_with_logits(logits, target) - floor
