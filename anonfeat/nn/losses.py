"""Loss functions of adapter and pruner training: pure functions of tensors."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from anonfeat.comm import DistContext, all_gather_with_grad


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent over a batch: row i of `view_a` and of `view_b` are positives, every other
    row of either view is a negative; cosine similarity. Low when same-video pairs are recognizable.

    The adapter MAXIMIZES it: features of two clips of one video should not identify each other.
    """
    n = view_a.shape[0]
    z = F.normalize(torch.cat([view_a, view_b]).float(), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def nt_xent_distributed(ctx: DistContext, view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.1,
                        sizes: Sequence[int] | None = None) -> torch.Tensor:
    """NT-Xent over the global batch: each rank passes its rows of both views; every rank gets the
    loss of the concatenated batch (negatives from all ranks) with gradients to its own rows.
    Equal to `nt_xent` on the single-process batch; one process: `nt_xent` itself."""
    return nt_xent(all_gather_with_grad(ctx, view_a, sizes), all_gather_with_grad(ctx, view_b, sizes), temperature)


def nt_xent_chance(batch_size: int) -> float:
    """NT-Xent when positives are no more similar than negatives: log(2N - 1)."""
    return math.log(max(2 * batch_size - 1, 1))


def latent_consistency(sanitized: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """L_LC = ||h - f_A(h)||^2 (mean squared error): keeps what no loss asks to remove."""
    return F.mse_loss(sanitized.float(), raw.float())


def attribute_correlation(features: torch.Tensor, attributes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Squared Pearson correlations between every feature dimension and every binary attribute,
    summed over dimensions and averaged over attributes (rows are samples).

    Zero exactly when the cross-covariance of features and attributes is zero, the condition under
    which no linear (least-squares) predictor beats the constant one (linear guardedness, as in
    LEACE). An attribute with one value only among the rows contributes zero.
    """
    z = features.float()
    y = attributes.float()
    z = z - z.mean(0)
    y = y - y.mean(0)
    z = z / (z.pow(2).mean(0).sqrt() + eps)
    y = y / (y.pow(2).mean(0).sqrt() + eps)
    corr = z.T @ y / len(z)  # (D, k)
    return corr.pow(2).sum(0).mean()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; gradient multiplied by -weight backward (adversarial privacy heads)."""
    return _GradientReversal.apply(x, weight)


def grl_weight(progress: float) -> float:
    """DANN schedule 2 / (1 + exp(-10 p)) - 1, p the fraction of training done: 0 -> 1."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
