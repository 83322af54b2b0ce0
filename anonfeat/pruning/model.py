"""The tubelet pruner: a video ViT with an action CLS and a privacy CLS token that prunes
tubelets inside chosen blocks (docs/method.md; arXiv 2603.26336), built from the encoders' own layers."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch
from timm.layers import trunc_normal_
from torch import nn

from anonfeat.encoders.config import EncoderConfig
from anonfeat.encoders.families import family_of
from anonfeat.encoders.vit import Block, TubeletEmbed, sinusoid_position_table
from anonfeat.errors import AnonfeatError
from anonfeat.pruning.scoring import (NUM_CLS, default_prune_blocks, fuse_pruned, gather_tokens, keep_count,
                                      select_tubelets, tubelet_scores)

PRIVACY_LOSSES = ("attributes", "ntxent")


@dataclass(frozen=True)
class PrunerConfig:
    """Architecture, pruning schedule and label spaces of a pruner; stored in its file.

    prune_blocks are 1-based: pruning happens at the output of block b, scored with b's attention.
    """

    encoder: EncoderConfig
    prune_blocks: tuple[int, ...] = ()
    keep_rates: tuple[float, ...] = ()
    lam: float = 0.5
    actions: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    privacy_loss: str = "attributes"  # attribute BCE through gradient reversal, or static-clip NT-Xent
    projection_dim: int = 128  # privacy head width for the NT-Xent variant

    def __post_init__(self) -> None:
        depth = self.encoder.depth
        if not family_of(self.encoder).video_vit:
            raise AnonfeatError(f"{self.encoder.name}: a pruner needs a video ViT backbone (family videomae)")
        if not self.prune_blocks:
            object.__setattr__(self, "prune_blocks", default_prune_blocks(depth))
        if not self.keep_rates:
            object.__setattr__(self, "keep_rates", (0.9,) * len(self.prune_blocks))
        object.__setattr__(self, "prune_blocks", tuple(int(b) for b in self.prune_blocks))
        object.__setattr__(self, "keep_rates", tuple(float(k) for k in self.keep_rates))
        if len(self.keep_rates) == 1 and len(self.prune_blocks) > 1:
            object.__setattr__(self, "keep_rates", self.keep_rates * len(self.prune_blocks))
        if len(self.keep_rates) != len(self.prune_blocks):
            raise AnonfeatError(f"--keep {list(self.keep_rates)}: give one keep rate, or one per pruning block "
                                f"{list(self.prune_blocks)}")
        if sorted(set(self.prune_blocks)) != list(self.prune_blocks) or not all(1 <= b <= depth for b in self.prune_blocks):
            raise AnonfeatError(f"--prune-blocks {list(self.prune_blocks)}: give increasing block numbers "
                                f"between 1 and {depth}")
        if not all(0.0 < k <= 1.0 for k in self.keep_rates):
            raise AnonfeatError(f"--keep {list(self.keep_rates)}: keep rates lie in (0, 1]")
        if self.privacy_loss not in PRIVACY_LOSSES:
            raise AnonfeatError(f"--privacy-loss {self.privacy_loss!r}: choose {' or '.join(PRIVACY_LOSSES)}")

    @property
    def privacy_outputs(self) -> int:
        return len(self.attributes) if self.privacy_loss == "attributes" else self.projection_dim

    def schedule(self, keep_ratio: float | None = None) -> dict[int, float]:
        """{block: keep rate}; `keep_ratio` replaces every stage's rate (prune --keep-ratio)."""
        if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
            raise AnonfeatError(f"--keep-ratio {keep_ratio}: give a value in (0, 1]")
        return {b: keep_ratio if keep_ratio is not None else k for b, k in zip(self.prune_blocks, self.keep_rates)}

    def kept_counts(self, keep_ratio: float | None = None) -> list[int]:
        """Tubelets left after each pruning stage."""
        n, counts = self.encoder.num_tokens, []
        for rate in self.schedule(keep_ratio).values():
            n = keep_count(n, rate)
            counts.append(n)
        return counts

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["encoder"] = self.encoder.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "PrunerConfig":
        values = dict(data)
        values["encoder"] = EncoderConfig.from_dict(values["encoder"])
        for key in ("prune_blocks", "keep_rates", "actions", "attributes"):
            values[key] = tuple(values.get(key, ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class PrunerOutput:
    """Per clip: the action and privacy CLS features, the mean of the kept tubelet tokens, and for
    each pruning stage the kept tubelet positions (B, k) and scores (B, N) on the full tubelet grid
    (NaN where a tubelet was already pruned)."""

    action: torch.Tensor
    privacy: torch.Tensor
    pooled: torch.Tensor
    kept: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)


class TubeletPruner(nn.Module):
    """Tubelet embedding + position table + encoder blocks, with two CLS tokens in front."""

    def __init__(self, cfg: PrunerConfig):
        super().__init__()
        enc = cfg.encoder
        self.config = cfg
        self.patch_embed = TubeletEmbed(enc)
        # A buffer, saved with the pruner: sinusoids for VideoMAE backbones, learned tables for inflated ViTs.
        self.register_buffer("pos_embed", sinusoid_position_table(enc.num_tokens, enc.embed_dim))
        self.cls_tokens = nn.Parameter(torch.zeros(1, NUM_CLS, enc.embed_dim))
        trunc_normal_(self.cls_tokens, std=0.02)
        self.blocks = nn.ModuleList(Block(enc) for _ in range(enc.depth))
        self.norm = nn.LayerNorm(enc.embed_dim, eps=enc.layer_norm_eps)
        self.action_head = nn.Linear(enc.embed_dim, max(len(cfg.actions), 1))
        self.privacy_head = nn.Linear(enc.embed_dim, max(cfg.privacy_outputs, 1))
        for head in (self.action_head, self.privacy_head):
            trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def load_backbone(self, encoder: nn.Module) -> None:
        """Copy tubelet embedding, position table, blocks and final norm of a VideoViT encoder."""
        with torch.no_grad():
            self.patch_embed.load_state_dict(encoder.patch_embed.state_dict())
            self.pos_embed.copy_(encoder.pos_embed)
            self.blocks.load_state_dict(encoder.blocks.state_dict())
            norm = encoder.fc_norm if getattr(encoder, "fc_norm", None) is not None else encoder.norm
            if isinstance(norm, nn.LayerNorm):
                self.norm.load_state_dict(norm.state_dict())

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(clips)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            c = self.config.encoder
            raise ValueError(f"clip of {'x'.join(map(str, clips.shape[2:]))} gives {tokens.shape[1]} tubelets; "
                             f"this pruner expects {c.num_frames}x{c.img_size}x{c.img_size}")
        return tokens + self.pos_embed.to(tokens.dtype)

    def forward(self, clips: torch.Tensor, keep_ratio: float | None = None) -> PrunerOutput:
        """Normalized clips (B, 3, T, H, W) -> PrunerOutput; `keep_ratio` overrides the schedule."""
        tubelets = self.embed(clips)
        b, n_total, _ = tubelets.shape
        schedule = self.config.schedule(keep_ratio)
        tokens = torch.cat([self.cls_tokens.expand(b, -1, -1).to(tubelets.dtype), tubelets], dim=1)
        positions = torch.arange(n_total, device=clips.device).expand(b, -1)  # grid index of each tubelet token
        kept_stages, score_stages = [], []
        for number, block in enumerate(self.blocks, start=1):
            if number not in schedule:
                tokens = block(tokens)
                continue
            tokens, attention = block.forward_with_attention(tokens, query_rows=NUM_CLS)
            n = positions.shape[1]
            scores, a_act, _ = tubelet_scores(attention, n, self.config.lam)
            full = torch.full((b, n_total), float("nan"), device=clips.device)
            score_stages.append(full.scatter(1, positions, scores))
            k = keep_count(n, schedule[number])
            if k < n:
                keep, drop = select_tubelets(scores, k)
                body = tokens[:, NUM_CLS:NUM_CLS + n]
                summary = fuse_pruned(body, a_act, drop)
                if n < n_total:  # an earlier stage pruned: one fused token for all, summaries accumulate
                    summary = summary + tokens[:, -1:]
                tokens = torch.cat([tokens[:, :NUM_CLS], gather_tokens(body, keep), summary], dim=1)
                positions = positions.gather(1, keep)
            kept_stages.append(positions)
        tokens = self.norm(tokens)
        kept_tokens = tokens[:, NUM_CLS:NUM_CLS + positions.shape[1]]
        return PrunerOutput(action=tokens[:, 0], privacy=tokens[:, 1], pooled=kept_tokens.mean(dim=1),
                            kept=kept_stages, scores=score_stages)
