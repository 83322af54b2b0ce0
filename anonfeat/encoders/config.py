"""Encoder configurations and the registry of named ones (timm-style)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an encoder and feed it correctly.

    `family` names the EncoderFamily (anonfeat.encoders.families) that builds and feeds it:
    "videomae" (a video ViT with tubelet embedding) or "timm" (a timm image model applied frame
    by frame, then averaged over time). `interpolation`, `crop_pct` and `crop_mode` say how frames
    are resized before the centre crop to `img_size` (timm's data config names and meanings).
    """

    name: str
    family: str = "videomae"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    img_size: int = 224
    num_frames: int = 16
    qkv_bias: bool = True
    final_norm: str = "fc_norm"  # "fc_norm": norm after mean pooling; "norm": norm tokens; "none"
    layer_norm_eps: float = 1e-6
    init_values: float = 0.0  # layer scale (gamma_1/gamma_2); 0 means none
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    timm_model: str | None = None  # the timm model name (family "timm")
    interpolation: str = "bilinear"
    crop_pct: float = 1.0  # the short side is resized to floor(img_size / crop_pct), then centre-cropped
    crop_mode: str = "center"  # "center": keep the aspect ratio; "squash": resize both sides

    @property
    def clip_len(self) -> int:
        return self.num_frames

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size)

    @property
    def tubelet(self) -> tuple[int, int, int]:
        """(time, height, width) extent of one token."""
        return (self.tubelet_size, self.patch_size, self.patch_size)

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w) of one clip."""
        return (
            self.num_frames // self.tubelet_size,
            self.img_size // self.patch_size,
            self.img_size // self.patch_size,
        )

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "EncoderConfig":
        return cls.from_dict(json.loads(text))


def _videomae(name: str, dim: int, depth: int, heads: int, **kw) -> EncoderConfig:
    return EncoderConfig(name=name, embed_dim=dim, depth=depth, num_heads=heads, **kw)


REGISTRY: dict[str, EncoderConfig] = {
    cfg.name: cfg
    for cfg in (
        _videomae("videomae-tiny", 192, 4, 3, img_size=112),
        # Trained on `anonfeat synth` data by examples/train_demo_encoder.py; weights ship with the package.
        _videomae("videomae-demo", 128, 4, 4, img_size=64),
        _videomae("videomae-s", 384, 12, 6),
        _videomae("videomae-b", 768, 12, 12),
        _videomae("videomae-l", 1024, 24, 16),
        _videomae("videomae-h", 1280, 32, 16),
        _videomae("videomaev2-g", 1408, 40, 16, patch_size=14, mlp_ratio=48 / 11),
    )
}

TIMM_PREFIX = "timm:"
