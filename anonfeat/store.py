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
import fcntl
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
from anonfeat.video.discover import key_problem
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
        name = ""
        try:
            name = "encoder_config"
            encoder_config = EncoderConfig.from_json(_text_attr(attrs, name))
            name = "sampling"
            sampling = json.loads(_text_attr(attrs, name))
            if not isinstance(sampling, dict):
                raise TypeError("not a JSON object")
            name = "extra"
            extra = json.loads(_text_attr(attrs, name)) if name in attrs else {}
            if not isinstance(extra, dict):
                raise TypeError("not a JSON object")
            name = "dim"
            dim = attrs["dim"]
            if isinstance(dim, (bytes, str, float)) or int(dim) != dim or int(dim) < 1:
                raise TypeError("dim is not a positive integer")
            name = "dtype"
            dtype = _text_attr(attrs, name)
            if dtype not in ("float16", "float32"):
                raise TypeError(f"dtype {dtype!r} is not float16 or float32")
            name = "encoder"
            return cls(
                encoder=_text_attr(attrs, "encoder"),
                encoder_config=encoder_config,
                checkpoint_sha256=_text_attr(attrs, "checkpoint_sha256"),
                sampling=sampling,
                dim=int(dim),
                dtype=dtype,
                features=_text_attr(attrs, "features"),
                adapter_sha256=_text_attr(attrs, "adapter_sha256") if "adapter_sha256" in attrs else "",
                extra=extra,
            )
        except (KeyError, ValueError, TypeError, AttributeError, AnonfeatError) as exc:
            raise AnonfeatError(f"{path}: not an anonfeat feature store (root attribute {name!r} missing or "
                                f"malformed: {first_line(exc)}); extract it with `anonfeat extract`") from None


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
        self._lock = None if mode == "r" else _lock_for_writing(self.path)
        try:
            self._file = self._open(mode)
            _check_structure(self._file, self.path)
        except BaseException:
            if getattr(self, "_file", None) is not None and self._file.id.valid:
                self._file.close()
            _release(self._lock)
            raise
        self.mode = mode
        self._header: StoreHeader | None = None

    def _open(self, mode: str) -> h5py.File:
        try:
            try:
                return h5py.File(self.path, mode)
            except OSError as exc:
                if mode == "r" or not (on_disk := _extend_truncated(self.path, exc)):
                    raise
                handle = h5py.File(self.path, mode)
                damage = _repair_cut_short(handle, on_disk)
                if damage:  # put the file back as it was and say so
                    handle.close()
                    os.truncate(self.path, on_disk)
                    raise AnonfeatError(
                        f"{self.path}: the file is cut short ({on_disk:,} bytes on disk, its header records more) "
                        f"and {damage}; it cannot be repaired: move it aside "
                        f"(mv {self.path} {self.path}.damaged) and re-run into a new file") from None
                return handle
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
                                    "failed, e.g. the disk filled up, or the file was cut short); re-run the command "
                                    "that wrote it, which restores a cut-short last write or says that the file "
                                    "cannot be repaired, then check with `anonfeat inspect --verify`") from None
            raise AnonfeatError(f"{self.path}: cannot open as HDF5 ({first_line(exc)}); "
                                "pass a store made by `anonfeat extract`") from None

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close(failing=exc[0] is not None)

    def close(self, failing: bool = False) -> None:
        """Close the file; when a write already failed (disk full...), a failing final flush is
        not raised over that first error: what was flushed before stays readable."""
        try:
            if self._file.id.valid:
                try:
                    self._file.close()
                except Exception as exc:  # noqa: BLE001 - HDF5 raises OSError/RuntimeError/KeyError here
                    if not failing:
                        raise AnonfeatError(f"{self.path}: closing the store failed ({first_line(exc)}); "
                                            "videos flushed before are intact, re-run to finish") from None
        finally:
            _release(self._lock)
            self._lock = None

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
        return self._features(key, self._group(key), "clip_features").astype(np.float32)

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
        return self._features(key, group, "static_features").astype(np.float32) if "static_features" in group else None

    def feature_shape(self, key: str, name: str = "clip_features") -> tuple[int, ...] | None:
        """Shape of a video's features dataset without reading it (None when it has none)."""
        group = self._group(key)
        return self._features(key, group, name, read=False).shape if name in group else None

    def _features(self, key: str, group: h5py.Group, name: str, read: bool = True):
        """A features dataset, checked from its shape and storage before any value is read: a crafted file
        (a lazily allocated huge dataset, strings, 1-D) is refused in one line instead of allocated."""
        data = group.get(name)
        problem = (_shape_problem(name, data, self.header) if isinstance(data, h5py.Dataset)
                   else f"{name} is not a dataset")
        if problem:
            raise AnonfeatError(f"{self.path}: video {key!r}: {problem}; the store is damaged or was not written by "
                                "anonfeat: check it with `anonfeat inspect --verify` and re-extract that video")
        return data[()] if read else data

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
            clip_features=self._features(key, group, "clip_features"),
            clip_ranges=group["clip_ranges"][()],
            clip_times=group["clip_times"][()] if "clip_times" in group else None,
            static_features=self._features(key, group, "static_features") if "static_features" in group else None,
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
        self._check_key(record.key)
        hooks.fire("write", record.key)
        dtype = np.dtype(self.header.dtype)
        for name, values in (("clip_features", record.clip_features), ("static_features", record.static_features)):
            if values is not None and not finite_in(values, dtype):
                raise AnonfeatError(f"{self.path}: video {record.key!r}: {name} hold NaN or Inf in {dtype} (the "
                                    "model or adapter produced them, or values beyond the dtype's range); nothing "
                                    "of it was written: check the model file, or use --dtype float32")
        data_bytes = sum(np.asarray(a).size for a in (record.clip_features, record.static_features) if a is not None)
        extra_bytes = sum(np.asarray(a).nbytes for a in record.extras.values())
        self.check_space(data_bytes * np.dtype(self.header.dtype).itemsize + extra_bytes + 32 * len(record.clip_ranges),
                         f"video {record.key}")
        path = _h5_path(VIDEOS, record.key)
        if path in self._file:  # left incomplete by a crash, or redone: drop it, and let the file
            del self._file[path]  # say so before its space can be reused by the new datasets
            self._file.flush()
        group = self._file.create_group(path)
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
        self._check_key(key)
        self.check_space(len(error) + len(source), f"the failure record of {key}")
        self._drop(VIDEOS, key)
        path = _h5_path(FAILURES, key)
        group = self._file.require_group(path)
        group.attrs["error"] = error
        group.attrs["source"] = source
        self._file.flush()

    def _check_key(self, key: str) -> None:
        """Refuse a key whose write or failure record would replace anything but its own video: an
        invalid key (empty, '.', '..', NUL: it could name /videos itself), a key inside another video's
        group, or a key whose group holds other videos or failures."""
        problem = key_problem(key)
        if problem:
            raise AnonfeatError(f"{self.path}: refusing video key {key!r} with {problem}; pass video paths "
                                "relative to the input folder")
        parts = key.split("/")
        for root in (VIDEOS, FAILURES):
            for depth in range(1, len(parts)):
                ancestor = self._file.get(_h5_path(root, "/".join(parts[:depth])))
                if ancestor is None:
                    break
                if not isinstance(ancestor, h5py.Group) or _is_record(ancestor):
                    inside = "/".join(parts[:depth])
                    raise AnonfeatError(f"{self.path}: video key {key!r} lies inside /{root}/{inside}, "
                                        "another video's record; rename one of them or use another --out")
            own = self._file.get(_h5_path(root, key))
            if own is not None and (not isinstance(own, h5py.Group) or _holds_records(own)):
                raise AnonfeatError(f"{self.path}: /{root}/{key} holds other videos' records; writing video {key!r} "
                                    "would replace them: rename it or use another --out")

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
    problem = _shape_problem(name, data, header)
    if problem:
        return [problem]  # never read values whose shape or storage is wrong
    if data.dtype != np.dtype(header.dtype):
        out.append(f"{name} is {data.dtype}, the store's dtype is {header.dtype}")
    n_nan = n_inf = 0
    for start in range(0, data.shape[0], _ROWS_PER_READ):  # bounded memory whatever the row count
        values = data[start:start + _ROWS_PER_READ]
        n_nan, n_inf = n_nan + int(np.isnan(values).sum()), n_inf + int(np.isinf(values).sum())
    if n_nan or n_inf:
        out.append(f"{name} holds {n_nan} NaN and {n_inf} Inf values")
    return out


