"""Frozen video encoders: a registry of named configs, encoder families, and `load_encoder`.

Every encoder maps normalized clips (B, 3, T, H, W) to pooled features (B, D) through
`forward`, and to final tokens (B, N, D) through `forward_tokens`, and carries `.config`
(an EncoderConfig: clip length, tubelet, input size, mean, std, resize) and `.checkpoint`
(a CheckpointIdentity: sha256 and source; `.checkpoint_sha256` for short).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anonfeat.encoders.base import RANDOM_INIT_SEED, CheckpointIdentity, Encoder
from anonfeat.encoders.config import REGISTRY, EncoderConfig
from anonfeat.encoders.families import FAMILIES, family_for_name, family_of, get_config
from anonfeat.errors import AnonfeatError
from anonfeat.video.resize import PilResize

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Registry entries whose weights ship with anonfeat (used when no --checkpoint is given).
BUNDLED_WEIGHTS = {"videomae-demo": ASSETS / "videomae-demo.safetensors"}
RANDOM_INIT_SHA = f"random-init-seed-{RANDOM_INIT_SEED}"

__all__ = ["CheckpointIdentity", "Encoder", "EncoderConfig", "REGISTRY", "build_encoder", "frame_resize",
           "get_config", "list_encoders", "load_encoder", "parameter_count"]


def build_encoder(cfg: EncoderConfig, seed: int = RANDOM_INIT_SEED) -> Encoder:
    """Instantiate an encoder with seeded random weights (the same seed gives the same weights)."""
    return family_of(cfg).build(cfg, seed)


def parameter_count(cfg: EncoderConfig) -> int:
    """Exact parameter count, built on the meta device so even ViT-g costs no memory."""
    return family_of(cfg).parameter_count(cfg)


def frame_resize(cfg: EncoderConfig, resize: str = "short") -> PilResize | None:
    """How frames are resized for `cfg` (None: the decoder's own scaling); see EncoderFamily."""
    return family_of(cfg).frame_resize(cfg, resize)


def list_encoders() -> list[EncoderConfig]:
    return [cfg for family in FAMILIES.values() for cfg in family.registered()]


def load_encoder(name: str | None = None, checkpoint: str | Path | None = None,
                 random_init: bool = False, device: str | torch.device = "cpu") -> Encoder:
    """Build a frozen encoder in eval mode.

    name: a registry name (see `anonfeat encoders`) or "timm:<model>"; inferred from the
        checkpoint when omitted. checkpoint: official .pth, Hugging Face dir/.safetensors,
        mmaction2 .pth, a plain state dict, or a Hugging Face model id ("org/name[@revision]",
        from the local cache first); for timm models a weights file or "pretrained" (timm's own
        weights). random_init: allow seeded random weights (tests and the demo).
    """
    if checkpoint is None and not random_init and name in BUNDLED_WEIGHTS and BUNDLED_WEIGHTS[name].is_file():
        checkpoint = BUNDLED_WEIGHTS[name]
    if checkpoint is None and not random_init:
        raise AnonfeatError("no encoder weights: pass --checkpoint PATH or a Hugging Face id org/name (official "
                            ".pth, Hugging Face directory or .safetensors), or --random-init for random "
                            "weights (tests/demo)")
    if checkpoint is None and name is None:
        raise AnonfeatError("--random-init needs --encoder NAME (see `anonfeat encoders`)")
    family = family_for_name(name) if name else FAMILIES["videomae"]  # checkpoints alone are video ViTs
    base = family.describe(name) if name else None
    model = family.build(base) if checkpoint is None else family.load(base, str(checkpoint))
    model.requires_grad_(False)
    return model.eval().to(device)
