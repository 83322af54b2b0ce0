"""Encoder families: what anonfeat knows about each kind of encoder, in one object per kind.

After timm's `_registry.py` / `_builder.py`: a name resolves to its family, and the family builds
the module, loads checkpoints in the layouts it accepts, counts parameters and FLOPs, says how
frames are fed to it (resize, crop, normalization) and turns it into a video ViT backbone for the
tubelet pruner. Callers ask the family instead of branching on `config.family`.
"""

from __future__ import annotations

import torch
from torch import nn

from anonfeat.encoders.base import RANDOM_INIT_SEED, Backbone, CheckpointIdentity, Encoder, random_init
from anonfeat.encoders.config import REGISTRY, TIMM_PREFIX, EncoderConfig
from anonfeat.errors import AnonfeatError
from anonfeat.video.resize import PilResize


class EncoderFamily:
    """One kind of encoder. Subclasses fill in every method; `name` is the config's `family`."""

    name: str = ""
    video_vit: bool = False  # a tubelet video ViT (VideoViT): the pruner can reuse its weights as they are

    def owns(self, name: str) -> bool:
        raise NotImplementedError

    def describe(self, name: str) -> EncoderConfig:
        """The config of a registered name (no weights made or fetched)."""
        raise NotImplementedError

    def registered(self) -> list[EncoderConfig]:
        """Configs to list in `anonfeat encoders` (families of open-ended names list none)."""
        return []

    def build(self, cfg: EncoderConfig, seed: int = RANDOM_INIT_SEED,
              checkpoint: CheckpointIdentity | None = None) -> Encoder:
        """The module with seeded random weights (the same seed gives the same weights); `checkpoint`
        names the weights that will be loaded into it (default: these random ones)."""
        raise NotImplementedError

    def load(self, base: EncoderConfig | None, checkpoint: str) -> Encoder:
        """The module with the weights `checkpoint` names (a path or a Hugging Face id)."""
        raise NotImplementedError

    def parameter_count(self, cfg: EncoderConfig) -> int:
        """Exact parameter count, built on the meta device so even ViT-g costs no memory."""
        with torch.device("meta"):
            model = self.build(cfg)
        return sum(p.numel() for p in model.parameters())

    def flops_per_clip(self, cfg: EncoderConfig) -> float:
        """Forward FLOPs of one clip (2 x multiply-adds); NaN where no formula is known."""
        return float("nan")

    def frame_resize(self, cfg: EncoderConfig, resize: str) -> PilResize | None:
        """How decoded frames are resized for this encoder: None means the decoder's own scaling
        (short side to img_size, FFmpeg bilinear; `resize`="full": the whole frame squashed)."""
        return None

    def to_backbone(self, encoder: Encoder, num_frames: int | None = None) -> Backbone:
        """The encoder as a video ViT backbone (see Backbone)."""
        raise AnonfeatError(f"{encoder.config.name}: a {self.name} encoder cannot start a video ViT backbone")