_ROWS_PER_READ = 4096


def _shape_problem(name: str, data: h5py.Dataset, header: StoreHeader) -> str | None:
    """What makes a features dataset unreadable as (n, dim) floats, judged without reading its values:
    its rank, width or type, or an uncompressed layout claiming more bytes than the file stores for it
    (HDF5 returns fill values for unwritten space: a tiny crafted file can claim gigabytes)."""
    if data.ndim != 2 or data.shape[1] != header.dim:
        return f"{name} has shape {data.shape}, expected (n, {header.dim}) (root dim)"
    if data.dtype.kind != "f":
        return f"{name} is {data.dtype}, not floating point"
    stored = data.id.get_storage_size()  # unallocated space (contiguous or chunks never written) counts 0
    if data.compression is None and data.scaleoffset is None and stored < data.size * data.dtype.itemsize:
        return f"{name} claims {data.size * data.dtype.itemsize:,} bytes but the file stores {stored:,} for it"
    return None


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


def _text_attr(attrs, name: str) -> str:
    value = attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise TypeError(f"{name} is {type(value).__name__}, not text")
    return value


def _is_record(group: h5py.Group) -> bool:
    """A video group (a `complete` mark or a core dataset) or a failure record (an `error`)."""
    return ("complete" in group.attrs or "error" in group.attrs
            or any(d in group for d in _VIDEO_DATASETS))


