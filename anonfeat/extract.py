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

from anonfeat.device import CompiledForward, autocast, resolve_device, use_compile
from anonfeat.encoders import family_of, frame_resize
from anonfeat.encoders.config import EncoderConfig
from anonfeat.errors import AnonfeatError, first_line
from anonfeat.heap import HeapTrimmer
from anonfeat.options import ExtractOptions, with_overrides
from anonfeat.paths import check_outputs
from anonfeat.progress import RichBar
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord, finite_in
from anonfeat.video.decoders import DecoderBackend, select_decoder
from anonfeat.video.discover import VideoItem, check_keys, find_videos
from anonfeat.video.resize import PilResize
from anonfeat.video.sampling import Sampling
from anonfeat.video.stream import CLIP, STATIC, ClipChunk, VideoClipStream, VideoFailed, VideoStart, to_clips

# (clip_features (n, D), static_features (m, D) | None) -> same: the anonymizing adapter.
FeatureTransform = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]
# (raw header, compute device) -> (header of the store written, FeatureTransform): handed in by the
# caller to rewrite features before they are stored (anonfeat.adapter.sanitize.adapter_transform);
# it checks the raw features fit it. The pipeline itself knows no adapter. A maker may name the
# files it reads as `inputs` ({flag: path}); no output is ever written over them.
TransformMaker = Callable[[StoreHeader, torch.device], tuple[StoreHeader, FeatureTransform]]


def transform_inputs(transform: TransformMaker | None) -> dict:
    """{flag: path} of the files `transform` reads (none when it names none)."""
    return dict(getattr(transform, "inputs", None) or {})
FEATURES = "features"


@dataclass
class ClipJob:
    """What a store-writing run computes: `infer` maps a batch of normalized clips (B, 3, T, s, s) to
    {"features": (B, D), **other per-clip outputs}; the other outputs of motion clips are stored as
    extra datasets of the video (e.g. pruning indices). `on_video` runs (in the writer thread) just
    before a video is written, e.g. to save an anonymized copy of it."""

    infer: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    input: EncoderConfig  # clip length, input size, mean and std the model expects
    transform: FeatureTransform | None = None
    on_video: Callable[[VideoRecord], None] | None = None
    label: str = "extract"
    fixed_batch: bool = False  # pad a short last batch to the batch size (compiled models: no recompile)
    check_videos: Callable[[list[VideoItem]], None] | None = None  # refuse the run before any work (output names)


def encoder_job(encoder: nn.Module, transform: FeatureTransform | None = None, compile: bool = False) -> ClipJob:
    forward = CompiledForward(encoder) if compile else encoder
    return ClipJob(infer=lambda clips: {FEATURES: forward(clips)}, input=encoder.config, transform=transform,
                   fixed_batch=compile)


@dataclass
class ExtractResult:
    store: Path
    total: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    clips: int = 0
    seconds: float = 0.0
    decode_wait_s: float = 0.0  # time the main loop waited for decoded frames (decoding is the bound)
    device_wait_s: float = 0.0  # time it waited for the model's outputs (the model is the bound)
    heap_trims: int = 0  # malloc_trim calls of the main process (anonfeat.heap) and their total time
    heap_trim_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. folders that could not be read (their videos are missing)
    is_main: bool = True  # this process reports the run (rank 0 of a launched job, or the only process)
    decoder: str = "cpu"  # the backend that decoded the run (--decoder resolved)
    decoder_fallbacks: list[str] = field(default_factory=list)  # videos it could not decode: the CPU path did

    @property
    def exit_code(self) -> int:
        return 3 if self.failed or self.warnings else 0

    def to_json(self) -> dict:
        """The summary `extract --json` and `prune --json` write (schema in docs/cli.md)."""
        return {"store": str(self.store), "total": self.total, "written": list(self.written),
                "skipped": list(self.skipped), "failed": dict(self.failed), "clips": self.clips,
                "seconds": round(self.seconds, 3), "decode_wait_s": round(self.decode_wait_s, 3),
                "device_wait_s": round(self.device_wait_s, 3), "warnings": list(self.warnings),
                "decoder": self.decoder, "decoder_fallbacks": list(self.decoder_fallbacks),
                "exit_code": self.exit_code}


