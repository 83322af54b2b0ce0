"""Reading encoder checkpoints in the layouts users bring, into anonfeat's parameter names.

Supported: official VideoMAE / VideoMAEv2 .pth (weights under "model"/"module", optional
"encoder."/"backbone." prefixes, q_bias/v_bias), Hugging Face transformers' VideoMAEModel,
VideoMAEForVideoClassification and VideoMAEForPreTraining (a directory with config.json, a Hub
snapshot folder or id, or a .safetensors/.bin file), mmaction2's VisionTransformer
(mmaction/models/backbones/vit_mae.py: patch_embed.projection, mlp.layers.0.0 / mlp.layers.1,
under "state_dict" with "backbone." and "cls_head."), and plain state dicts. Every .pth goes
through torch.load(weights_only=True), so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.encoders.config import REGISTRY, EncoderConfig
from anonfeat.encoders.hub import WEIGHT_NAMES, parse_hub_id, resolve_hub_id, weights_in
from anonfeat.errors import AnonfeatError

_WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
_DROP_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "head.", "classifier.",
                  "fc_dropout.", "pixel_values", "cls_head.", "data_preprocessor.")


@dataclass
class Checkpoint:
    """A state dict in anonfeat's names, with what the file said about its architecture."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    sha256: str
    hf_config: dict | None = None
    layout: str = "official"  # "official", "huggingface" or "mmaction"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _load_tensor_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise AnonfeatError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AnonfeatError(
            f"{path}: refused: the checkpoint holds objects other than tensors ({str(exc).splitlines()[0]}); "
            "only weights are loaded (torch.load weights_only=True). Re-save it as a plain state dict"
        ) from None
    except Exception as exc:  # a damaged pickle can raise almost anything (IndexError, ValueError, ...)
        raise AnonfeatError(f"{path}: not a readable PyTorch checkpoint ({exc}); "
                            "pass a .pth/.safetensors file or a Hugging Face directory") from None


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local path for `checkpoint`: itself when it exists or is not a Hub id, else the Hugging
    Face cache snapshot folder of the id (downloaded when needed, see anonfeat.encoders.hub)."""
    hub_id = parse_hub_id(str(checkpoint))
    return Path(checkpoint) if hub_id is None else resolve_hub_id(hub_id)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file or Hugging Face directory; keys are not renamed yet."""
    path = Path(path)
    hf_config = None
    if path.is_dir():
        weights = weights_in(path)
        if weights is None:
            raise AnonfeatError(f"{path}: directory holds no {' or '.join(WEIGHT_NAMES)} (nor a single "
                                ".safetensors/.pth file); pass a Hugging Face model directory or a weights file")
        config_file = path / "config.json"
    elif path.is_file():
        weights, config_file = path, path.with_name("config.json")
    else:
        raise AnonfeatError(f"{path}: no such checkpoint file or directory (nor a Hugging Face id: org/name"
                            "[@revision])")
    if config_file.is_file():
        try:
            hf_config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise AnonfeatError(f"{config_file}: invalid JSON ({exc})") from None
    raw = _load_tensor_file(weights)
    for key in _WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise AnonfeatError(f"{weights}: expected a state dict of tensors (optionally under "
                            f"{'/'.join(_WRAPPER_KEYS)})")
    return Checkpoint(path=path, state_dict=raw, sha256=file_sha256(weights), hf_config=hf_config)


def _strip_prefixes(state: dict[str, torch.Tensor],
                    drop: tuple[str, ...] = _DROP_PREFIXES) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes and the parts that are not the encoder (decoder, heads)."""
    keys = list(state)
    for prefix in ("module.", "videomae.", "backbone.", "encoder."):
        if prefix == "encoder." and any(k.startswith("encoder.layer.") for k in keys):
            continue  # Hugging Face's own "encoder.layer.N" is not a wrapper prefix
        if any(k.startswith(prefix) for k in keys):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
            keys = list(state)
    return {k: v for k, v in state.items() if not k.startswith(drop)}


_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(q_bias|v_bias)$", r"blocks.\1.attn.\2"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
]
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def _from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF VideoMAE names -> official names; query/key/value rows stacked into one qkv matrix."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _HF_QKV.match(key)
        if match:
            layer, part, kind = match.groups()
            if kind == "bias":  # HF's plain biases (transformers 5 names q_bias/v_bias so in memory)
                name = "k_linear_bias" if part == "key" else f"{part[0]}_bias"
                out[f"blocks.{layer}.attn.{name}"] = value
            else:
                qkv.setdefault(layer, {})[part] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            new, count = re.subn(pattern, replacement, key)
            if count:
                out[new] = value
                break
        else:
            out[key] = value
    for layer, parts in qkv.items():
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise AnonfeatError(f"Hugging Face checkpoint: layer {layer} lacks attention {sorted(missing)} weights")
        out[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


# mmaction2's VisionTransformer: mmcv's PatchEmbed (projection) and FFN (layers.0.0 = fc1, layers.1 = fc2).
_MMACTION_RENAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.mlp\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.layers\.1\.", r"blocks.\1.mlp.fc2."),
]


def _from_mmaction(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in _MMACTION_RENAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        out[key] = value
    return out


def to_anonfeat_names(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys to VideoViT's parameter names."""
    state = _strip_prefixes(ckpt.state_dict)
    if any(k.startswith(("encoder.layer.", "embeddings.")) for k in state):
        ckpt.layout = "huggingface"
        state = _from_huggingface(state)
    elif any(k.startswith("patch_embed.projection.") for k in state):
        ckpt.layout = "mmaction"
        state = _from_mmaction(state)
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^blocks\.(\d+)\.gamma_1$", r"blocks.\1.ls1.gamma", key)
        key = re.sub(r"^blocks\.(\d+)\.gamma_2$", r"blocks.\1.ls2.gamma", key)
        renamed[key] = value
    return renamed


