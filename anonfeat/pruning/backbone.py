"""Where a pruner's backbone comes from: a registered video encoder or checkpoint (weights copied),
or a timm image ViT inflated over time (docs/method.md#tubelet-pruner; arXiv 2603.26336)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anonfeat.encoders.base import Backbone
from anonfeat.encoders.config import REGISTRY, TIMM_PREFIX, EncoderConfig
from anonfeat.encoders.families import family_of
from anonfeat.encoders.framewise import inflate_vit
from anonfeat.encoders.hub import parse_hub_id
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
    return pruner, backbone_source(encoder, checkpoint, random_init, loaded)


def backbone_source(name: str | None, checkpoint: str | Path | None, random_init: bool, loaded: nn.Module) -> dict:
    """What the pruner file records about its frozen source encoder, enough for `prune` to rebuild it:
    the name as given (None: inferred from the checkpoint), the resolved config name, the checkpoint
    path and the sha256 of its weights (random weights: the seed they were drawn from)."""
    from anonfeat.encoders import RANDOM_INIT_SEED

    return {"encoder": loaded.config.name, "name": name,
            "checkpoint": None if checkpoint is None else _checkpoint_reference(checkpoint),
            "checkpoint_sha256": loaded.checkpoint_sha256, "random_init": bool(random_init and checkpoint is None),
            "random_init_seed": RANDOM_INIT_SEED if random_init and checkpoint is None else None}


def _checkpoint_reference(checkpoint: str | Path) -> str:
    """An existing path is recorded absolute; a Hub id (`org/name[@rev]`) is recorded as given."""
    if not Path(checkpoint).exists() and parse_hub_id(str(checkpoint)) is not None:
        return str(checkpoint)
    return str(Path(checkpoint).resolve())


def load_source_encoder(backbone: dict, pruner_file: str | Path, checkpoint: str | Path | None = None,
                        device: str | torch.device = "cpu") -> nn.Module:
    """The frozen encoder a pruner was built from, as recorded in its file (`backbone_source`).

    `checkpoint` overrides where the weights are found; either way their sha256 must be the recorded
    one. Random-init sources are rebuilt from their seed. Pruner files written before the source was
    recorded in full (name and sha256 only) still resolve random and bundled weights."""
    from anonfeat.encoders import BUNDLED_WEIGHTS, RANDOM_INIT_SHA, load_encoder

    pruner_file = Path(pruner_file).name
    expected = str(backbone.get("checkpoint_sha256", ""))
    resolved = str(backbone.get("encoder", ""))
    registered = resolved in REGISTRY or resolved.startswith(TIMM_PREFIX)
    name = backbone["name"] if "name" in backbone else (resolved if registered else None)
    random_init = bool(backbone.get("random_init", expected == RANDOM_INIT_SHA))
    if checkpoint is None and not random_init:
        recorded = backbone.get("checkpoint")
        bundled = name in BUNDLED_WEIGHTS and BUNDLED_WEIGHTS[name].is_file()
        if recorded and (Path(recorded).exists() or parse_hub_id(str(recorded)) is not None):
            checkpoint = recorded
        elif not (bundled and recorded is None):
            where = recorded or "a checkpoint the file does not name"
            raise AnonfeatError(f"{pruner_file}: its source encoder {resolved} was loaded from {where} "
                                f"(sha256 {expected}), which is not found; pass --checkpoint PATH to those weights")
    if checkpoint is not None:
        encoder = load_encoder(name, checkpoint, False, device)
    else:
        encoder = load_encoder(name, None, random_init, device)
    if encoder.checkpoint_sha256 != expected:
        given = checkpoint if checkpoint is not None else "the random-init weights"
        raise AnonfeatError(f"{given}: weights have sha256 {encoder.checkpoint_sha256}, but pruner {pruner_file} "
                            f"was built from sha256 {expected}; pass --checkpoint with the weights it was trained from")
    return encoder
