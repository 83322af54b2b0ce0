"""Applying a trained adapter: to a raw store (`anonfeat sanitize`) or during extraction."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anonfeat.adapter.io import LoadedAdapter, load_adapter
from anonfeat.adapter.model import sanitize_features
from anonfeat.device import resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord


def sanitized_header(raw: StoreHeader, adapter: LoadedAdapter) -> StoreHeader:
    return dataclasses.replace(raw, features="sanitized", adapter_sha256=adapter.sha256)


def feature_transform(adapter: LoadedAdapter):
    """(clip (n, D), static (m, D) | None) -> sanitized: clips as one sequence, each static clip alone."""

    def transform(clips: torch.Tensor, static: torch.Tensor | None):
        return (sanitize_features(adapter.model, clips),
                None if static is None else sanitize_features(adapter.model, static, static=True))

    return transform


@dataclass
class SanitizeResult:
    store: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def sanitize_store(raw: str | Path, adapter: str | Path, out: str | Path, device: str = "cpu",
                   progress: bool = True, compression: str | None = None) -> SanitizeResult:
    """Pass every video's clip and static features through the adapter into a new store (resumable)."""
    raw, out = Path(raw), Path(out)
    if _same_file(raw, out) or raw.resolve() == out.resolve():
        raise AnonfeatError(f"{out}: is the raw store itself; write sanitized features to another --out")
    loaded = load_adapter(adapter, resolve_device(device))
    transform = feature_transform(loaded)
    result = SanitizeResult(store=out)
    with FeatureStore(raw) as source:
        loaded.check_store(source.header, raw)
        header = sanitized_header(source.header, loaded)
        keys = source.videos()
        out.parent.mkdir(parents=True, exist_ok=True)
        with FeatureStore(out, "a") as target:
            target.initialize(header)
            from rich.progress import track

            for key in track(keys, description="sanitize", disable=not progress):
                if target.is_complete(key):
                    result.skipped.append(key)
                    continue
                record = source.read_video(key)
                clips = torch.from_numpy(record.clip_features.astype("float32"))
                static = None if record.static_features is None else torch.from_numpy(
                    record.static_features.astype("float32"))
                clips, static = transform(clips, static)
                target.write_video(VideoRecord(
                    key=key, clip_features=clips.numpy(), clip_ranges=record.clip_ranges,
                    static_features=None if static is None else static.numpy(),
                    static_frames=record.static_frames, attrs=record.attrs), compression)
                result.written.append(key)
            for key, error in source.failures().items():
                if not target.is_complete(key):
                    target.record_failure(key, error)
    return result