# -- assembling features per video -------------------------------------------------------------
class _VideoFeatures:
    """Collects one video's per-clip outputs as batches come back in any order."""

    def __init__(self, start: VideoStart):
        self.start = start
        self.sizes = {CLIP: start.n_clips, STATIC: start.n_static}
        self.parts: dict[str, dict[str, torch.Tensor]] = {CLIP: {}, STATIC: {}}
        self.remaining = start.n_clips + start.n_static

    def put(self, kind: str, row: int, outputs: dict[str, torch.Tensor]) -> None:
        parts = self.parts[kind]
        for name, value in outputs.items():
            if kind == STATIC and name != FEATURES:
                continue
            if name not in parts:
                parts[name] = torch.empty((self.sizes[kind], *value.shape[1:]), dtype=value.dtype)
            parts[name][row:row + len(value)] = value
        self.remaining -= len(outputs[FEATURES])


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

    def __init__(self, store: FeatureStore, compression: str | None,
                 on_video: Callable[[VideoRecord], None] | None = None):
        self.store = store
        self.compression = compression
        self.on_video = on_video
        self.late_failures: dict[str, str] = {}  # videos whose `on_video` step failed
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
                    self._write(job)
                else:
                    self.store.record_failure(*job)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self._error = exc

    def _write(self, record: VideoRecord) -> None:
        if self.on_video is not None:
            try:
                self.on_video(record)
            except (OSError, ValueError, RuntimeError, AnonfeatError) as exc:  # this video's outputs only
                error = f"saving outputs failed: {first_line(exc)}"
                self.late_failures[record.key] = error
                self.store.record_failure(record.key, error, str(record.attrs.get("source", "")))
                return
        self.store.write_video(record, self.compression)

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
    """The clip sampling of `options`: by time with sample_fps, else by frames (frame_stride, default 4)."""
    return Sampling(clip_len=options.clip_len or clip_len_default, frame_stride=options.frame_stride,
                    clip_stride=options.clip_stride, num_clips=options.num_clips,
                    static_clips=options.static_clips, resize=options.resize, sample_fps=options.sample_fps)


def store_header(cfg: EncoderConfig, checkpoint_sha256: str, sampling: Sampling, dtype: str,
                 **fields) -> StoreHeader:
    """The root header of a store made by `cfg`'s model with these weights and this sampling;
    `fields`: the other StoreHeader fields (features, extra, ...)."""
    return StoreHeader(encoder=cfg.name, encoder_config=cfg, checkpoint_sha256=checkpoint_sha256,
                       sampling={**sampling.to_dict(), "input_size": cfg.img_size}, dim=cfg.embed_dim,
                       dtype=dtype, **fields)


def check_clip_len(clip_len: int | None, cfg: EncoderConfig) -> None:
    """Before any header is written: a video ViT takes clips of exactly its frame count (its tubelets
    and position table are fixed); other lengths would fail on the first batch."""
    if clip_len is not None and family_of(cfg).video_vit and clip_len != cfg.clip_len:
        raise AnonfeatError(f"--clip-len {clip_len}: encoder {cfg.name} takes clips of exactly {cfg.clip_len} "
                            "frames; leave --clip-len out (use --frame-stride to span more time)")


def extract(source: str | Path | Iterable[VideoItem], out: str | Path, options: ExtractOptions | None = None,
            encoder: nn.Module | None = None, transform: TransformMaker | None = None, **overrides) -> ExtractResult:
    """Extract features of every video under `source` (folder, list file, or VideoItems) into `out`.

    `encoder` may be passed already loaded (the options' encoder/checkpoint are then ignored).
    With `transform` (e.g. `adapter_transform(path)` of a file from train-adapter) the store receives
    the transformed (sanitized) features only, under the header it returns.
    """
    options = with_overrides(options, ExtractOptions, overrides)
    check_outputs({"--out": out}, {"VIDEOS": source if isinstance(source, (str, Path)) else None,
                                   "--checkpoint": options.checkpoint, **transform_inputs(transform)})
    options.validate()
    device = resolve_device(options.device)
    decoder = select_decoder(options.decoder, device)  # refused here, before any model is loaded
    if encoder is None:
        from anonfeat.encoders import load_encoder

        encoder = load_encoder(options.encoder, options.checkpoint, options.random_init, device)
    else:
        encoder = encoder.to(device).eval()
    cfg = encoder.config
    check_clip_len(options.clip_len, cfg)
    sampling = sampling_for(options, cfg.clip_len)
    header = store_header(cfg, encoder.checkpoint_sha256, sampling, options.dtype)
    features = None
    if transform is not None:
        header, features = transform(header, device)
    job = encoder_job(encoder, features, compile=use_compile(options.compile, device))
    return write_store(source, out, header, sampling, job, options, device, decoder)


