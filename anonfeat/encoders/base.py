"""What every encoder module is: its config and the identity of its weights, as declared fields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anonfeat.encoders.config import EncoderConfig

RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class CheckpointIdentity:
    """Which weights an encoder holds.

    sha256: the weight file's digest (what stores, adapters and pruners compare), or a label for
    weights without a file ("random-init-seed-0"). source: what the user asked for: a path, a
    Hugging Face id ("org/name@revision"), "pretrained" (timm's own source) or "random-init".
    """

    sha256: str
    source: str


def random_init(seed: int = RANDOM_INIT_SEED) -> CheckpointIdentity:
    """The identity of seeded random weights (tests and demos)."""
    return CheckpointIdentity(sha256=f"random-init-seed-{seed}", source="random-init")


RANDOM_INIT = random_init()


@dataclass
class Backbone:
    """An encoder as the starting point of a video ViT (the tubelet pruner): the config of a
    VideoViT, weights in VideoViT's names (pos_embed included), and a CLS token to start from
    when the source model has one (image ViTs: (1, 1, D))."""

    config: EncoderConfig
    state: dict[str, torch.Tensor]
    cls_token: torch.Tensor | None = None


class Encoder(nn.Module):
    """A frozen video encoder: normalized clips (B, 3, T, H, W) -> pooled features (B, D) through
    `forward`, final tokens (B, N, D) through `forward_tokens`."""

    config: EncoderConfig
    checkpoint: CheckpointIdentity

    def __init__(self, config: EncoderConfig, checkpoint: CheckpointIdentity = RANDOM_INIT):
        super().__init__()
        self.config = config
        self.checkpoint = checkpoint
        self.embed_dim = config.embed_dim

    @property
    def checkpoint_sha256(self) -> str:
        return self.checkpoint.sha256

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
