"""`anonfeat prune`: pruned features of every video into a store (extract's pipeline and layout,
plus pruning datasets), optionally anonymized videos and score heatmaps.

What is shared after pruning is the masked video, so by default (`features="masked"`) the store holds
what a fresh look at that video gives: the frozen source encoder the pruner was built from, run on
each clip with every tubelet dropped at the last pruning stage set to black (the paper's anonymized
video, input * mask). `features="action-cls"` stores the pruner's own action-CLS features instead;
those come from an adversarially fine-tuned model that saw the unmasked clip, so they measure the
fine-tuning as much as the pruning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from anonfeat.device import resolve_device
from anonfeat.encoders.config import EncoderConfig
from anonfeat.errors import AnonfeatError
from anonfeat.extract import FEATURES, ClipJob, ExtractResult, sampling_for, store_header, write_store
from anonfeat.options import with_overrides
from anonfeat.paths import check_distinct_targets, check_outputs
from anonfeat.pruning.backbone import load_source_encoder
from anonfeat.pruning.io import LoadedPruner, load_pruner
from anonfeat.pruning.options import ACTION_CLS, MASKED, PruneOptions
from anonfeat.pruning.render import save_heatmaps, write_anonymized_video
from anonfeat.sharding import run_store_command
from anonfeat.store import StoreHeader, VideoRecord
from anonfeat.video.decoders import select_decoder
from anonfeat.video.discover import VideoItem
from anonfeat.video.sampling import Sampling

POOLED = "pooled_features"


def saved_video_path(folder: str | Path, key: str) -> Path:
    """Where `--save-videos FOLDER` writes the anonymized copy of video `key`: its relative path, as .mp4."""
    return Path(folder) / Path(key).with_suffix(".mp4")


def heatmap_folder(folder: str | Path, key: str) -> Path:
    """Where `--save-heatmaps FOLDER` writes the score maps of video `key`: its relative path without suffix."""
    return Path(folder) / Path(key).with_suffix("")


def kept_dataset(block: int) -> str:
    return f"pruning/kept_{block}"


def scores_dataset(block: int) -> str:
    return f"pruning/scores_{block}"


def tubelet_pixel_mask(kept: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """Kept tubelet positions (B, k) on the grid -> boolean (B, 1, T, s, s) mask of the clip's pixels,
    built on `kept`'s device."""
    t, h, w = cfg.grid
    grid = torch.zeros((kept.shape[0], t * h * w), dtype=torch.bool, device=kept.device)
    grid.scatter_(1, kept.long(), True)
    grid = grid.view(-1, 1, t, h, w)
    patch = cfg.patch_size
    return grid.repeat_interleave(cfg.tubelet_size, 2).repeat_interleave(patch, 3).repeat_interleave(patch, 4)


