"""Tubelet scoring and selection: pure functions of attention maps (docs/method.md#scoring-and-selection).

Token layout inside a pruner: [action CLS, privacy CLS, tubelet_1 .. tubelet_n, (fused)].
"""

from __future__ import annotations

import math

import torch

NUM_CLS = 2  # index 0: action CLS, index 1: privacy CLS


def keep_count(n_tubelets: int, keep_rate: float) -> int:
    """k = ceil(keep_rate * n), at least 1; rounding guards against 0.9 * 10 = 9.000000000000002."""
    return max(1, min(n_tubelets, math.ceil(round(keep_rate * n_tubelets, 6))))


def tubelet_scores(cls_attention: torch.Tensor, n_tubelets: int, lam: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores s = a_act - lam * a_priv of the tubelet tokens.

    cls_attention: (B, heads, 2, L) post-softmax attention rows of the two CLS queries over all L
    tokens. Heads are averaged; CLS columns (and the fused token after the tubelets) are excluded
    and each row renormalized to sum 1 over the tubelets. Returns (s, a_act, a_priv), each (B, n).
    """
    rows = cls_attention.float().mean(dim=1)[:, :, NUM_CLS:NUM_CLS + n_tubelets]
    rows = rows / rows.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    a_act, a_priv = rows[:, 0], rows[:, 1]
    return a_act - lam * a_priv, a_act, a_priv


def select_tubelets(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, k) of the top-k scores in ascending position order (token order is kept, so
    keeping everything is the identity), and the positions (B, n - k) of the pruned ones."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    return order[:, :k].sort(dim=-1).values, order[:, k:]


def gather_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """tokens (B, n, D) at positions (B, m) -> (B, m, D)."""
    return tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))


def fuse_pruned(tokens: torch.Tensor, a_act: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """One token summarizing the pruned ones, sum_j a_act[j] * x_j (EViT-style): (B, 1, D)."""
    weights = a_act.gather(1, pruned).to(tokens.dtype)
    return (weights[..., None] * gather_tokens(tokens, pruned)).sum(dim=1, keepdim=True)


def default_prune_blocks(depth: int) -> tuple[int, ...]:
    """After blocks 3, 6 and 9 of a 12-block ViT; the same quarters of any other depth (1-based)."""
    return tuple(sorted({min(depth, max(1, round(depth * q / 4))) for q in (1, 2, 3)}))
