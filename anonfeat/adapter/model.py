"""The Anonymizing Adapter Module: transformer blocks over one video's sequence of clip features."""

from __future__ import annotations

import torch
from torch import nn

from anonfeat.encoders.config import EncoderConfig
from anonfeat.encoders.vit import Block


class AnonymizingAdapter(nn.Module):
    """f_A: (B, T, D) clip features -> (B, T, D), attending only across the clips of each video.

    Features are standardized with training statistics first (raw encoder features share a large
    common component that makes cosine losses meaningless), passed through pre-norm residual
    blocks whose output projections start at zero, and de-standardized: the adapter is exactly
    the identity at initialization. A padding mask keeps each video independent of its batch.
    """

    def __init__(self, dim: int, depth: int = 3, num_heads: int = 8, mlp_ratio: float = 2.0):
        super().__init__()
        self.dim, self.depth, self.num_heads, self.mlp_ratio = dim, depth, num_heads, mlp_ratio
        block_cfg = EncoderConfig(name="aam", embed_dim=dim, depth=depth, num_heads=num_heads,
                                  mlp_ratio=mlp_ratio, qkv_bias=True)
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(depth))
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        for block in self.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feature_mean) / self.feature_std

    def forward_standardized(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The blocks on standardized features (losses are computed in this space)."""
        mask = None if valid is None else valid[:, None, None, :]  # keys only: (B, 1, 1, T)
        for block in self.blocks:
            z = block(z, mask)
        return z

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (T, D) or (B, T, D) raw features; valid: (B, T) bool, False on padding."""
        squeeze = x.ndim == 2
        if squeeze:
            x = x[None]
        z = self.standardize(x)
        # A residual on the raw scale, so zero-initialized blocks give x back bit for bit.
        out = x + (self.forward_standardized(z, valid) - z) * self.feature_std
        return out[0] if squeeze else out

    def architecture(self) -> dict:
        return {"kind": "aam", "dim": self.dim, "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (T_i, D) sequences -> padded (B, T_max, D) and a (B, T_max) valid mask."""
    lengths = torch.tensor([len(s) for s in sequences])
    padded = nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    valid = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, valid


@torch.no_grad()
def sanitize_features(adapter: nn.Module, features: torch.Tensor | list[torch.Tensor],
                      static: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Apply a trained adapter (an `AnonymizingAdapter` or any adapter kind taking the same (B, T, D)
    input and valid mask): a (T, D) video, a (B, T, D) batch, or a list of (T_i, D) videos.

    static=True treats every row as its own one-clip sequence (static clips are single frames
    repeated, each sanitized alone, as in training).
    """
    adapter.eval()
    device = next(adapter.buffers()).device
    if isinstance(features, list):
        if not features:
            return []
        if static:
            return [sanitize_features(adapter, f, static=True) for f in features]
        padded, valid = pad_sequences([f.float() for f in features])
        out = adapter(padded.to(device), valid.to(device)).cpu()
        return [out[i, :len(f)] for i, f in enumerate(features)]
    x = features.float().to(device)
    if static:
        return adapter(x.reshape(-1, 1, x.shape[-1])).reshape(x.shape).cpu()
    return adapter(x).cpu()