def write_store(source: str | Path | Iterable[VideoItem], out: str | Path, header: StoreHeader, sampling: Sampling,
                job: ClipJob, options: ExtractOptions, device: torch.device,
                decoder: DecoderBackend | None = None) -> ExtractResult:
    """The per-video loop every store-writing command shares: discover, skip finished videos, decode,
    run `job` on batches of clips, write each video as it completes; bad videos are recorded and skipped.
    `decoder`: the backend (default: `options.decoder` resolved for `device`)."""
    decoder = decoder or select_decoder(options.decoder, device)
    warnings: list[str] = []
    videos = find_videos(source, warnings) if isinstance(source, (str, Path)) else list(source)
    check_keys(videos, source if isinstance(source, (str, Path)) else "videos")
    if job.check_videos is not None:
        job.check_videos(videos)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = ExtractResult(store=out, total=len(videos), warnings=warnings, decoder=decoder.name)
    started = time.perf_counter()
    with FeatureStore(out, "a") as store:
        store.initialize(header)
        todo = []
        for item in videos:
            (result.skipped if store.is_complete(item.key) else todo).append(item)
        writer = StoreWriter(store, options.compression, job.on_video)
        try:
            _run(todo, job, sampling, options, device, writer, result, decoder)
        finally:
            writer.close()
            for key, error in writer.late_failures.items():
                result.written.remove(key)
                result.failed[key] = error
    result.seconds = time.perf_counter() - started
    return result


def clip_loader(videos: list[VideoItem], sampling: Sampling, input_size: int, batch_size: int, workers: int,
                device: torch.device, frame_resize: PilResize | None = None,
                decoder: DecoderBackend | None = None) -> DataLoader:
    """The decoding side of a run: messages (VideoStart, ClipChunk, VideoFailed) from `workers`
    DataLoader processes (0: the calling process), chunks of `batch_size` clips, decoded by `decoder`
    (default: the CPU path); `frame_resize` as the encoder's family says (anonfeat.encoders.frame_resize)."""
    stream = VideoClipStream(videos, sampling, input_size, chunk_clips=batch_size, frame_resize=frame_resize,
                             **({} if decoder is None else {"decoder": decoder}))
    workers = min(workers, len(videos))
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def _run(videos: list[VideoItem], job: ClipJob, sampling: Sampling, options: ExtractOptions,
         device: torch.device, writer: StoreWriter, result: ExtractResult, decoder: DecoderBackend) -> None:
    if not videos:
        return
    cfg = job.input
    mean = torch.tensor(cfg.mean, device=device)
    std = torch.tensor(cfg.std, device=device)
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loader = clip_loader(videos, sampling, cfg.img_size, options.batch_size, options.workers, device,
                         frame_resize(cfg, sampling.resize), decoder)
    open_videos: dict[str, _VideoFeatures] = {}
    batcher = _ClipBatcher(options.batch_size)

    def finish(key: str) -> None:
        video = open_videos.pop(key)
        clip_parts, static_parts = video.parts[CLIP], video.parts[STATIC]
        clip_feats = clip_parts[FEATURES]
        static_feats = static_parts[FEATURES] if video.start.n_static else None
        if job.transform is not None:
            clip_feats, static_feats = job.transform(clip_feats, static_feats)
        start = video.start
        stored = np.dtype(options.dtype)
        if not all(finite_in(x.numpy(), stored) for x in (clip_feats, static_feats) if x is not None):
            error = (f"the model produced NaN or Inf features (in {stored}); nothing of this video was written: "
                     "check the model file, or use --dtype float32 if values overflow float16")
            writer.fail(key, error, str(start.source))
            result.failed[key] = error
            progress.advance(key, failed=True)
            return
        writer.write(VideoRecord(
            key=key, clip_features=clip_feats.numpy(), clip_ranges=start.clip_ranges, clip_times=start.clip_times,
            static_features=None if static_feats is None else static_feats.numpy(),
            static_frames=start.static_frames if static_feats is not None else None, attrs=start.attrs,
            extras={name: value.numpy() for name, value in clip_parts.items() if name != FEATURES}))
        result.written.append(key)
        progress.advance(key)

    in_flight: list[_Flight] = []  # on CUDA, one batch whose outputs are still on their way to the host

    def run_batch(clips: torch.Tensor, routes: list) -> None:
        """Launch `clips`, then route the previous batch: the GPU never waits for the host's routing,
        writing or the next chunk's arrival (on the CPU every batch completes at once)."""
        n = len(clips)
        if job.fixed_batch and n < options.batch_size:
            clips = torch.cat((clips, clips.new_zeros((options.batch_size - n, *clips.shape[1:]))))
        with torch.inference_mode(), autocast(device):
            outputs = {name: value[:n] for name, value in job.infer(clips).items()}
        # bf16 (CUDA autocast) comes back as float32; float16 and integer outputs keep their type
        outputs = {name: value.float() if value.dtype == torch.bfloat16 else value for name, value in outputs.items()}
        flight = _Flight.launch(outputs, routes, n)
        if in_flight:
            route(in_flight.pop())
        if flight.done is None:
            route(flight)
        else:
            in_flight.append(flight)

    def route(flight: "_Flight") -> None:
        result.device_wait_s += flight.wait()
        outputs, routes = flight.outputs, flight.routes
        result.clips += flight.clips
        offset = 0
        for key, kind, row, count in routes:
            if key in open_videos:  # a video that failed mid-way has been dropped
                video = open_videos[key]
                video.put(kind, row, {name: value[offset:offset + count] for name, value in outputs.items()})
                if video.remaining == 0:
                    finish(key)
            offset += count

    progress = _Progress(job.label, len(videos), options.progress, result)
    trimmer = HeapTrimmer()  # glibc would otherwise keep what the loop frees (see anonfeat.heap)
    try:
        with progress:
            for message in _timed(loader, result):
                if isinstance(message, VideoStart):
                    open_videos[message.key] = _VideoFeatures(message)
                    if message.fallback:
                        result.decoder_fallbacks.append(message.key)
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
                    trimmer.maybe()
            for batch in batcher.flush():
                run_batch(*batch)
            while in_flight:
                route(in_flight.pop())
    finally:
        result.heap_trims += trimmer.calls
        result.heap_trim_seconds += trimmer.seconds
    if open_videos:  # cannot happen unless a worker stopped early; never write partial videos
        for key in open_videos:
            result.failed[key] = "decoding stopped before all clips were read"


