"""Frozen video encoders: a registry of named configs and `load_encoder`.

Every encoder maps normalized clips (B, 3, T, H, W) to pooled features (B, D) through
`forward`, and to final tokens (B, N, D) through `forward_tokens`, and carries `.config`
(an EncoderConfig: clip length, tubelet, input size, mean, std) and `.checkpoint_sha256`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anonfeat.encoders.config import REGISTRY, TIMM_PREFIX, EncoderConfig, get_config
from anonfeat.errors import AnonfeatError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Registry entries whose weights ship with anonfeat (used when no --checkpoint is given).
BUNDLED_WEIGHTS = {"videomae-demo": ASSETS / "videomae-demo.safetensors"}
RANDOM_INIT_SEED = 0
RANDOM_INIT_SHA = "random-init-seed-0"

__all__ = ["EncoderConfig", "REGISTRY", "build_encoder", "get_config", "list_encoders", "load_encoder",
           "parameter_count"]


def build_encoder(cfg: EncoderConfig, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """Instantiate an encoder with seeded random weights (the same seed gives the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.family == "timm":
            from anonfeat.encoders.framewise import FramewiseEncoder

            return FramewiseEncoder(cfg)
        from anonfeat.encoders.vit import VideoViT

        return VideoViT(cfg)


def parameter_count(cfg: EncoderConfig) -> int:
    """Exact parameter count, built on the meta device so even ViT-g costs no memory."""
    with torch.device("meta"):
        if cfg.family == "timm":
            from anonfeat.encoders.framewise import _create

            model = _create(cfg.timm_model, "meta")
        else:
            from anonfeat.encoders.vit import VideoViT

            model = VideoViT(cfg)
    return sum(p.numel() for p in model.parameters())


def list_encoders() -> list[EncoderConfig]:
    return list(REGISTRY.values())


def _load_timm_checkpoint(model: nn.Module, path: Path) -> str:
    from anonfeat.encoders.checkpoints import key_list, read_checkpoint, strip_prefixes

    ckpt = read_checkpoint(path)
    state = strip_prefixes(ckpt.state_dict, drop=())  # keep head.norm & co. that timm models own
    inner = model.model
    expected = inner.state_dict()
    heads = ("fc.", "head", "classifier.")
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(heads)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AnonfeatError(f"{path}: checkpoint does not fit timm model {model.config.timm_model}: "
                            f"missing keys {key_list(missing)}; unexpected keys {key_list(unexpected)}")
    try:
        inner.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AnonfeatError(f"{path}: {str(exc).splitlines()[0]}") from None
    return ckpt.sha256


def load_encoder(name: str | None = None, checkpoint: str | Path | None = None,
                 random_init: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """Build a frozen encoder in eval mode.

    name: a registry name (see `anonfeat encoders`) or "timm:<model>"; inferred from the
        checkpoint when omitted. checkpoint: official .pth, Hugging Face dir/.safetensors or a
        plain state dict. random_init: allow seeded random weights (tests and the demo).
    """
    if checkpoint is None and not random_init and name in BUNDLED_WEIGHTS and BUNDLED_WEIGHTS[name].is_file():
        checkpoint = BUNDLED_WEIGHTS[name]
    if checkpoint is None and not random_init:
        raise AnonfeatError("no encoder weights: pass --checkpoint PATH (official .pth, Hugging Face "
                            "directory or .safetensors), or --random-init for random weights (tests/demo)")
    if checkpoint is None and name is None:
        raise AnonfeatError("--random-init needs --encoder NAME (see `anonfeat encoders`)")
    base = get_config(name) if name else None
    if checkpoint is None:
        model, sha = build_encoder(base), RANDOM_INIT_SHA
    elif base is not None and base.family == "timm":
        model = build_encoder(base)
        sha = _load_timm_checkpoint(model, Path(checkpoint))
    else:
        from anonfeat.encoders.checkpoints import infer_config, load_state, read_checkpoint, to_anonfeat_names

        ckpt = read_checkpoint(checkpoint)
        state = to_anonfeat_names(ckpt)
        cfg = infer_config(state, ckpt.hf_config, ckpt.layout, base)
        if base is not None:  # the user named the architecture: its shape facts win, the file's norms too
            cfg = base.replace(final_norm=cfg.final_norm, layer_norm_eps=cfg.layer_norm_eps,
                               init_values=cfg.init_values or base.init_values)
        model = build_encoder(cfg)
        with torch.no_grad():
            load_state(model, state, ckpt.path)
        sha = ckpt.sha256
    model.checkpoint_sha256 = sha
    model.requires_grad_(False)
    return model.eval().to(device)