def infer_config(state: dict[str, torch.Tensor], hf_config: dict | None, layout: str,
                 base: EncoderConfig | None = None) -> EncoderConfig:
    """Architecture from a (renamed) state dict: Hugging Face config.json first, then shapes."""
    if "patch_embed.proj.weight" not in state:
        raise AnonfeatError("checkpoint has no tubelet embedding (patch_embed.proj.weight, "
                            "patch_embed.projection.weight or embeddings.patch_embeddings.projection.weight): "
                            "not a VideoMAE encoder")
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 5:
        raise AnonfeatError(f"checkpoint's patch_embed.proj.weight has shape {tuple(proj.shape)}, not a "
                            "video tubelet embedding (Conv3d): not a VideoMAE encoder; for an image model "
                            "pass --encoder timm:<model_name>")
    dim, _, tubelet, patch, _ = proj.shape
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    final_norm = "fc_norm" if "fc_norm.weight" in state else "norm" if "norm.weight" in state else "none"
    known = base or next((c for c in REGISTRY.values() if (c.embed_dim, c.depth) == (dim, depth)), None)
    heads = known.num_heads if known else max(1, dim // 64)
    num_frames, img_size = (known.num_frames, known.img_size) if known else (16, 224)
    eps = 1e-12 if layout == "huggingface" else 1e-6
    if hf_config:
        heads = int(hf_config.get("num_attention_heads", heads))
        num_frames = int(hf_config.get("num_frames", num_frames))
        img_size = int(hf_config.get("image_size", img_size))
        eps = float(hf_config.get("layer_norm_eps", eps))
    elif "pos_embed" in state and not base:
        n_tokens = state["pos_embed"].shape[1]
        side = (n_tokens // (num_frames // tubelet)) ** 0.5
        if side == int(side):
            img_size = int(side) * patch
    name = known.name if known else "videomae-custom"
    return EncoderConfig(
        name=name, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=hidden / dim,
        patch_size=patch, tubelet_size=tubelet, img_size=img_size, num_frames=num_frames,
        qkv_bias="blocks.0.attn.q_bias" in state, final_norm=final_norm, layer_norm_eps=eps,
        init_values=0.1 if "blocks.0.ls1.gamma" in state else 0.0,
        mean=known.mean if known else EncoderConfig.mean, std=known.std if known else EncoderConfig.std,
    )


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strictly load weights, turning missing/unexpected/mis-shaped keys into one clear error."""
    state = dict(state)
    for part in ("q", "k", "v"):  # HF plain linear biases: only zero k bias is representable
        for key in [k for k in state if k.endswith(f".attn.{part}_linear_bias")]:
            value = state.pop(key)
            if part == "k" and torch.count_nonzero(value):
                raise AnonfeatError(f"{source}: {key} is non-zero; VideoMAE attention has no key bias")
            if part != "k":
                state[key.replace(f"{part}_linear_bias", f"{part}_bias")] = value
    if "pos_embed" in state:
        table = state.pop("pos_embed")
        if table.shape != model.pos_embed.shape:
            raise AnonfeatError(f"{source}: pos_embed has shape {tuple(table.shape)}, the encoder "
                                f"expects {tuple(model.pos_embed.shape)}; check --encoder")
        model.pos_embed.copy_(table)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if wrong:
        problems.append("wrong shapes " + _names(
            [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]))
    if problems:
        raise AnonfeatError(f"{source}: checkpoint does not fit the encoder: {'; '.join(problems)}; "
                            "pass the matching --encoder or omit it to infer the architecture")
    model.load_state_dict(state, strict=True)


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"
