"""A VideoMAE-style video ViT built from timm layers, with attention through SDPA.

Parameter names follow the official VideoMAE code (patch_embed.proj, blocks.N.attn.qkv,
q_bias/v_bias, mlp.fc1, ...) so official checkpoints load with a near-identity key map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import nn

from anonfeat.encoders.base import RANDOM_INIT, CheckpointIdentity, Encoder
from anonfeat.encoders.config import EncoderConfig


def sinusoid_position_table(n_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoid position table, shape (1, n_positions, dim).

    angle[p, i] = p / 10000^(2 * (i // 2) / dim); sin on even channels, cos on odd ones.
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    channel = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = position / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()[None]


def tubelet_rows(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W), sizes divisible by the (t, p, q) kernel -> (B, N, C*t*p*q): one row per tubelet,
    in the tubelet embedding's token order (time, height, width) and its kernel's weight order."""
    b, c, frames, height, width = x.shape
    t, p, q = kernel
    rows = x.reshape(b, c, frames // t, t, height // p, p, width // q, q).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return rows.reshape(b, (frames // t) * (height // p) * (width // q), c * t * p * q)


class TubeletEmbed(nn.Module):
    """Non-overlapping (t, p, p) tubelets -> tokens, with a strided Conv3d's weights (checkpoint layout).

    On CUDA the convolution runs as what it is, one matrix product over the tubelets: cuDNN's bf16
    Conv3d took 15% of videomae-b's time on an H200 for 1% of its FLOPs (25 TFLOP/s). On the CPU
    the convolution itself is as fast or faster (no rearranging copy).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=cfg.tubelet, stride=cfg.tubelet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, N, D)
        divisible = all(size % k == 0 for size, k in zip(x.shape[2:], self.proj.kernel_size))
        if x.is_cuda and divisible:
            return self.as_matmul(x)
        return self.proj(x).flatten(2).transpose(1, 2)

    def as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The same tokens (sizes divisible by the tubelet): each tubelet a row, times the kernel."""
        rows = tubelet_rows(x, self.proj.kernel_size)
        return F.linear(rows, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's q/v-only biases (k bias is zero)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        b, n, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                query_rows: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend; with `query_rows=r`, also return the post-softmax attention of the first r
        queries (B, heads, r, N), computed explicitly only for those rows (pruning scores)."""
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(out.transpose(1, 2).reshape(x.shape))
        if not query_rows:
            return out
        logits = (q[:, :, :query_rows] * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits + attn_mask[..., :query_rows, :] if attn_mask.dtype != torch.bool else \
                logits.masked_fill(~attn_mask[..., :query_rows, :], float("-inf"))
        return out, logits.softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, cfg: EncoderConfig, drop_path: float = 0.0):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, hidden_features=cfg.mlp_hidden, act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward_with_attention(self, x: torch.Tensor, query_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like forward, also returning the attention rows of the first `query_rows` tokens."""
        attended, attn = self.attn(self.norm1(x), query_rows=query_rows)
        x = x + self.drop_path(self.ls1(attended))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x)))), attn


class VideoViT(Encoder):
    """Video ViT encoder: (B, 3, T, H, W) normalized clips -> tokens (B, N, D) / pooled (B, D)."""

    def __init__(self, cfg: EncoderConfig, drop_path_rate: float = 0.0, checkpoint: CheckpointIdentity = RANDOM_INIT):
        super().__init__(cfg, checkpoint)
        self.patch_embed = TubeletEmbed(cfg)
        self.register_buffer("pos_embed", sinusoid_position_table(cfg.num_tokens, cfg.embed_dim),
                             persistent=False)
        rates = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        # Fine-tuned checkpoints norm after mean pooling (fc_norm); pretrained ones norm the tokens;
        # Hugging Face's mean-pooling VideoMAEModel has neither.
        eps = cfg.layer_norm_eps
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=eps) if cfg.final_norm == "norm" else nn.Identity()
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=eps) if cfg.final_norm == "fc_norm" else None
        self.apply(_init_weights)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clips -> position-embedded tokens (B, N, D)."""
        tokens = self.patch_embed(x)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            t, h, w = x.shape[2:]
            c = self.config
            raise ValueError(f"clip of {t}x{h}x{w} gives {tokens.shape[1]} tokens; this encoder expects "
                             f"{c.num_frames}x{c.img_size}x{c.img_size}")
        return tokens + self.pos_embed.to(tokens.dtype)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens.mean(dim=1)
        return self.fc_norm(pooled) if self.fc_norm is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        fan_in = math.prod(module.weight.shape[1:])
        nn.init.trunc_normal_(module.weight, std=1 / math.sqrt(fan_in))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
