"""Applying a trained adapter: to a raw store (`anonfeat sanitize`) or during extraction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anonfeat.adapter.io import LoadedAdapter, load_adapter
from anonfeat.adapter.model import sanitize_features
from anonfeat.device import resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.paths import check_outputs, same_file
from anonfeat.progress import RichBar
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord


def sanitized_header(raw: StoreHeader, adapter: LoadedAdapter) -> StoreHeader:
    """The raw header marked sanitized by this adapter, with the adapter's record of its training
    videos (the audit refuses to test on them)."""
    return dataclasses.replace(raw, features="sanitized", adapter_sha256=adapter.sha256,
                               anonymizer_videos=adapter.training_videos)


@dataclass(frozen=True)
class AdapterTransform:
    """`extract`'s `transform` for the adapter file at `path` (`extract --adapter`): on the run's
    device, checked against the raw features' header, giving the sanitized header and the
    per-video feature transform. `inputs` names the file it reads, which no output may replace."""

    path: Path

    @property
    def inputs(self) -> dict[str, Path]:
        return {"--adapter": self.path}

    def __call__(self, header: StoreHeader, device: torch.device):
        loaded = load_adapter(self.path, device)
        loaded.check_store(header, f"--encoder {header.encoder}")
        return sanitized_header(header, loaded), feature_transform(loaded)


def adapter_transform(path: str | Path) -> AdapterTransform:
    """The `transform` that makes `extract` write features sanitized by the adapter file at `path`."""
    return AdapterTransform(Path(path))


def refuse_unchanged(adapter: LoadedAdapter, what: str, raw: np.ndarray, sanitized: np.ndarray) -> None:
    """A sanitized store never holds a raw feature vector: refuse rows the adapter left as they were
    (compared in float16, the coarsest stored precision). An untrained adapter is exactly the
    identity, so this is what stops it from writing raw features under a "sanitized" header."""
    raw16 = np.asarray(raw, dtype=np.float16)
    same = (np.asarray(sanitized, dtype=np.float16) == raw16).all(axis=-1) & np.isfinite(raw16).all(axis=-1)
    if same.any():
        raise AnonfeatError(f"{adapter.path}: leaves {int(same.sum())} of {len(same)} feature vectors of {what} "
                            "unchanged (an untrained adapter is the identity); refusing to write raw features into "
                            "a sanitized store: train the adapter with `anonfeat train-adapter`")


def feature_transform(adapter: LoadedAdapter):
    """(clip (n, D), static (m, D) | None) -> sanitized: clips as one sequence, each static clip alone."""

    def transform(clips: torch.Tensor, static: torch.Tensor | None):
        out = (sanitize_features(adapter.model, clips),
               None if static is None else sanitize_features(adapter.model, static, static=True))
        refuse_unchanged(adapter, "a video's clips", clips.numpy(), out[0].numpy())
        if static is not None:
            refuse_unchanged(adapter, "a video's static clips", static.numpy(), out[1].numpy())
        return out

    return transform


@dataclass
class SanitizeResult:
    store: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _sanitize_group(adapter: LoadedAdapter, records: list[VideoRecord]) -> list[VideoRecord]:
    """Sanitize many videos in one padded forward pass: the adapter is batch-independent, and one
    large call costs far less than hundreds of tiny ones."""
    clips = sanitize_features(adapter.model, [torch.from_numpy(r.clip_features.astype("float32")) for r in records])
    has_static = [r for r in records if r.static_features is not None]
    statics = iter([])
    if has_static:
        rows = torch.from_numpy(np.concatenate([r.static_features for r in has_static]).astype("float32"))
        sanitized = sanitize_features(adapter.model, rows, static=True)
        statics = iter(torch.split(sanitized, [len(r.static_features) for r in has_static]))
    out = []
    for record, clip in zip(records, clips):
        static = next(statics) if record.static_features is not None else None
        refuse_unchanged(adapter, f"video {record.key}", record.clip_features, clip.numpy())
        if static is not None:
            refuse_unchanged(adapter, f"video {record.key}'s static clips", record.static_features, static.numpy())
        out.append(VideoRecord(key=record.key, clip_features=clip.numpy(), clip_ranges=record.clip_ranges,
                               clip_times=record.clip_times,
                               static_features=None if static is None else static.numpy(),
                               static_frames=record.static_frames, attrs=record.attrs))
    return out


def sanitize_store(raw: str | Path, adapter: str | Path, out: str | Path, device: str = "cpu",
                   progress: bool = True, compression: str | None = None, group_size: int = 128) -> SanitizeResult:
    """Pass every video's clip and static features through the adapter into a new store (resumable)."""
    raw, out = Path(raw), Path(out)
    if same_file(raw, out):  # also through a symlink, a hard link or `..`
        raise AnonfeatError(f"{out}: is the raw store itself; write sanitized features to another --out")
    check_outputs({"--out": out}, {"--adapter": adapter})
    loaded = load_adapter(adapter, resolve_device(device))
    result = SanitizeResult(store=out)
    with FeatureStore(raw) as source:
        loaded.check_store(source.header, raw)
        header = sanitized_header(source.header, loaded)
        keys = source.videos()
        out.parent.mkdir(parents=True, exist_ok=True)
        with FeatureStore(out, "a") as target:
            target.initialize(header)
            todo = [key for key in keys if not target.is_complete(key)]
            result.skipped = [key for key in keys if target.is_complete(key)]
            with RichBar(progress, "sanitize", len(todo), []) as bar:
                for start in range(0, len(todo), group_size):
                    group = [source.read_video(key) for key in todo[start:start + group_size]]
                    for record in _sanitize_group(loaded, group):
                        target.write_video(record, compression)
                        result.written.append(record.key)
                    bar.step(len(group))
            for key, error in source.failures().items():
                if not target.is_complete(key):
                    target.record_failure(key, error)
    return result
