"""The HDF5 feature store: one file per run, one group per video.

Layout (readable with plain h5py, see README "HDF5 layout"):

    /                     attrs: format_version, anonfeat_version, encoder, encoder_config (JSON),
                                 checkpoint_sha256, sampling (JSON), features ("raw"|"sanitized"),
                                 dtype, dim, adapter_sha256 (sanitized stores), extra (JSON)
    /videos/<rel/path>    group per video, keyed by its path relative to the input folder
        clip_features     (n_clips, dim) float16|float32
        clip_ranges       (n_clips, 2) int64: [first, last] source frame index of each clip
        static_features   (n_static, dim)   (when extracted with --static-clips N, N > 0)
        static_frames     (n_static,) int64 source frame index of each static clip
        attrs: fps, n_frames, height, width, source, complete (set last)
    /failures/<rel/path>  group per failed video, attrs: error, source

Write protocol: a video's datasets are written first, then its `complete` attribute is set and
the file flushed. Readers list only complete videos; a re-run deletes and redoes incomplete ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from anonfeat.encoders.config import EncoderConfig
from anonfeat.errors import AnonfeatError

FORMAT_VERSION = 1
VIDEOS = "videos"
FAILURES = "failures"

# Root attributes that must match for two runs to write into one store.
_IDENTITY_KEYS = ("encoder", "encoder_config", "checkpoint_sha256", "sampling", "features",
                  "adapter_sha256", "dtype", "dim", "extra")


@dataclass(frozen=True)
class StoreHeader:
    """What a store's features are: which encoder, weights, sampling and post-processing."""

    encoder: str
    encoder_config: EncoderConfig
    checkpoint_sha256: str
    sampling: dict
    dim: int
    dtype: str = "float16"
    features: str = "raw"  # "raw" or "sanitized"
    adapter_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def to_attrs(self) -> dict[str, object]:
        from anonfeat import __version__

        return {
            "format_version": FORMAT_VERSION,
            "anonfeat_version": __version__,
            "encoder": self.encoder,
            "encoder_config": self.encoder_config.to_json(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "sampling": json.dumps(self.sampling, sort_keys=True),
            "features": self.features,
            "adapter_sha256": self.adapter_sha256,
            "dtype": self.dtype,
            "dim": int(self.dim),
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    @classmethod
    def from_attrs(cls, attrs, path: str | os.PathLike = "") -> "StoreHeader":
        try:
            return cls(
                encoder=str(attrs["encoder"]),
                encoder_config=EncoderConfig.from_json(attrs["encoder_config"]),
                checkpoint_sha256=str(attrs["checkpoint_sha256"]),
                sampling=json.loads(attrs["sampling"]),
                dim=int(attrs["dim"]),
                dtype=str(attrs["dtype"]),
                features=str(attrs["features"]),
                adapter_sha256=str(attrs.get("adapter_sha256", "")),
                extra=json.loads(attrs.get("extra", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise AnonfeatError(f"{path}: not an anonfeat feature store (root attribute {exc} "
                                "missing or malformed); extract it with `anonfeat extract`") from None


@dataclass
class VideoRecord:
    """One video's features and facts, as written to and read from a store."""

    key: str
    clip_features: np.ndarray
    clip_ranges: np.ndarray
    static_features: np.ndarray | None = None
    static_frames: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # other per-clip datasets (e.g. pruning/...)


def _h5_path(group: str, key: str) -> str:
    return f"/{group}/{key}"


def _walk_groups(root: h5py.Group, marker: str) -> Iterator[str]:
    """Relative names of the groups below `root` carrying attribute `marker`."""
    found: list[str] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and marker in obj.attrs:
            found.append(name)

    root.visititems(visit)
    return iter(sorted(found))


class FeatureStore:
    """Read (and, opened with mode="a", write) an anonfeat HDF5 feature store.

    >>> with FeatureStore("feats.h5") as store:
    ...     for key in store.videos():
    ...         x = store.clip_features(key)   # (n_clips, dim) float32
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        if mode == "r" and not self.path.is_file():
            raise AnonfeatError(f"{self.path}: no such feature store; create it with `anonfeat extract`")
        try:
            self._file = h5py.File(self.path, mode)
        except BlockingIOError:
            raise AnonfeatError(f"{self.path}: the store is open for writing by another process; "
                                "wait for it or write to another --out") from None
        except OSError as exc:
            raise AnonfeatError(f"{self.path}: cannot open as HDF5 ({exc}); "
                                "pass a store made by `anonfeat extract`") from None
        self.mode = mode
        self._header: StoreHeader | None = None

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    # -- header -------------------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return "encoder" in self._file.attrs

    @property
    def header(self) -> StoreHeader:
        if self._header is None:
            self._header = StoreHeader.from_attrs(self._file.attrs, self.path)
        return self._header

    @property
    def attrs(self) -> dict:
        """Root attributes as plain Python values."""
        return {k: _plain(v) for k, v in self._file.attrs.items()}

    def initialize(self, header: StoreHeader) -> None:
        """Write the header of a new store, or check that an existing one matches it."""
        if self.is_initialized:
            check_compatible(self.header, header, self.path)
            return
        for name, value in header.to_attrs().items():
            self._file.attrs[name] = value
        self._file.require_group(VIDEOS)
        self._file.require_group(FAILURES)
        self._header = header
        self._file.flush()

    # -- reading ------------------------------------------------------------------------------
    def videos(self) -> list[str]:
        """Keys of the completely written videos, sorted."""
        if VIDEOS not in self._file:
            return []
        return [k for k in _walk_groups(self._file[VIDEOS], "complete")
                if self._file[VIDEOS][k].attrs["complete"]]

    def __contains__(self, key: str) -> bool:
        return self.is_complete(key)

    def __len__(self) -> int:
        return len(self.videos())

    def is_complete(self, key: str) -> bool:
        path = _h5_path(VIDEOS, key)
        return path in self._file and bool(self._file[path].attrs.get("complete", False))

    def _group(self, key: str) -> h5py.Group:
        if not self.is_complete(key):
            raise KeyError(f"{self.path}: no complete video {key!r}")
        return self._file[_h5_path(VIDEOS, key)]

    def clip_features(self, key: str) -> np.ndarray:
        return self._group(key)["clip_features"][()].astype(np.float32)

    def clip_ranges(self, key: str) -> np.ndarray:
        return self._group(key)["clip_ranges"][()]

    def static_features(self, key: str) -> np.ndarray | None:
        group = self._group(key)
        return group["static_features"][()].astype(np.float32) if "static_features" in group else None

    def dataset(self, key: str, name: str) -> np.ndarray:
        """Any dataset of a complete video by its name in the group (e.g. "pruning/kept_1")."""
        group = self._group(key)
        if name not in group:
            raise KeyError(f"{self.path}: video {key!r} has no dataset {name!r}")
        return group[name][()]

    def video_attrs(self, key: str) -> dict:
        return {k: _plain(v) for k, v in self._group(key).attrs.items()}

    def read_video(self, key: str) -> VideoRecord:
        group = self._group(key)
        return VideoRecord(
            key=key,
            clip_features=group["clip_features"][()],
            clip_ranges=group["clip_ranges"][()],
            static_features=group["static_features"][()] if "static_features" in group else None,
            static_frames=group["static_frames"][()] if "static_frames" in group else None,
            attrs={k: _plain(v) for k, v in group.attrs.items() if k != "complete"},
        )

    def failures(self) -> dict[str, str]:
        """{video key: error message} of the videos that could not be processed."""
        if FAILURES not in self._file:
            return {}
        root = self._file[FAILURES]
        return {k: str(root[k].attrs["error"]) for k in _walk_groups(root, "error")}

    # -- writing ------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self.mode == "r":
            raise AnonfeatError(f"{self.path}: opened read-only")

    def write_video(self, record: VideoRecord, compression: str | None = None) -> None:
        """Write one video atomically in the protocol's sense: datasets, then `complete`, then flush."""
        self._require_writable()
        path = _h5_path(VIDEOS, record.key)
        if path in self._file:
            del self._file[path]
        group = self._file.create_group(path)
        dtype = np.dtype(self.header.dtype)
        opts = {"compression": compression} if compression else {}
        group.create_dataset("clip_features", data=np.asarray(record.clip_features, dtype=dtype), **opts)
        group.create_dataset("clip_ranges", data=np.asarray(record.clip_ranges, dtype=np.int64))
        if record.static_features is not None and len(record.static_features):
            group.create_dataset("static_features", data=np.asarray(record.static_features, dtype=dtype),
                                 **opts)
            group.create_dataset("static_frames", data=np.asarray(record.static_frames, dtype=np.int64))
        for name, value in record.extras.items():
            group.create_dataset(name, data=np.asarray(value), **opts)
        for name, value in record.attrs.items():
            group.attrs[name] = value
        group.attrs["complete"] = True
        self._drop(FAILURES, record.key)
        self._file.flush()

    def record_failure(self, key: str, error: str, source: str = "") -> None:
        self._require_writable()
        self._drop(VIDEOS, key)
        path = _h5_path(FAILURES, key)
        group = self._file.require_group(path)
        group.attrs["error"] = error
        group.attrs["source"] = source
        self._file.flush()

    def _drop(self, group: str, key: str) -> None:
        path = _h5_path(group, key)
        if path in self._file:
            del self._file[path]

    def incomplete(self) -> list[str]:
        """Keys of video groups left half-written by an interrupted run."""
        if VIDEOS not in self._file:
            return []
        out = []

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group) and "clip_features" in obj and not obj.attrs.get("complete"):
                out.append(name)

        self._file[VIDEOS].visititems(visit)
        return sorted(out)


def check_compatible(existing: StoreHeader, new: StoreHeader, path: str | os.PathLike) -> None:
    """Refuse to mix features of different encoders, weights or sampling in one store."""
    old_attrs, new_attrs = existing.to_attrs(), new.to_attrs()
    for key in _IDENTITY_KEYS:
        if old_attrs[key] != new_attrs[key]:
            old, new_value = _json_or_none(old_attrs[key]), _json_or_none(new_attrs[key])
            if isinstance(old, dict) and isinstance(new_value, dict):  # name the differing fields
                fields = sorted(k for k in old.keys() | new_value.keys() if old.get(k) != new_value.get(k))
                was = ", ".join(f"{k}={old.get(k)}" for k in fields)
                now = ", ".join(f"{k}={new_value.get(k)}" for k in fields)
            else:
                was, now = f"{key}={_short(old_attrs[key])}", f"{key}={_short(new_attrs[key])}"
            raise AnonfeatError(f"{path}: store was made with {was}, this run has {now}; "
                                "write to a new --out or repeat the original settings")


def _json_or_none(value: object):
    try:
        return json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _short(value: object, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
