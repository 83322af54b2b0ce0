"""`anonfeat prune`: pruned features of every video into a store (extract's pipeline and layout,
plus pruning datasets), optionally anonymized videos and score heatmaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from anonfeat.device import resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.extract import FEATURES, ClipJob, ExtractResult, sampling_for, store_header, write_store
from anonfeat.options import with_overrides
from anonfeat.pruning.io import LoadedPruner, load_pruner
from anonfeat.pruning.options import PruneOptions  # noqa: F401  (re-exported: the API's `anonfeat.PruneOptions`)
from anonfeat.pruning.render import save_heatmaps, write_anonymized_video
from anonfeat.store import StoreHeader, VideoRecord
from anonfeat.video.discover import VideoItem
from anonfeat.video.sampling import Sampling

POOLED = "pooled_features"


def kept_dataset(block: int) -> str:
    return f"pruning/kept_{block}"


def scores_dataset(block: int) -> str:
    return f"pruning/scores_{block}"


def pruner_job(loaded: LoadedPruner, keep_ratio: float | None, sampling: Sampling,
               options: PruneOptions) -> ClipJob:
    model, cfg = loaded.model, loaded.config
    blocks = list(cfg.schedule(keep_ratio))
    store_dtype = getattr(torch, options.dtype)

    def infer(clips: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(clips, keep_ratio)
        outputs = {FEATURES: out.action, POOLED: out.pooled.to(store_dtype)}
        for block, kept, scores in zip(blocks, out.kept, out.scores):
            outputs[kept_dataset(block)] = kept.to(torch.int32)
            outputs[scores_dataset(block)] = scores.half()
        return outputs

    def on_video(record: VideoRecord) -> None:
        attrs = record.attrs
        name = Path(record.key)
        if options.save_videos is not None and blocks:
            target = Path(options.save_videos) / name.with_suffix(".mp4")
            write_anonymized_video(attrs["source"], target, int(attrs["n_frames"]), float(attrs["fps"]), sampling,
                                   record.extras[kept_dataset(blocks[-1])], cfg.encoder)
        if options.save_heatmaps is not None and blocks:
            save_heatmaps(attrs["source"], Path(options.save_heatmaps) / name.with_suffix(""),
                          int(attrs["n_frames"]), sampling, [record.extras[kept_dataset(b)] for b in blocks],
                          [record.extras[scores_dataset(b)] for b in blocks], blocks, cfg.encoder)

    side_outputs = options.save_videos is not None or options.save_heatmaps is not None
    return ClipJob(infer=infer, input=cfg.encoder, on_video=on_video if side_outputs else None, label="prune")


def pruned_header(loaded: LoadedPruner, sampling: Sampling, dtype: str, keep_ratio: float | None) -> StoreHeader:
    cfg = loaded.config
    schedule = cfg.schedule(keep_ratio)
    return store_header(
        cfg.encoder, loaded.sha256, sampling, dtype, features="pruned",
        extra={"pruner": {"file": loaded.path.name, "sha256": loaded.sha256,
                          "prune_blocks": list(schedule), "keep_rates": list(schedule.values()),
                          "kept_counts": cfg.kept_counts(keep_ratio), "lam": cfg.lam,
                          "num_tubelets": cfg.encoder.num_tokens, "grid": list(cfg.encoder.grid)}})


def prune(source: str | Path | Iterable[VideoItem], out: str | Path, pruner: str | Path | LoadedPruner,
          options: PruneOptions | None = None, **overrides) -> ExtractResult:
    """Prune every video under `source` into the store `out` (re-runs resume, bad videos are recorded).
    `pruner`: a file from train-pruner, or one already loaded with `load_pruner`."""
    options = with_overrides(options, PruneOptions, overrides)
    device = resolve_device(options.device)
    loaded = pruner if isinstance(pruner, LoadedPruner) else load_pruner(pruner, device)
    loaded.model.to(device)
    options.validate()
    trained = loaded.info.get("sampling", {})
    if options.frame_stride is None and options.sample_fps is None:  # sample as the pruner was trained
        if trained.get("sample_fps") is not None:
            options.sample_fps = float(trained["sample_fps"])
        else:
            options.frame_stride = int(trained.get("frame_stride") or 4)
    options.validate()
    cfg = loaded.config
    if options.clip_len not in (None, cfg.encoder.clip_len):
        raise AnonfeatError(f"--clip-len {options.clip_len}: pruner {loaded.path.name} takes clips of "
                            f"{cfg.encoder.clip_len} frames")
    cfg.schedule(options.keep_ratio)  # validates --keep-ratio
    sampling = sampling_for(options, cfg.encoder.clip_len)
    header = pruned_header(loaded, sampling, options.dtype, options.keep_ratio)
    return write_store(source, out, header, sampling, pruner_job(loaded, options.keep_ratio, sampling, options),
                       options, device)


def prune_sharded(source: str | Path | Iterable[VideoItem], out: str | Path, pruner: str | Path,
                  options: PruneOptions | None = None, keep_shards: bool = False, **overrides) -> ExtractResult:
    """`anonfeat prune` under any launcher (anonfeat.distributed.run_store_command): one process as
    `prune`; under torchrun each rank prunes its share into a shard and rank 0 merges them. The pruner
    is loaded once per process."""
    from anonfeat import distributed

    options = with_overrides(options, PruneOptions, overrides)
    loaded: dict[str, LoadedPruner] = {}

    def run(items: list, path: Path, opts: PruneOptions) -> ExtractResult:
        if "pruner" not in loaded:
            loaded["pruner"] = load_pruner(pruner, resolve_device(opts.device))
        return prune(items, path, loaded["pruner"], opts)

    return distributed.run_store_command(source, out, options, run, keep_shards=keep_shards)
