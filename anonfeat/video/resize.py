"""Resizing frames as torchvision does on PIL images, for encoders whose users feed them that way.

timm's evaluation transform (`timm.data.create_transform(**resolve_model_data_config(model))`)
is Resize(floor(size / crop_pct), interpolation) on the short side, CenterCrop(size), ToTensor,
Normalize. `PilResize` does the first two on decoded RGB frames with the same sizes, offsets and
PIL filters, so the normalized clips (anonfeat.video.stream.to_clips) equal timm's tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# timm's interpolation names -> PIL filters (timm.data.transforms.str_to_interp_mode).
_FILTERS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class PilResize:
    """Short side (or both sides, squash) to floor(size / crop_pct), then a centre crop to size x size."""

    size: int
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    squash: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r}: one of {', '.join(_FILTERS)}")

    @property
    def scale_size(self) -> int:
        return math.floor(self.size / self.crop_pct)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize (torchvision's rule: the long side is truncated)."""
        if self.squash:
            return self.scale_size, self.scale_size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.scale_size * long / short)
        return (new_long, self.scale_size) if width <= height else (self.scale_size, new_long)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One (h, w, 3) uint8 frame -> (size, size, 3) uint8."""
        from PIL import Image

        height, width = frame.shape[:2]
        new_h, new_w = self.resized_shape(height, width)
        image = Image.fromarray(frame)
        if (new_h, new_w) != (height, width):
            image = image.resize((new_w, new_h), getattr(Image.Resampling, self.interpolation.upper()))
        if new_h < self.size or new_w < self.size:  # torchvision pads with zeros before cropping
            canvas = Image.new("RGB", (max(new_w, self.size), max(new_h, self.size)))
            canvas.paste(image, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
            image, new_w, new_h = canvas, canvas.width, canvas.height
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return np.asarray(image.crop((left, top, left + self.size, top + self.size)))
