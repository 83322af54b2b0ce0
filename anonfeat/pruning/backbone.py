"""Where a pruner's backbone comes from: a registered video encoder or checkpoint (weights copied),
or a timm image ViT inflated over time (the token-pruning paper, arXiv 2603.26336)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anonfeat.encoders.base import Backbone
from anonfeat.encoders.config import EncoderConfig
from anonfeat.encoders.families import family_of
from anonfeat.encoders.framewise import inflate_vit
from anonfeat.errors import AnonfeatError
from anonfeat.pruning.model import PrunerConfig, TubeletPruner
from anonfeat.pruning.scoring import NUM_CLS


def inflate_timm_vit(vit: nn.Module, name: str, num_frames: int = 16, tubelet_size: int = 2
                     ) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
    """A timm VisionTransformer as a pruner backbone: (config, state in TubeletPruner names), both CLS
    tokens starting from the image CLS token (plus its position); see encoders.framewise.inflate_vit."""
    backbone = inflate_vit(vit, name, num_frames, tubelet_size)
    return backbone.config, _pruner_state(backbone)


def _pruner_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    state = dict(backbone.state)
    if backbone.cls_token is not None:
        state["cls_tokens"] = backbone.cls_token.repeat(1, NUM_CLS, 1)
    return state


def build_pruner(encoder: str | None, checkpoint: str | Path | None, random_init: bool, *,
                 actions: tuple[str, ...], attributes: tuple[str, ...], privacy_loss: str = "attributes",
                 prune_blocks: tuple[int, ...] = (), keep_rates: tuple[float, ...] = (), lam: float = 0.5,
                 num_frames: int | None = None) -> tuple[TubeletPruner, dict]:
    """A pruner initialized from an encoder (as `anonfeat extract` loads it); returns it and a
    description of the backbone's source for the pruner file."""
    from anonfeat.encoders import load_encoder

    loaded = load_encoder(encoder, checkpoint, random_init)
    backbone = family_of(loaded.config).to_backbone(loaded, num_frames)
    pruner = TubeletPruner(PrunerConfig(encoder=backbone.config, prune_blocks=prune_blocks, keep_rates=keep_rates,
                                        lam=lam, actions=actions, attributes=attributes, privacy_loss=privacy_loss))
    state = _pruner_state(backbone)
    missing = [k for k in state if k not in pruner.state_dict()]
    if missing:
        raise AnonfeatError(f"{loaded.config.name}: cannot start a pruner from it ({', '.join(missing[:4])} "
                            "have no place)")
    with torch.no_grad():
        pruner.load_state_dict(state, strict=False)
    source = {"encoder": loaded.config.name, "checkpoint_sha256": loaded.checkpoint_sha256}
    return pruner, source
