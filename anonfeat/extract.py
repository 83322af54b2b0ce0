"""Batch extraction of clip (and static-clip) features from a video folder into an HDF5 store.

The pipeline: DataLoader workers decode uint8 frames (anonfeat.video.stream) -> the main process
crops/normalizes on the compute device and batches clips across videos -> the encoder runs
(bf16 autocast on CUDA) -> per-video features are assembled and handed to a writer thread, so
neither the model nor the decoder waits on disk. Failed videos are recorded and skipped;
re-running skips finished videos.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from anonfeat.device import autocast, resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord
from anonfeat.video.discover import VideoItem, find_videos
from anonfeat.video.sampling import Sampling
from anonfeat.video.stream import CLIP, STATIC, ClipChunk, VideoClipStream, VideoFailed, VideoStart, to_clips

# (clip_features (n, D), static_features (m, D) | None) -> same: the anonymizing adapter.
FeatureTransform = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class ExtractOptions:
    """Everything `anonfeat extract` takes besides the input and the output."""

    encoder: str | None = None
    checkpoint: str | Path | None = None
    random_init: bool = False
    clip_len: int | None = None
    frame_stride: int = 4
    clip_stride: int | None = None
    num_clips: int | None = None
    static_clips: int = 0
    resize: str = "short"
    batch_size: int = 16
    workers: int = 1
    device: str = "auto"
    dtype: str = "float16"
    compression: str | None = None
    progress: bool = True


@dataclass
class ExtractResult:
    store: Path
    total: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    clips: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 3 if self.failed else 0


# -- assembling features per video -------------------------------------------------------------
class _VideoFeatures:
    """Collects one video's clip and static features as batches come back in any order."""

    def __init__(self, start: VideoStart, dim: int):
        self.start = start
        self.parts = {CLIP: torch.empty(start.n_clips, dim), STATIC: torch.empty(start.n_static, dim)}
        self.remaining = start.n_clips + start.n_static

    def put(self, kind: str, row: int, features: torch.Tensor) -> None:
        self.parts[kind][row:row + len(features)] = features
        self.remaining -= len(features)


class _ClipBatcher:
    """Packs clips from many videos into batches of exactly `batch_size` (the last may be short)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.pieces: list[tuple[str, str, int, torch.Tensor]] = []
        self.pending = 0

    def add(self, key: str, kind: str, row: int, clips: torch.Tensor) -> Iterator[tuple[torch.Tensor, list]]:
        self.pieces.append((key, kind, row, clips))
        self.pending += len(clips)
        while self.pending >= self.batch_size:
            yield self._take(self.batch_size)

    def flush(self) -> Iterator[tuple[torch.Tensor, list]]:
        while self.pending:
            yield self._take(min(self.pending, self.batch_size))

    def _take(self, n: int) -> tuple[torch.Tensor, list]:
        tensors, routes, taken = [], [], 0
        while taken < n:
            key, kind, row, clips = self.pieces[0]
            use = min(n - taken, len(clips))
            tensors.append(clips[:use])
            routes.append((key, kind, row, use))
            if use == len(clips):
                self.pieces.pop(0)
            else:
                self.pieces[0] = (key, kind, row + use, clips[use:])
            taken += use
        self.pending -= n
        return (tensors[0] if len(tensors) == 1 else torch.cat(tensors)), routes


# -- writing off the main thread ---------------------------------------------------------------
class StoreWriter:
    """Owns the store's write handle in a thread; errors (disk full...) surface on the next call."""

    def __init__(self, store: FeatureStore, compression: str | None):
        self.store = store
        self.compression = compression
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="anonfeat-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                if isinstance(job, VideoRecord):
                    self.store.write_video(job, self.compression)
                else:
                    self.store.record_failure(*job)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise AnonfeatError(f"{self.store.path}: writing failed ({exc}); videos written before "
                                "are intact, free space or fix permissions and re-run") from exc

    def write(self, record: VideoRecord) -> None:
        self._check()
        self._queue.put(record)

    def fail(self, key: str, error: str, source: str) -> None:
        self._check()
        self._queue.put((key, error, source))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._check()


# -- the run -----------------------------------------------------------------------------------
def sampling_for(options: ExtractOptions, clip_len_default: int) -> Sampling:
    return Sampling(clip_len=options.clip_len or clip_len_default, frame_stride=options.frame_stride,
                    clip_stride=options.clip_stride, num_clips=options.num_clips,
                    static_clips=options.static_clips, resize=options.resize)


def store_header(encoder: nn.Module, sampling: Sampling, dtype: str) -> StoreHeader:
    cfg = encoder.config
    return StoreHeader(encoder=cfg.name, encoder_config=cfg, checkpoint_sha256=encoder.checkpoint_sha256,
                       sampling={**sampling.to_dict(), "input_size": cfg.img_size}, dim=cfg.embed_dim,
                       dtype=dtype)


def _check_options(options: ExtractOptions) -> None:
    if options.dtype not in ("float16", "float32"):
        raise AnonfeatError(f"--dtype {options.dtype!r}: choose float16 or float32")
    if options.batch_size < 1:
        raise AnonfeatError("--batch-size must be at least 1")
    if options.workers < 0:
        raise AnonfeatError("--workers must be 0 (decode in the main process) or more")
    if options.compression not in (None, "gzip", "lzf"):
        raise AnonfeatError(f"--compression {options.compression!r}: choose gzip, lzf or none")


