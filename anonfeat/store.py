"""The HDF5 feature store: one file per run, one group per video.

Layout (readable with plain h5py, see docs/store-format.md):

    /                     attrs: format_version, anonfeat_version, encoder, encoder_config (JSON),
                                 checkpoint_sha256, sampling (JSON), features ("raw"|"sanitized"|"pruned"),
                                 dtype, dim, adapter_sha256 (sanitized stores), extra (JSON)
    /anonymizer_videos    (n,) utf-8 strings: label ids of the videos the adapter or pruner that made
                          these features trained on (sanitized and pruned stores; absent: unknown)
    /videos/<rel/path>    group per video, keyed by its path relative to the input folder
        clip_features     (n_clips, dim) float16|float32
        clip_ranges       (n_clips, 2) int64: [first, last] source frame index of each clip
        clip_times        (n_clips, 2) float64: [start, end] seconds, when those two frames are shown
                          (frame index / fps; NaN when the frame rate is unknown). Stores written
                          before it existed lack it: `FeatureStore.clip_times` then computes it.
        static_features   (n_static, dim)   (when extracted with --static-clips N, N > 0)
        static_frames     (n_static,) int64 source frame index of each static clip
        ...               other per-clip datasets of pruned stores (pooled_features, pruning/kept_<b>, ...)
        attrs: fps, n_frames, height, width, source, complete (set last)
    /failures/<rel/path>  group per failed video, attrs: error, source

Write protocol, per video (`write_video`): check the disk and file-size limit leave room (else
OSError before anything is written); delete a group left by an interrupted run and flush (its space
is then never reused while the file on disk still points to it); write the datasets and attributes;
flush; set `complete`; flush. Readers list only complete videos; a re-run deletes and redoes incomplete
ones. What this survives is tested with SIGKILL at each step (docs/guarantees.md).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from anonfeat.encoders.config import EncoderConfig
from anonfeat import hooks
from anonfeat._version import __version__
from anonfeat.errors import AnonfeatError, first_line
from anonfeat.video.sampling import clip_times as times_of_ranges

FORMAT_VERSION = 1
VIDEOS = "videos"
FAILURES = "failures"
ANONYMIZER_VIDEOS = "anonymizer_videos"

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
    # Label ids of the anonymizer's training videos (a root dataset, too long for an attribute);
    # None: raw features, or made by an anonymizer that did not record them.
    anonymizer_videos: tuple[str, ...] | None = None

    def to_attrs(self) -> dict[str, object]:
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
    clip_times: np.ndarray | None = None  # (n_clips, 2) seconds; None: not recorded (older stores)


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
            try:
                self._file = h5py.File(self.path, mode)
            except OSError as exc:
                if mode == "r" or not _extend_truncated(self.path, exc):
                    raise
                self._file = h5py.File(self.path, mode)
        except BlockingIOError:
            raise AnonfeatError(f"{self.path}: the store is open for writing by another process; "
                                "wait for it or write to another --out") from None
        except OSError as exc:
            denied = getattr(exc, "errno", None) == errno.EACCES or "Permission denied" in str(exc)
            if denied or (mode != "r" and _not_writable(self.path)):
                raise AnonfeatError(f"{self.path}: permission denied opening the store "
                                    f"{'for reading' if mode == 'r' else 'for writing'}; fix the "
                                    "permissions or choose another --out") from None
            if _TRUNCATED.search(str(exc)):
                raise AnonfeatError(f"{self.path}: the file ends before the end its header records (a write "
                                    "failed, e.g. the disk filled up); re-run the command that wrote it, which "
                                    "restores the missing end, then check with `anonfeat inspect --verify`") from None
            raise AnonfeatError(f"{self.path}: cannot open as HDF5 ({first_line(exc)}); "
                                "pass a store made by `anonfeat extract`") from None
        self.mode = mode
        self._header: StoreHeader | None = None

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close(failing=exc[0] is not None)

    def close(self, failing: bool = False) -> None:
        """Close the file; when a write already failed (disk full...), a failing final flush is
        not raised over that first error: what was flushed before stays readable."""
        if self._file.id.valid:
            try:
                self._file.close()
            except Exception as exc:  # noqa: BLE001 - HDF5 raises OSError/RuntimeError/KeyError here
                if not failing:
                    raise AnonfeatError(f"{self.path}: closing the store failed ({first_line(exc)}); "
                                        "videos flushed before are intact, re-run to finish") from None

    # -- header -------------------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return "encoder" in self._file.attrs

    @property
    def header(self) -> StoreHeader:
        if self._header is None:
            header = StoreHeader.from_attrs(self._file.attrs, self.path)
            record = self._file.get(ANONYMIZER_VIDEOS)
            if isinstance(record, h5py.Dataset):
                videos = tuple(_plain(v) for v in record.asstr()[()])
                header = dataclasses.replace(header, anonymizer_videos=videos)
            self._header = header
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
        if header.anonymizer_videos is not None:
            self._file.create_dataset(ANONYMIZER_VIDEOS, data=list(header.anonymizer_videos),
                                      dtype=h5py.string_dtype("utf-8"))
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

    def clip_times(self, key: str) -> np.ndarray:
        """(n_clips, 2) seconds [start, end] of each clip; for stores written before `clip_times`
        was recorded, computed the same way from clip_ranges and the video's fps."""
        group = self._group(key)
        if "clip_times" in group:
            return group["clip_times"][()]
        return times_of_ranges(group["clip_ranges"][()], _plain(group.attrs.get("fps")))

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
            clip_times=group["clip_times"][()] if "clip_times" in group else None,
            static_features=group["static_features"][()] if "static_features" in group else None,
            static_frames=group["static_frames"][()] if "static_frames" in group else None,
            attrs={k: _plain(v) for k, v in group.attrs.items() if k != "complete"},
            extras=_extra_datasets(group),
        )

    def failures(self, with_source: bool = False) -> dict:
        """{video key: error message} of the videos that could not be processed; with `with_source`,
        {video key: (error message, source path)}."""
        if FAILURES not in self._file:
            return {}
        root = self._file[FAILURES]
        if with_source:
            return {k: (str(root[k].attrs["error"]), str(root[k].attrs.get("source", "")))
                    for k in _walk_groups(root, "error")}
        return {k: str(root[k].attrs["error"]) for k in _walk_groups(root, "error")}

    # -- writing ------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self.mode == "r":
            raise AnonfeatError(f"{self.path}: opened read-only")

    def write_video(self, record: VideoRecord, compression: str | None = None) -> None:
        """Write one video atomically in the protocol's sense: datasets, then `complete`, then flush."""
        self._require_writable()
        hooks.fire("write", record.key)
        data_bytes = sum(np.asarray(a).size for a in (record.clip_features, record.static_features) if a is not None)
        extra_bytes = sum(np.asarray(a).nbytes for a in record.extras.values())
        self.check_space(data_bytes * np.dtype(self.header.dtype).itemsize + extra_bytes + 32 * len(record.clip_ranges),
                         f"video {record.key}")
        path = _h5_path(VIDEOS, record.key)
        if path in self._file:  # left incomplete by a crash, or redone: drop it, and let the file
            del self._file[path]  # say so before its space can be reused by the new datasets
            self._file.flush()
        group = self._file.create_group(path)
        dtype = np.dtype(self.header.dtype)
        opts = {"compression": compression} if compression else {}
        group.create_dataset("clip_features", data=np.asarray(record.clip_features, dtype=dtype), **opts)
        hooks.fire("write-datasets", record.key)
        group.create_dataset("clip_ranges", data=np.asarray(record.clip_ranges, dtype=np.int64))
        if record.clip_times is not None:
            group.create_dataset("clip_times", data=np.asarray(record.clip_times, dtype=np.float64))
        if record.static_features is not None and len(record.static_features):
            group.create_dataset("static_features", data=np.asarray(record.static_features, dtype=dtype),
                                 **opts)
            group.create_dataset("static_frames", data=np.asarray(record.static_frames, dtype=np.int64))
        for name, value in record.extras.items():
            group.create_dataset(name, data=np.asarray(value), **opts)
        for name, value in record.attrs.items():
            group.attrs[name] = value
        # The data reaches the file before the mark does: when a write fails inside HDF5 (disk full),
        # it fails here, and the video is left unmarked instead of marked over data that never landed.
        self._file.flush()
        hooks.fire("write-mark", record.key)
        group.attrs["complete"] = True
        self._drop(FAILURES, record.key)
        self._file.flush()
        hooks.fire("written", record.key)

    def check_space(self, nbytes: int, what: str) -> None:
        """Raise OSError(ENOSPC/EFBIG) unless the disk and the file-size limit leave room for
        `nbytes` more (twice that, plus SPACE_MARGIN for HDF5's metadata).

        Checked before anything of a video is written: HDF5 handles a write failing half-way badly
        (HDF5 2.0 can even crash in the next flush), so a full disk is refused while the file is clean.
        """
        need = 2 * int(nbytes) + SPACE_MARGIN
        try:
            stats = os.statvfs(self.path.parent)
            size = self.path.stat().st_size
        except OSError:
            return
        free = stats.f_bavail * stats.f_frsize
        if free < need:
            raise OSError(errno.ENOSPC, f"no space left on the device for {what} (about {need:,} bytes needed "
                          f"with the margin, {free:,} free)", str(self.path))
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and size + need > limit:
            raise OSError(errno.EFBIG, f"the file size limit ({limit:,} bytes, ulimit -f) leaves no room for "
                          f"{what} (about {need:,} bytes needed with the margin)", str(self.path))

    def record_failure(self, key: str, error: str, source: str = "") -> None:
        self._require_writable()
        self.check_space(len(error) + len(source), f"the failure record of {key}")
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

    # -- checking -------------------------------------------------------------------------------
    def verify(self) -> list["Problem"]:
        """Check every video group against the root header; [] when the store is sound.

        Per video: the `complete` mark; clip_features (n, dim) of the header's dtype, finite;
        clip_ranges (n, 2) integers within the video's frames; clip_times, when present, (n, 2)
        seconds, start <= end; static_features (N, dim) and
        static_frames (N,) exactly when the sampling has static_clips = N; the documented attributes.
        Per failure: an error message, and no complete video under the same key.
        """
        try:
            header = self.header
        except AnonfeatError as exc:
            return [Problem("", str(exc))]
        problems: list[Problem] = []
        version = self._file.attrs.get("format_version")
        if version is None or int(version) > FORMAT_VERSION:
            problems.append(Problem("", f"format_version {version} is not one this anonfeat reads "
                                        f"({FORMAT_VERSION}); upgrade anonfeat"))
        for group_name in (VIDEOS, FAILURES):
            if group_name not in self._file:
                problems.append(Problem("", f"no /{group_name} group"))
        if VIDEOS in self._file:
            for key, group in _video_groups(self._file[VIDEOS]):
                problems += [Problem(key, m) for m in _check_video(group, header)]
        if FAILURES in self._file:
            root = self._file[FAILURES]
            for key in _walk_groups(root, "error"):
                if not str(root[key].attrs["error"]).strip():
                    problems.append(Problem(key, "failure recorded without an error message"))
                if self.is_complete(key):
                    problems.append(Problem(key, "listed both as a complete video and as a failure"))
        return problems

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


