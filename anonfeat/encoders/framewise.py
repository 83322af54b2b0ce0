"""timm image models as video encoders: each frame encoded, then features averaged over time."""

from __future__ import annotations

import torch
from torch import nn

from anonfeat.encoders.config import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, EncoderConfig
from anonfeat.errors import AnonfeatError


def _create(model_name: str, device: str | torch.device = "cpu") -> nn.Module:
    import timm

    try:
        with torch.device(device):
            return timm.create_model(model_name, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise AnonfeatError(f"timm has no model {model_name!r}; list names with "
                                "`python -c 'import timm; print(timm.list_models())'`") from None
        raise


def timm_config(model_name: str, num_frames: int = 16) -> EncoderConfig:
    """Describe a timm image model (built on the meta device: no weights are made or fetched)."""
    model = _create(model_name, "meta")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    _, height, width = cfg.get("input_size", (3, 224, 224))
    return EncoderConfig(
        name=f"{TIMM_PREFIX}{model_name}",
        family="timm",
        embed_dim=int(model.num_features),
        depth=len(getattr(model, "blocks", [])) or 0,
        num_heads=0,
        patch_size=int(getattr(getattr(model, "patch_embed", None), "patch_size", (0,))[0] or 0),
        tubelet_size=1,
        img_size=int(height),
        num_frames=num_frames,
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        timm_model=model_name,
    )


class FramewiseEncoder(nn.Module):
    """Wraps a timm image model: (B, 3, T, H, W) -> per-frame features averaged over T."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.model = _create(cfg.timm_model)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens of every frame, concatenated over time: (B, T * N, D)."""
        b, t = x.shape[0], x.shape[2]
        tokens = self.model.forward_features(self._frames(x))
        if tokens.ndim == 4:  # CNN feature maps (B*T, D, h, w) -> (B*T, h*w, D)
            tokens = tokens.flatten(2).transpose(1, 2)
        return tokens.reshape(b, t * tokens.shape[1], tokens.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        return self.model(self._frames(x)).reshape(b, t, -1).mean(dim=1)
