"""timm image models as video encoders: each frame encoded, then features averaged over time.

Weights load through timm itself (`pretrained_cfg_overlay=dict(file=...)`, so timm's own
checkpoint filters apply), and frames are fed as timm's data config says (interpolation,
crop_pct, mean, std: `timm.data.resolve_model_data_config`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anonfeat.encoders.base import RANDOM_INIT, Backbone, CheckpointIdentity, Encoder
from anonfeat.encoders.config import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, EncoderConfig
from anonfeat.errors import AnonfeatError

PRETRAINED = "pretrained"  # --checkpoint value: the weights timm's pretrained_cfg points at


def create_timm(model_name: str, device: str | torch.device = "cpu", **kwargs) -> nn.Module:
    """timm.create_model without a classifier; an unknown name is one clear error."""
    import timm

    try:
        with torch.device(device):
            return timm.create_model(model_name, num_classes=0, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise AnonfeatError(f"timm has no model {model_name!r}; list names with "
                                "`python -c 'import timm; print(timm.list_models())'`") from None
        raise


def timm_config(model_name: str, num_frames: int = 16) -> EncoderConfig:
    """Describe a timm image model (built on the meta device: no weights are made or fetched)."""
    import timm.data

    model = create_timm(model_name, "meta", pretrained=False)
    data = timm.data.resolve_model_data_config(model)
    _, height, width = data.get("input_size", (3, 224, 224))
    crop_mode = data.get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        raise AnonfeatError(f"timm:{model_name}: crop_mode {crop_mode!r} is not supported (center or squash)")
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
        mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
        timm_model=model_name,
        interpolation=str(data.get("interpolation", "bicubic")),
        crop_pct=float(data.get("crop_pct") or 0.875),
        crop_mode=crop_mode,
    )


def load_timm_weights(cfg: EncoderConfig, file: Path) -> nn.Module:
    """timm's model with weights from `file`, loaded by timm (its checkpoint filters, its head
    handling); any failure is one line naming the file."""
    try:
        return create_timm(cfg.timm_model, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    except AnonfeatError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, key/shape mismatches, damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        refused = "refused: " if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__ else ""
        raise AnonfeatError(f"{file}: {refused}timm could not load it into {cfg.timm_model} ({first}); "
                            "pass a state dict of this model (head weights are dropped)") from None


def timm_pretrained_file(cfg: EncoderConfig) -> tuple[Path, str]:
    """(local weight file, Hub id) of timm's own pretrained source for `cfg` (its pretrained_cfg's
    hf_hub_id and hf_hub_filename), through the Hugging Face cache: cached first, then downloaded."""
    from anonfeat.encoders.hub import HubId, resolve_hub_id, split_revision, weights_in

    pretrained = dict(getattr(create_timm(cfg.timm_model, "meta", pretrained=False), "pretrained_cfg", {}) or {})
    hub = pretrained.get("hf_hub_id")
    if not hub:
        raise AnonfeatError(f"{cfg.name}: timm lists no Hugging Face weights for this model; download its "
                            "weights yourself and pass --checkpoint FILE")
    filename = pretrained.get("hf_hub_filename")
    folder = resolve_hub_id(HubId(*split_revision(hub)), filename=filename)
    weights = folder / filename if filename else weights_in(folder)
    if weights is None or not weights.is_file():
        raise AnonfeatError(f"{hub}: no weight file in {folder}")
    return weights, hub


def inflate_vit(vit: nn.Module, name: str, num_frames: int = 16, tubelet_size: int = 2) -> Backbone:
    """A timm VisionTransformer as a video ViT backbone.

    The 2-D patch kernel is repeated over `tubelet_size` frames and divided by it, so a static clip
    embeds exactly like its frame; the learned spatial position table is repeated over time; the CLS
    token (plus its position) is handed on for the caller's CLS tokens. timm's key bias is dropped: it
    adds the same amount to every logit of a query, which softmax ignores.
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
    cfg_data = getattr(vit, "pretrained_cfg", {}) or {}
    final = vit.norm if isinstance(vit.norm, nn.LayerNorm) else vit.fc_norm
    cfg = EncoderConfig(
        name=f"{name}-inflated", family="videomae", embed_dim=dim, depth=len(vit.blocks),
        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
        patch_size=int(vit.patch_embed.patch_size[0]), tubelet_size=tubelet_size,
        img_size=int(vit.patch_embed.img_size[0]), num_frames=num_frames,
        qkv_bias=block.attn.qkv.bias is not None, final_norm="norm", layer_norm_eps=block.norm1.eps,
        init_values=1e-5 if isinstance(block.ls1, LayerScale) else 0.0,
        mean=tuple(float(v) for v in cfg_data.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg_data.get("std", IMAGENET_STD)))
    source = {k: v.detach() for k, v in vit.state_dict().items()}
    kernel = source["patch_embed.proj.weight"]
    state = {
        "patch_embed.proj.weight": kernel[:, :, None].repeat(1, 1, tubelet_size, 1, 1) / tubelet_size,
        "patch_embed.proj.bias": source["patch_embed.proj.bias"],
        "pos_embed": source["pos_embed"][:, 1:].repeat(1, num_frames // tubelet_size, 1),
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
    return Backbone(config=cfg, state=state, cls_token=source["cls_token"] + source["pos_embed"][:, :1])


class FramewiseEncoder(Encoder):
    """Wraps a timm image model: (B, 3, T, H, W) -> per-frame features averaged over T."""

    def __init__(self, cfg: EncoderConfig, model: nn.Module | None = None,
                 checkpoint: CheckpointIdentity = RANDOM_INIT):
        super().__init__(cfg, checkpoint)
        self.model = model if model is not None else create_timm(cfg.timm_model, pretrained=False)

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