@dataclass(frozen=True)
class Problem:
    """One finding of `FeatureStore.verify`: the video key ("" for the store itself) and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key or '(store)'}: {self.message}"


# Room kept free beyond a video's estimated size when checking the disk before writing it.
SPACE_MARGIN = 1 << 20

_VIDEO_DATASETS = ("clip_features", "clip_ranges", "clip_times", "static_features", "static_frames")
_VIDEO_ATTRS = ("fps", "n_frames", "height", "width", "source")


def _video_groups(root: h5py.Group) -> list[tuple[str, h5py.Group]]:
    """(key, group) of every video group, complete or not: groups with a mark or a dataset."""
    found: list[tuple[str, h5py.Group]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and ("complete" in obj.attrs
                                            or any(isinstance(obj.get(d), h5py.Dataset)
                                                   for d in _VIDEO_DATASETS)):
            found.append((name, obj))

    root.visititems(visit)
    return sorted(found, key=lambda kv: kv[0])


def _check_video(group: h5py.Group, header: StoreHeader) -> list[str]:
    out: list[str] = []
    if not bool(group.attrs.get("complete", False)):
        out.append("incomplete: no complete mark (interrupted write); re-run the command to redo it")
    n_clips = None
    feats = group.get("clip_features")
    if not isinstance(feats, h5py.Dataset):
        out.append("clip_features missing")
    else:
        out += _check_features("clip_features", feats, header)
        n_clips = feats.shape[0] if feats.ndim == 2 else None
        if n_clips == 0:
            out.append("clip_features has no rows (every video has at least one clip)")
    ranges = group.get("clip_ranges")
    n_frames = group.attrs.get("n_frames")
    if not isinstance(ranges, h5py.Dataset):
        out.append("clip_ranges missing")
    elif ranges.ndim != 2 or ranges.shape[1] != 2 or not np.issubdtype(ranges.dtype, np.integer):
        out.append(f"clip_ranges is {ranges.dtype}{ranges.shape}, expected integer (n_clips, 2)")
    else:
        if n_clips is not None and ranges.shape[0] != n_clips:
            out.append(f"clip_ranges has {ranges.shape[0]} rows, clip_features {n_clips}")
        values = ranges[()]
        if len(values) and n_frames is not None and (
                values.min() < 0 or values.max() >= int(n_frames) or (values[:, 0] > values[:, 1]).any()):
            out.append(f"clip_ranges outside the video's {int(n_frames)} frames or reversed")
    times = group.get("clip_times")  # optional: stores of earlier versions lack it
    if times is not None:
        if (not isinstance(times, h5py.Dataset) or times.ndim != 2 or times.shape[1] != 2
                or not np.issubdtype(times.dtype, np.floating)):
            out.append(f"clip_times is {getattr(times, 'dtype', '?')}{getattr(times, 'shape', '')}, expected float "
                       "(n_clips, 2)")
        else:
            if n_clips is not None and times.shape[0] != n_clips:
                out.append(f"clip_times has {times.shape[0]} rows, clip_features {n_clips}")
            values = times[()]
            known = values[np.isfinite(values).all(axis=1)]
            if len(known) and (known.min() < 0 or (known[:, 0] > known[:, 1]).any()):
                out.append("clip_times negative or reversed")
    expected_static = int(header.sampling.get("static_clips") or 0)
    static, frames = group.get("static_features"), group.get("static_frames")
    if expected_static:
        if not isinstance(static, h5py.Dataset) or not isinstance(frames, h5py.Dataset):
            out.append(f"static_features/static_frames missing (sampling has static_clips={expected_static})")
        else:
            out += _check_features("static_features", static, header)
            if static.ndim == 2 and static.shape[0] != expected_static:
                out.append(f"static_features has {static.shape[0]} rows, sampling static_clips={expected_static}")
            if frames.shape != (static.shape[0],) or not np.issubdtype(frames.dtype, np.integer):
                out.append(f"static_frames is {frames.dtype}{frames.shape}, expected integer ({static.shape[0]},)")
            elif n_frames is not None and len(frames) and (frames[()].min() < 0 or frames[()].max() >= int(n_frames)):
                out.append(f"static_frames outside the video's {int(n_frames)} frames")
    elif static is not None or frames is not None:
        out.append("static features present although the sampling has static_clips=0")
    missing = [a for a in _VIDEO_ATTRS if a not in group.attrs]
    if missing:
        out.append(f"attribute(s) {', '.join(missing)} missing")
    return out


def _check_features(name: str, data: h5py.Dataset, header: StoreHeader) -> list[str]:
    out = []
    if data.ndim != 2 or data.shape[1] != header.dim:
        out.append(f"{name} has shape {data.shape}, expected (n, {header.dim}) (root dim)")
    if data.dtype != np.dtype(header.dtype):
        out.append(f"{name} is {data.dtype}, the store's dtype is {header.dtype}")
    values = data[()]
    if np.issubdtype(values.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if n_nan or n_inf:
            out.append(f"{name} holds {n_nan} NaN and {n_inf} Inf values")
    return out


def _extra_datasets(group: h5py.Group) -> dict[str, np.ndarray]:
    """Datasets of a video group beyond the core four (e.g. prune's pruning/kept_3), by relative name."""
    extras: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and name not in _VIDEO_DATASETS:
            extras[name] = obj[()]

    group.visititems(visit)
    return extras


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


_TRUNCATED = re.compile(r"truncated file: eof = (\d+), sblock->base_addr = 0, stored_eof = (\d+)")


def _extend_truncated(path: Path, exc: OSError) -> bool:
    """When a write fails inside HDF5 (disk full), the superblock can record a larger end of file
    than reached the disk, and HDF5 then refuses to open the file at all. The missing bytes belong
    to the write that failed (the video being written, never marked complete); extending the file
    with zeros to the recorded end (only appending, nothing written is changed) makes the file open,
    and the re-run deletes and redoes that video. Tested in tests/test_reliability.py."""
    match = _TRUNCATED.search(str(exc))
    if not match:
        return False
    eof, stored = int(match.group(1)), int(match.group(2))
    if not eof == path.stat().st_size < stored:
        return False
    with open(path, "r+b") as handle:
        handle.truncate(stored)
    return True


def _not_writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return target.exists() and not os.access(target, os.W_OK)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
