"""Where a pruner's backbone comes from: a registered video encoder or checkpoint (weights copied),
or a timm image ViT inflated over time (docs/method.md#tubelet-pruner)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anonfeat.encoders.config import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, EncoderConfig
from anonfeat.errors import AnonfeatError
from anonfeat.pruning.model import PrunerConfig, TubeletPruner


def inflate_timm_vit(vit: nn.Module, name: str, num_frames: int = 16, tubelet_size: int = 2
                     ) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
    """A timm VisionTransformer as a video ViT: (config, state in TubeletPruner names).

    The 2-D patch kernel is repeated over `tubelet_size` frames and divided by it, so a static clip
    embeds exactly like its frame; the learned spatial position table is repeated over time; both
    CLS tokens start from the image CLS token (plus its position). timm's key bias is dropped: it adds
    the same amount to every logit of a query, which softmax ignores.
    """
    from timm.layers import LayerScale
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer) or vit.cls_token is None or vit.num_prefix_tokens != 1 \
            or getattr(vit, "no_embed_class", False):
        raise AnonfeatError(f"{name}: only timm VisionTransformers with one CLS token and a position table "
                            "covering it can be inflated (e.g. timm:vit_base_patch16_224)")
    block = vit.blocks[0]
    if not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity):
        raise AnonfeatError(f"{name}: ViTs with query/key norms cannot be inflated into this backbone")
    if num_frames % tubelet_size:
        raise AnonfeatError(f"--clip-len {num_frames} must be a multiple of the tubelet size {tubelet_size}")
    dim = vit.embed_dim
    patch = int(vit.patch_embed.patch_size[0])
    img = int(vit.patch_embed.img_size[0])
    layer_scale = isinstance(block.ls1, LayerScale)
    cfg_data = getattr(vit, "pretrained_cfg", {}) or {}
    final = vit.norm if isinstance(vit.norm, nn.LayerNorm) else vit.fc_norm
    cfg = EncoderConfig(
        name=f"{name}-inflated", family="videomae", embed_dim=dim, depth=len(vit.blocks),
        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim, patch_size=patch,
        tubelet_size=tubelet_size, img_size=img, num_frames=num_frames, qkv_bias=block.attn.qkv.bias is not None,
        final_norm="norm", layer_norm_eps=block.norm1.eps, init_values=1e-5 if layer_scale else 0.0,
        mean=tuple(float(v) for v in cfg_data.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg_data.get("std", IMAGENET_STD)))
    source = {k: v.detach() for k, v in vit.state_dict().items()}
    kernel = source["patch_embed.proj.weight"]
    state = {
        "patch_embed.proj.weight": kernel[:, :, None].repeat(1, 1, tubelet_size, 1, 1) / tubelet_size,
        "patch_embed.proj.bias": source["patch_embed.proj.bias"],
        "pos_embed": source["pos_embed"][:, 1:].repeat(1, num_frames // tubelet_size, 1),
        "cls_tokens": (source["cls_token"] + source["pos_embed"][:, :1]).repeat(1, 2, 1),
    }
    for key, value in source.items():
        if not key.startswith("blocks."):
            continue
        if key.endswith("attn.qkv.bias"):
            prefix = key[: -len("qkv.bias")]
            state[prefix + "q_bias"], _, state[prefix + "v_bias"] = value.chunk(3)
        else:
            state[key] = value
    if isinstance(final, nn.LayerNorm):
        state["norm.weight"], state["norm.bias"] = final.weight.detach(), final.bias.detach()
    return cfg, state


def build_pruner(encoder: str | None, checkpoint: str | Path | None, random_init: bool, *,
                 actions: tuple[str, ...], attributes: tuple[str, ...], privacy_loss: str = "attributes",
                 prune_blocks: tuple[int, ...] = (), keep_rates: tuple[float, ...] = (), lam: float = 0.5,
                 num_frames: int | None = None) -> tuple[TubeletPruner, dict]:
    """A pruner initialized from an encoder (as `anonfeat extract` loads it); returns it and a
    description of the backbone's source for the pruner file."""
    from anonfeat.encoders import load_encoder

    loaded = load_encoder(encoder, checkpoint, random_init)
    if loaded.config.family == "timm":
        cfg, state = inflate_timm_vit(loaded.model, loaded.config.timm_model, num_frames or 16)
    else:
        cfg, state = loaded.config, None
        if num_frames is not None and num_frames != cfg.num_frames:
            raise AnonfeatError(f"--clip-len {num_frames}: {cfg.name} takes clips of {cfg.num_frames} frames")
    pruner = TubeletPruner(PrunerConfig(encoder=cfg, prune_blocks=prune_blocks, keep_rates=keep_rates, lam=lam,
                                        actions=actions, attributes=attributes, privacy_loss=privacy_loss))
    if state is None:
        pruner.load_backbone(loaded)
    else:
        missing = [k for k in state if k not in pruner.state_dict()]
        if missing:
            raise AnonfeatError(f"{loaded.config.name}: cannot inflate ({', '.join(missing[:4])} have no place)")
        pruner.load_state_dict(state, strict=False)
    source = {"encoder": loaded.config.name, "checkpoint_sha256": loaded.checkpoint_sha256}
    return pruner, source