def _seeded(seed: int, build):
    """Random weights that depend only on the seed, without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class VideoMAEFamily(EncoderFamily):
    """Video ViTs with tubelet embedding (VideoMAE v1/v2 and checkpoints in their layouts)."""

    name = "videomae"
    video_vit = True

    def owns(self, name: str) -> bool:
        return name in REGISTRY

    def describe(self, name: str) -> EncoderConfig:
        return REGISTRY[name]

    def registered(self) -> list[EncoderConfig]:
        return list(REGISTRY.values())

    def build(self, cfg: EncoderConfig, seed: int = RANDOM_INIT_SEED,
              checkpoint: CheckpointIdentity | None = None) -> Encoder:
        from anonfeat.encoders.vit import VideoViT

        return _seeded(seed, lambda: VideoViT(cfg, checkpoint=checkpoint or random_init(seed)))

    def load(self, base: EncoderConfig | None, checkpoint: str) -> Encoder:
        from anonfeat.encoders.checkpoints import (infer_config, load_state, read_checkpoint, resolve_checkpoint,
                                                   to_anonfeat_names)

        ckpt = read_checkpoint(resolve_checkpoint(checkpoint))
        state = to_anonfeat_names(ckpt)
        cfg = infer_config(state, ckpt.hf_config, ckpt.layout, base)
        if base is not None:  # the user named the architecture: its shape facts win, the file's norms too
            cfg = base.replace(final_norm=cfg.final_norm, layer_norm_eps=cfg.layer_norm_eps,
                               init_values=cfg.init_values or base.init_values)
        model = self.build(cfg, checkpoint=CheckpointIdentity(sha256=ckpt.sha256, source=str(checkpoint)))
        with torch.no_grad():
            load_state(model, state, ckpt.path)
        return model

    def flops_per_clip(self, cfg: EncoderConfig) -> float:
        """Counted: tubelet embedding, per block qkv + attention scores + attention x values +
        projection + the two MLP layers. Not counted (< 1%): norms, softmax, GELU, biases, pooling."""
        n, d, hidden = cfg.num_tokens, cfg.embed_dim, cfg.mlp_hidden
        t, p, _ = cfg.tubelet
        embed = 2 * n * d * 3 * t * p * p
        per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
        return float(embed + cfg.depth * per_block)

    def to_backbone(self, encoder: Encoder, num_frames: int | None = None) -> Backbone:
        cfg = encoder.config
        if num_frames is not None and num_frames != cfg.num_frames:
            raise AnonfeatError(f"--clip-len {num_frames}: {cfg.name} takes clips of {cfg.num_frames} frames")
        state = {f"patch_embed.{k}": v for k, v in encoder.patch_embed.state_dict().items()}
        state["pos_embed"] = encoder.pos_embed
        state.update({f"blocks.{k}": v for k, v in encoder.blocks.state_dict().items()})
        norm = encoder.fc_norm if encoder.fc_norm is not None else encoder.norm
        if isinstance(norm, nn.LayerNorm):
            state.update({f"norm.{k}": v for k, v in norm.state_dict().items()})
        return Backbone(config=cfg, state={k: v.detach() for k, v in state.items()})


class TimmFamily(EncoderFamily):
    """timm image models (`timm:<model_name>`) applied frame by frame, fed as timm feeds them."""

    name = "timm"

    def owns(self, name: str) -> bool:
        return name.startswith(TIMM_PREFIX)

    def describe(self, name: str) -> EncoderConfig:
        from anonfeat.encoders.framewise import timm_config

        return timm_config(name[len(TIMM_PREFIX):])

    def build(self, cfg: EncoderConfig, seed: int = RANDOM_INIT_SEED,
              checkpoint: CheckpointIdentity | None = None) -> Encoder:
        from anonfeat.encoders.framewise import FramewiseEncoder

        return _seeded(seed, lambda: FramewiseEncoder(cfg, checkpoint=checkpoint or random_init(seed)))

    def load(self, base: EncoderConfig | None, checkpoint: str) -> Encoder:
        from anonfeat.encoders.checkpoints import file_sha256, resolve_checkpoint
        from anonfeat.encoders.framewise import PRETRAINED, FramewiseEncoder, load_timm_weights, timm_pretrained_file
        from anonfeat.encoders.hub import weights_in

        if checkpoint == PRETRAINED:
            path, _ = timm_pretrained_file(base)
        else:
            path = resolve_checkpoint(checkpoint)
            if path.is_dir():
                path = weights_in(path) or path
            if not path.is_file():
                raise AnonfeatError(f"{checkpoint}: no such checkpoint file (nor a Hugging Face id: org/name"
                                    "[@revision]); pass a weights file, or `pretrained` for timm's own weights")
        model = load_timm_weights(base, path)
        return FramewiseEncoder(base, model, CheckpointIdentity(sha256=file_sha256(path), source=str(checkpoint)))

    def parameter_count(self, cfg: EncoderConfig) -> int:
        from anonfeat.encoders.framewise import create_timm

        return sum(p.numel() for p in create_timm(cfg.timm_model, "meta", pretrained=False).parameters())

    def frame_resize(self, cfg: EncoderConfig, resize: str) -> PilResize | None:
        return PilResize(cfg.img_size, cfg.crop_pct, cfg.interpolation,
                         squash=resize == "full" or cfg.crop_mode == "squash")

    def to_backbone(self, encoder: Encoder, num_frames: int | None = None) -> Backbone:
        from anonfeat.encoders.framewise import inflate_vit

        return inflate_vit(encoder.model, encoder.config.timm_model, num_frames or 16)


FAMILIES: dict[str, EncoderFamily] = {family.name: family for family in (VideoMAEFamily(), TimmFamily())}


def family_of(cfg: EncoderConfig) -> EncoderFamily:
    """The family that built (or builds) `cfg`."""
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise AnonfeatError(f"{cfg.name}: unknown encoder family {cfg.family!r} "
                            f"(known: {', '.join(FAMILIES)})") from None


def family_for_name(name: str) -> EncoderFamily:
    """The family a user-facing encoder name belongs to."""
    for family in FAMILIES.values():
        if family.owns(name):
            return family
    known = ", ".join(sorted(REGISTRY))
    raise AnonfeatError(f"unknown encoder {name!r}: choose one of {known}, or timm:<model_name> "
                        "(see `anonfeat encoders`)")


def get_config(name: str) -> EncoderConfig:
    """Look up a registered encoder, or describe a `timm:<model>` one."""
    return family_for_name(name).describe(name)