def _holds_records(group: h5py.Group) -> bool:
    found: list[str] = []
    group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) and _is_record(obj) else None)
    return bool(found)


def _check_structure(handle: h5py.File, path: Path) -> None:
    """Refuse a file whose /videos or /failures is not a group, or that holds a soft or external link
    anywhere: every object a store reads or writes must be inside the store itself (an external link
    would make `extract` delete and write inside another file)."""
    for name in (VIDEOS, FAILURES):
        link = handle.get(name, getlink=True)
        if link is not None and isinstance(link, h5py.HardLink) and not isinstance(handle.get(name), h5py.Group):
            raise AnonfeatError(f"{path}: /{name} is not a group; this file is not an anonfeat feature store "
                                "(crafted or damaged): extract into a new --out")
    found: list[tuple[str, object]] = []

    def visit(name: str, link) -> bool | None:
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            found.append((name, link))
            return True  # stop at the first one
        return None

    handle.visititems_links(visit)
    if found:
        name, link = found[0]
        target = (f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path)
        kind = "an external" if isinstance(link, h5py.ExternalLink) else "a soft"
        raise AnonfeatError(f"{path}: /{name} is {kind} link to {target}; a store never links outside its own "
                            "objects (crafted or damaged file): extract into a new --out")


def finite_in(values: np.ndarray, dtype: np.dtype | str) -> bool:
    """True when `values` hold no NaN or Inf once stored as `dtype` (an overflow of float16 counts)."""
    with np.errstate(over="ignore"):  # an overflow to Inf is what is being detected
        return bool(np.isfinite(np.asarray(values).astype(dtype)).all())