def _timed(messages: Iterable, result: ExtractResult) -> Iterator:
    """`messages`, adding the time spent waiting for each to `result.decode_wait_s`."""
    iterator = iter(messages)
    while True:
        started = time.perf_counter()
        try:
            message = next(iterator)
        except StopIteration:
            return
        finally:
            result.decode_wait_s += time.perf_counter() - started
        yield message


@dataclass
class _Flight:
    """A batch's outputs on their way to the host: CUDA copies into pinned memory without blocking,
    and `done` marks when they have landed."""

    outputs: dict[str, torch.Tensor]
    routes: list
    clips: int
    done: torch.cuda.Event | None

    @classmethod
    def launch(cls, outputs: dict[str, torch.Tensor], routes: list, clips: int) -> "_Flight":
        if not any(value.is_cuda for value in outputs.values()):
            return cls(outputs, routes, clips, None)
        host = {name: value.to("cpu", non_blocking=True) for name, value in outputs.items()}
        done = torch.cuda.Event()
        done.record()
        return cls(host, routes, clips, done)

    def wait(self) -> float:
        """Block until the outputs are on the host; the seconds it took (0 when they already were)."""
        if self.done is None:
            return 0.0
        started = time.perf_counter()
        self.done.synchronize()
        return time.perf_counter() - started


class _Progress(RichBar):
    """A progress bar over videos with clips/s and the failure count."""

    def __init__(self, label: str, total: int, enabled: bool, result: ExtractResult):
        self.result = result
        self.started = time.perf_counter()
        columns = []
        if enabled:
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("videos"), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[failed]}"),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        super().__init__(enabled, label, total, columns, rate="", failed="")

    def advance(self, key: str, failed: bool = False) -> None:
        if not self.enabled:
            return
        rate = self.result.clips / max(time.perf_counter() - self.started, 1e-9)
        n_failed = len(self.result.failed)
        self.step(rate=f"{rate:.1f} clips/s", failed=f"[red]{n_failed} failed[/]" if n_failed else "")