def extract(source: str | Path | Iterable[VideoItem], out: str | Path, options: ExtractOptions | None = None,
            encoder: nn.Module | None = None, adapter: str | Path | None = None, **overrides) -> ExtractResult:
    """Extract features of every video under `source` (folder, list file, or VideoItems) into `out`.

    `encoder` may be passed already loaded (the options' encoder/checkpoint are then ignored).
    With `adapter` (a file from train-adapter) the store receives sanitized features only.
    """
    options = options or ExtractOptions()
    for name, value in overrides.items():
        setattr(options, name, value)
    _check_options(options)
    device = resolve_device(options.device)
    videos = find_videos(source) if isinstance(source, (str, Path)) else list(source)
    if encoder is None:
        from anonfeat.encoders import load_encoder

        encoder = load_encoder(options.encoder, options.checkpoint, options.random_init, device)
    else:
        encoder = encoder.to(device).eval()
    cfg = encoder.config
    sampling = sampling_for(options, cfg.clip_len)
    header = store_header(encoder, sampling, options.dtype)
    transform = None
    if adapter is not None:
        from anonfeat.adapter.io import load_adapter
        from anonfeat.adapter.sanitize import feature_transform, sanitized_header

        loaded = load_adapter(adapter, device)
        loaded.check_store(header, f"--encoder {cfg.name}")
        header, transform = sanitized_header(header, loaded), feature_transform(loaded)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = ExtractResult(store=out, total=len(videos))
    started = time.perf_counter()
    with FeatureStore(out, "a") as store:
        store.initialize(header)
        todo = []
        for item in videos:
            (result.skipped if store.is_complete(item.key) else todo).append(item)
        writer = StoreWriter(store, options.compression)
        try:
            _run(todo, encoder, sampling, options, device, writer, result, transform)
        finally:
            writer.close()
    result.seconds = time.perf_counter() - started
    return result


def clip_loader(videos: list[VideoItem], sampling: Sampling, input_size: int, batch_size: int, workers: int,
                device: torch.device) -> DataLoader:
    """The decoding side of a run: messages (VideoStart, ClipChunk, VideoFailed) from `workers`
    DataLoader processes (0: the calling process), chunks of `batch_size` clips."""
    stream = VideoClipStream(videos, sampling, input_size, chunk_clips=batch_size)
    workers = min(workers, len(videos))
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def _run(videos: list[VideoItem], encoder: nn.Module, sampling: Sampling, options: ExtractOptions,
         device: torch.device, writer: StoreWriter, result: ExtractResult,
         transform: FeatureTransform | None) -> None:
    if not videos:
        return
    cfg = encoder.config
    mean = torch.tensor(cfg.mean, device=device)
    std = torch.tensor(cfg.std, device=device)
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loader = clip_loader(videos, sampling, cfg.img_size, options.batch_size, options.workers, device)
    open_videos: dict[str, _VideoFeatures] = {}
    batcher = _ClipBatcher(options.batch_size)

    def finish(key: str) -> None:
        video = open_videos.pop(key)
        clip_feats, static_feats = video.parts[CLIP], video.parts[STATIC] if video.start.n_static else None
        if transform is not None:
            clip_feats, static_feats = transform(clip_feats, static_feats)
        start = video.start
        writer.write(VideoRecord(
            key=key, clip_features=clip_feats.numpy(), clip_ranges=start.clip_ranges,
            static_features=None if static_feats is None else static_feats.numpy(),
            static_frames=start.static_frames if static_feats is not None else None, attrs=start.attrs))
        result.written.append(key)
        progress.advance(key)

    def run_batch(clips: torch.Tensor, routes: list) -> None:
        with torch.inference_mode(), autocast(device):
            features = encoder(clips).float().cpu()
        result.clips += len(features)
        offset = 0
        for key, kind, row, count in routes:
            if key in open_videos:  # a video that failed mid-way has been dropped
                video = open_videos[key]
                video.put(kind, row, features[offset:offset + count])
                if video.remaining == 0:
                    finish(key)
            offset += count

    progress = _Progress(len(videos), options.progress, result)
    with progress:
        for message in loader:
            if isinstance(message, VideoStart):
                open_videos[message.key] = _VideoFeatures(message, cfg.embed_dim)
            elif isinstance(message, VideoFailed):
                open_videos.pop(message.key, None)
                writer.fail(message.key, message.error, message.source)
                result.failed[message.key] = message.error
                progress.advance(message.key, failed=True)
            else:
                chunk: ClipChunk = message
                frames = chunk.frames.to(device, non_blocking=True)
                index = chunk.index.to(device, non_blocking=True)
                clips = to_clips(frames, index, cfg.img_size, mean, std, compute_dtype)
                for batch in batcher.add(chunk.key, chunk.kind, chunk.start, clips):
                    run_batch(*batch)
        for batch in batcher.flush():
            run_batch(*batch)
    if open_videos:  # cannot happen unless a worker stopped early; never write partial videos
        for key in open_videos:
            result.failed[key] = "decoding stopped before all clips were read"


class _Progress:
    """A rich progress bar over videos with clips/s; silent when disabled."""

    def __init__(self, total: int, enabled: bool, result: ExtractResult):
        self.enabled, self.result = enabled, result
        self.started = time.perf_counter()
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("videos"), TextColumn("{task.fields[rate]}"),
                                 TextColumn("{task.fields[failed]}"), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn())
            self._task = self._bar.add_task("extract", total=total, rate="", failed="")

    def __enter__(self) -> "_Progress":
        if self.enabled:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)

    def advance(self, key: str, failed: bool = False) -> None:
        if not self.enabled:
            return
        rate = self.result.clips / max(time.perf_counter() - self.started, 1e-9)
        n_failed = len(self.result.failed)
        self._bar.update(self._task, advance=1, rate=f"{rate:.1f} clips/s",
                         failed=f"[red]{n_failed} failed[/]" if n_failed else "")