class MaskedClipEncoder:
    """Normalized clips of the pruner's input + kept tubelets -> the source encoder's features of the
    clips with every other tubelet black (pixel value 0, i.e. -mean/std once normalized), in the
    encoder's own normalization."""

    def __init__(self, encoder: torch.nn.Module, pruner_input: EncoderConfig):
        source = encoder.config
        if source.img_size != pruner_input.img_size:
            raise AnonfeatError(f"source encoder {source.name} takes {source.img_size}px clips, the pruner "
                                f"{pruner_input.img_size}px; pass the checkpoint the pruner was built from")
        self.encoder, self.pruner_input = encoder, pruner_input
        self.same_norm = tuple(source.mean) == tuple(pruner_input.mean) and tuple(source.std) == tuple(pruner_input.std)

    def _stats(self, cfg: EncoderConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(cfg.mean, device=like.device, dtype=like.dtype).view(1, 3, 1, 1, 1),
                torch.tensor(cfg.std, device=like.device, dtype=like.dtype).view(1, 3, 1, 1, 1))

    def __call__(self, clips: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
        if not self.same_norm:  # pixels in [0, 1], then the encoder's normalization
            mean, std = self._stats(self.pruner_input, clips)
            target_mean, target_std = self._stats(self.encoder.config, clips)
            clips = (clips * std + mean - target_mean) / target_std
        if kept is not None:
            mean, std = self._stats(self.encoder.config, clips)
            clips = torch.where(tubelet_pixel_mask(kept, self.pruner_input), clips, -mean / std)
        return self.encoder(clips)


def pruner_job(loaded: LoadedPruner, keep_ratio: float | None, sampling: Sampling,
               options: PruneOptions, source: torch.nn.Module | None = None) -> ClipJob:
    """One pruner forward per batch of clips; with `source` (the frozen encoder, features "masked")
    one forward of it on the masked clips, which are built on the device."""
    model, cfg = loaded.model, loaded.config
    blocks = list(cfg.schedule(keep_ratio))
    store_dtype = getattr(torch, options.dtype)
    masked = None if source is None else MaskedClipEncoder(source, cfg.encoder)

    def infer(clips: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(clips, keep_ratio)
        if masked is None:
            outputs = {FEATURES: out.action, POOLED: out.pooled.to(store_dtype)}
        else:  # the pruner's own features are not shared: only what it kept
            outputs = {FEATURES: masked(clips, out.kept[-1] if out.kept else None)}
        for block, kept, scores in zip(blocks, out.kept, out.scores):
            outputs[kept_dataset(block)] = kept.to(torch.int32)
            outputs[scores_dataset(block)] = scores.half()
        return outputs

    def on_video(record: VideoRecord) -> None:
        attrs = record.attrs
        if options.save_videos is not None and blocks:
            target = saved_video_path(options.save_videos, record.key)
            write_anonymized_video(attrs["source"], target, int(attrs["n_frames"]), float(attrs["fps"]), sampling,
                                   record.extras[kept_dataset(blocks[-1])], cfg.encoder, fill=options.fill,
                                   lossless=options.lossless)
        if options.save_heatmaps is not None and blocks:
            save_heatmaps(attrs["source"], heatmap_folder(options.save_heatmaps, record.key),
                          int(attrs["n_frames"]), sampling, [record.extras[kept_dataset(b)] for b in blocks],
                          [record.extras[scores_dataset(b)] for b in blocks], blocks, cfg.encoder)

    def check_videos(videos: list[VideoItem]) -> None:
        if options.save_videos is not None:
            check_distinct_targets(videos, lambda key: saved_video_path(options.save_videos, key), "--save-videos")
        if options.save_heatmaps is not None:
            check_distinct_targets(videos, lambda key: heatmap_folder(options.save_heatmaps, key), "--save-heatmaps")

    side_outputs = options.save_videos is not None or options.save_heatmaps is not None
    return ClipJob(infer=infer, input=cfg.encoder, on_video=on_video if side_outputs else None, label="prune",
                   check_videos=check_videos if side_outputs else None)


def pruned_header(loaded: LoadedPruner, sampling: Sampling, dtype: str, keep_ratio: float | None,
                  source: torch.nn.Module | None = None) -> StoreHeader:
    """Masked stores (`source` given) carry the source encoder's name, config and weights' sha256, as
    `extract` with that encoder writes them; action-CLS stores the pruner's config and file sha256.
    `extra.pruner.features` says which."""
    cfg = loaded.config
    schedule = cfg.schedule(keep_ratio)
    pruner = {"file": loaded.path.name, "sha256": loaded.sha256, "features": ACTION_CLS if source is None else MASKED,
              "prune_blocks": list(schedule), "keep_rates": list(schedule.values()),
              "kept_counts": cfg.kept_counts(keep_ratio), "lam": cfg.lam,
              "num_tubelets": cfg.encoder.num_tokens, "grid": list(cfg.encoder.grid)}
    seen = loaded.training_videos  # the audit refuses to test on these
    if source is None:
        return store_header(cfg.encoder, loaded.sha256, sampling, dtype, features="pruned",
                            anonymizer_videos=seen, extra={"pruner": pruner})
    return store_header(source.config, source.checkpoint_sha256, sampling, dtype, features="pruned",
                        anonymizer_videos=seen, extra={"pruner": pruner})


def prune(source: str | Path | Iterable[VideoItem], out: str | Path, pruner: str | Path | LoadedPruner,
          options: PruneOptions | None = None, **overrides) -> ExtractResult:
    """Prune every video under `source` into the store `out` (re-runs resume, bad videos are recorded).
    `pruner`: a file from train-pruner, or one already loaded with `load_pruner`."""
    options = with_overrides(options, PruneOptions, overrides)
    _check_prune_outputs(source, out, pruner, options)
    options.validate()
    device = resolve_device(options.device)
    decoder = select_decoder(options.decoder, device)  # refused here, before the pruner is loaded
    loaded = pruner if isinstance(pruner, LoadedPruner) else load_pruner(pruner, device)
    loaded.model.to(device)
    cfg = loaded.config
    if options.clip_len not in (None, cfg.encoder.clip_len):
        raise AnonfeatError(f"--clip-len {options.clip_len}: pruner {loaded.path.name} takes clips of "
                            f"{cfg.encoder.clip_len} frames")
    cfg.schedule(options.keep_ratio)  # validates --keep-ratio
    encoder = None
    if options.features == MASKED:
        encoder = load_source_encoder(loaded.info.get("backbone", {}), loaded.path, options.checkpoint, device)
    sampling = sampling_for(options, cfg.encoder.clip_len)
    header = pruned_header(loaded, sampling, options.dtype, options.keep_ratio, encoder)
    job = pruner_job(loaded, options.keep_ratio, sampling, options, encoder)
    return write_store(source, out, header, sampling, job, options, device, decoder)


def _check_prune_outputs(source, out, pruner, options: PruneOptions) -> None:
    """Before anything loads: no output over an input, no output folder inside the video folder."""
    check_outputs({"--out": out, "--save-videos": options.save_videos, "--save-heatmaps": options.save_heatmaps},
                  {"VIDEOS": source if isinstance(source, (str, Path)) else None,
                   "--pruner": None if isinstance(pruner, LoadedPruner) else pruner,
                   "--checkpoint": options.checkpoint},
                  folders=("--save-videos", "--save-heatmaps"))


def prune_sharded(source: str | Path | Iterable[VideoItem], out: str | Path, pruner: str | Path,
                  options: PruneOptions | None = None, keep_shards: bool = False, **overrides) -> ExtractResult:
    """`anonfeat prune` under any launcher (anonfeat.sharding.run_store_command): one process as
    `prune`; under torchrun each rank prunes its share into a shard and rank 0 merges them. The pruner
    is loaded once per process."""
    options = with_overrides(options, PruneOptions, overrides)
    _check_prune_outputs(source, out, pruner, options)
    select_decoder(options.decoder, resolve_device(options.device))  # --decoder refused before any work
    loaded: dict[str, LoadedPruner] = {}

    def run(items: list, path: Path, opts: PruneOptions) -> ExtractResult:
        if "pruner" not in loaded:
            loaded["pruner"] = load_pruner(pruner, resolve_device(opts.device))
        return prune(items, path, loaded["pruner"], opts)

    return run_store_command(source, out, options, run, keep_shards=keep_shards)