def _lock_for_writing(path: Path) -> int:
    """An exclusive lock on PATH.lock held while the store is open for writing, independent of HDF5's own
    file locking (often disabled with HDF5_USE_FILE_LOCKING=FALSE on clusters, where two writers would
    corrupt the file). fcntl locks are released by the kernel when the process ends, even when killed."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise AnonfeatError(f"{path}: permission denied opening the store for writing (cannot create "
                                f"{lock_path.name}); fix the permissions or choose another --out") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise AnonfeatError(f"{path}: another process is writing this store (it holds {lock_path}); wait for "
                                "it to finish or write to another --out") from None
        # ENOSYS/EOPNOTSUPP/ENOLCK: a filesystem without flock (e.g. Lustre mounted without flock)
        raise AnonfeatError(f"{path}: cannot lock {lock_path.name} on this filesystem ({exc.strerror}); write the "
                            "store to a filesystem that supports flock (e.g. local disk) or mount with flock") from None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


_TRUNCATED = re.compile(r"truncated file: eof = (\d+), sblock->base_addr = 0, stored_eof = (\d+)")


def _extend_truncated(path: Path, exc: OSError) -> int:
    """When a write fails inside HDF5 (disk full), the superblock can record a larger end of file
    than reached the disk, and HDF5 then refuses to open the file at all. The missing bytes belong
    to the write that failed (the video being written, never marked complete); extending the file
    with zeros to the recorded end (only appending, nothing written is changed) makes the file open,
    and the re-run deletes and redoes that video. Returns the size on disk before extending (0: not
    that case). The caller then drops what lost data with `_repair_cut_short` (a file cut short by
    other means loses more than its last write), or restores the size and refuses.
    Tested in tests/test_reliability.py and tests/test_hostile_inputs_2.py."""
    match = _TRUNCATED.search(str(exc))
    if not match:
        return 0
    eof, stored = int(match.group(1)), int(match.group(2))
    if not eof == path.stat().st_size < stored:
        return 0
    with open(path, "r+b") as handle:
        handle.truncate(stored)
    return eof


def _repair_cut_short(handle: h5py.File, on_disk: int) -> str:
    """After `_extend_truncated`: delete every video group and failure record that lost anything in the
    missing part (now zeros): a dataset reaching byte `on_disk` or an object that no longer reads. The
    re-run then redoes those videos, as after a crash. Returns "" when repaired, else what cannot be
    (the root or the /videos index itself was cut). HDF5 does not lay a file out in write order (small
    raw data and metadata are gathered in blocks), so a video finished before a failed write can lose
    data too: it is redone, never kept with zeros."""
    redo: list[str] = []
    unreadable: list[str] = []

    def end_of(dataset: h5py.Dataset) -> int:
        if dataset.chunks is None:
            offset = dataset.id.get_offset()
            return 0 if offset is None else offset + dataset.id.get_storage_size()
        end = 0
        for index in range(dataset.id.get_num_chunks()):
            info = dataset.id.get_chunk_info(index)
            end = max(end, info.byte_offset + info.size)
        return end

    def intact(record: h5py.Group) -> bool:
        bad: list[str] = []

        def visit(_: str, obj) -> None:
            dict(obj.attrs)
            if isinstance(obj, h5py.Dataset) and end_of(obj) > on_disk:
                bad.append(obj.name)

        try:
            dict(record.attrs)
            record.visititems(visit)
        except Exception:  # noqa: BLE001 - a zeroed object header raises anything
            return False
        return not bad

    def walk(group: h5py.Group) -> None:
        for name in list(group.keys()):
            path = f"{group.name}/{name}"
            try:
                child = group[name]
                is_record = isinstance(child, h5py.Group) and _is_record(child)
            except Exception:  # noqa: BLE001 - its object header was cut: HDF5 cannot even delete it
                unreadable.append(path)
                continue
            if not isinstance(child, h5py.Group):
                continue
            if is_record:
                if not intact(child):
                    redo.append(path)
            else:
                walk(child)

    try:
        dict(handle.attrs)
        for root in (VIDEOS, FAILURES):
            if root in handle:
                walk(handle[root])
        if unreadable:  # refuse before changing anything
            return f"{len(unreadable)} object(s) of it no longer read (first: {unreadable[0]})"
        for path in redo:
            del handle[path]
        handle.flush()
        for root in (VIDEOS, FAILURES):  # what is left must list and read
            if root in handle:
                list(_walk_groups(handle[root], "complete" if root == VIDEOS else "error"))
    except Exception as exc:  # noqa: BLE001
        return f"its index of videos no longer reads ({first_line(exc)})"
    return ""


def _not_writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return target.exists() and not os.access(target, os.W_OK)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
