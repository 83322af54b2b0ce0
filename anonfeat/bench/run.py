"""`anonfeat bench`: how fast extraction is, where the time goes, and how much memory it takes.

Everything is measured in one process on generated videos (a panning texture with a moving square,
H.264 with a keyframe every 2 s), with the same encoder, batch size and sampling for every figure:

- decode_cps:   the real decoding path alone (`clip_loader` workers + `to_clips` on the device);
- encode_cps:   the encoder alone on ready, normalized clip batches;
- e2e_cps:      `anonfeat.extract.extract` into a fresh HDF5 store;
- naive_cps:    the way common extraction scripts work (anonfeat.bench.naive): one video at a time,
                each clip decoded on its own at full resolution (decord `get_batch`, which seeks; PyAV
                seeking to the clip's keyframe when decord is not installed: settings.naive_decoder), resized with
                `F.interpolate`, one clip per fp32 forward pass, each feature written as it comes;
- sanitize_cps: the anonymizing adapter (random weights) over the features cached in the e2e store,
                many videos per padded forward pass as `anonfeat sanitize` does (one video per pass,
                as `extract --adapter` does, is reported as sanitize_per_video_cps);
- rss_short_mb / rss_long_mb: peak memory of `extract` in a fresh process on a short and on a long
                video of the same frame size (anonfeat.bench.memory): the main process's peak resident set plus each
                decoding worker's peak of private memory (pages shared after fork count once; the
                sum of every process's own peak, which counts them in each, is rss_sum_mb).

overlap_efficiency = e2e / bound: the bound is min(decode, encode) on a GPU (decoding on the CPU and
the encoder on the GPU can run fully in parallel) and 1 / (1/decode + 1/encode) on a CPU (both
share the same cores, so the best a pipeline can do is never to idle).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from anonfeat.bench.memory import extract_peak_rss
from anonfeat.bench.naive import naive_decoder_name, naive_extract
from anonfeat.errors import AnonfeatError
from anonfeat.options import BenchOptions, parse_size, with_overrides
from anonfeat.synth import write_texture_video

RESULT_KEYS = ("decode_cps", "encode_cps", "e2e_cps", "naive_cps", "sanitize_cps", "speedup_vs_naive",
               "overlap_efficiency", "rss_short_mb", "rss_long_mb", "device", "decoder")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common cards, matched on the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.0}

Log = Callable[[str], None]


@dataclass
class Samples:
    decode: list[float] = field(default_factory=list)
    encode: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    e2e_decode_wait_s: list[float] = field(default_factory=list)  # e2e main loop waiting for frames
    e2e_device_wait_s: list[float] = field(default_factory=list)  # ... and for the model's outputs


# -- generated videos --------------------------------------------------------------------------


def bench_video_set(root: Path, n_videos: int, n_frames: int, width: int, height: int, fps: float,
                    log: Log) -> list:
    """The throughput set, generated once per (count, length, size) under `root`."""
    from anonfeat.video.discover import VideoItem

    folder = root / f"set_{width}x{height}_{n_frames}f_{fps:g}fps"
    items = []
    for i in range(n_videos):
        path = folder / f"{i:03d}.mp4"
        if not path.is_file():
            if i == 0 or not items:
                log(f"generating {n_videos} videos of {n_frames} frames at {width}x{height} in {folder}")
            write_texture_video(path, n_frames, width, height, fps, seed=i)
        items.append(VideoItem(path.name, path))
    return items


def bench_long_video(root: Path, seconds: float, width: int, height: int, fps: float, log: Log) -> Path:
    path = root / f"long_{width}x{height}_{seconds:g}s_{fps:g}fps.mp4"
    if not path.is_file():
        log(f"generating a {seconds:g} s {width}x{height} video in {path} (cached for later runs with --cache-dir)")
        # ultrafast keeps a 10-minute 720p video at a few minutes to write; memory does not depend on it
        write_texture_video(path, max(1, round(seconds * fps)), width, height, fps, seed=1000, preset="ultrafast")
    return path


# -- FLOPs ----------------------------------------------------------------------------------------
def encoder_flops_per_clip(cfg) -> float:
    """Forward FLOPs (2 x multiply-adds) of one clip, as the encoder's family counts them (NaN where
    it has no formula); see EncoderFamily.flops_per_clip."""
    from anonfeat.encoders.families import family_of

    return family_of(cfg).flops_per_clip(cfg)


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


# -- timing helpers -------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -- the phases -----------------------------------------------------------------------------------
def decode_only(items: list, sampling, encoder, batch_size: int, workers: int, device: torch.device,
                decoder=None) -> tuple[int, float]:
    """(clips, seconds) through the extract loader (`decoder`, default the CPU path) and `to_clips`,
    without the encoder."""
    from anonfeat.encoders import frame_resize
    from anonfeat.extract import clip_loader
    from anonfeat.video.stream import ClipChunk, to_clips

    cfg = encoder.config
    mean = torch.tensor(cfg.mean, device=device)
    std = torch.tensor(cfg.std, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clips = 0
    started = time.perf_counter()
    for message in clip_loader(items, sampling, cfg.img_size, batch_size, workers, device,
                               frame_resize(cfg, sampling.resize), decoder):
        if isinstance(message, ClipChunk):
            frames = message.frames.to(device, non_blocking=True)
            index = message.index.to(device, non_blocking=True)
            clips += len(to_clips(frames, index, cfg.img_size, mean, std, dtype))
    _sync(device)
    return clips, time.perf_counter() - started


def encode_only(encoder, batch_size: int, n_clips: int, device: torch.device,
                compile: bool = False) -> tuple[int, float]:
    """(clips, seconds) of the encoder alone on ready batches, as extract feeds it (bf16 autocast on
    CUDA, torch.compile when extract would use it; the warm-up call compiles, untimed)."""
    from anonfeat.device import CompiledForward, autocast

    cfg = encoder.config
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, cfg.clip_len, cfg.img_size, cfg.img_size, generator=gen).to(device, dtype)
    steps = max(2, math.ceil(n_clips / batch_size))
    if compile:
        encoder = CompiledForward(encoder)
    with torch.inference_mode(), autocast(device):
        encoder(x)  # warm-up (kernel selection, allocator, compilation)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            encoder(x).float()
        _sync(device)
    return steps * batch_size, time.perf_counter() - started


def end_to_end(items: list, store: Path, encoder, options: BenchOptions, sampling_kw: dict):
    """The ExtractResult of `extract` into a fresh store (clips, seconds and where the loop waited)."""
    from anonfeat.extract import ExtractOptions, extract

    if store.exists():
        store.unlink()
    opts = ExtractOptions(batch_size=options.batch_size, workers=options.workers, device=options.device,
                          dtype="float16", progress=False, compile=options.compile, decoder=options.decoder,
                          **sampling_kw)
    result = extract(items, store, opts, encoder=encoder)
    if result.failed:
        raise AnonfeatError(f"bench extraction failed: {result.failed}")
    return result


def sanitize_throughput(store: Path, device: torch.device, min_seconds: float = 1.0,
                        group_size: int = 128) -> tuple[float, float, int]:
    """Clips/s of a randomly initialized adapter over the features cached in `store`.

    Returns (grouped, per_video, typical sequence length): grouped is how `anonfeat sanitize`
    works (up to `group_size` videos in one padded forward pass), per_video how `extract --adapter`
    does it (each video's sequence alone, as it is finished).
    """
    from anonfeat.adapter.model import AnonymizingAdapter, sanitize_features
    from anonfeat.store import FeatureStore

    with FeatureStore(store) as fs:
        feats = [torch.from_numpy(fs.clip_features(k)) for k in fs.videos()]
    dim = feats[0].shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = AnonymizingAdapter(dim)
        for module in adapter.modules():  # zero-initialized projections would make it the identity
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.02)
    every = torch.cat(feats)
    adapter.set_statistics(every.mean(0), every.std(0) if len(every) > 1 else torch.ones(dim))  # one clip: no spread
    adapter = adapter.to(device)
    groups = [feats[i:i + group_size] for i in range(0, len(feats), group_size)]

    def rate(step) -> float:
        step()  # warm-up
        _sync(device)
        clips, started = 0, time.perf_counter()
        while True:
            clips += step()
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return clips / elapsed

    def grouped() -> int:
        for group in groups:
            sanitize_features(adapter, group)
        return len(every)

    def per_video() -> int:
        for f in feats:
            sanitize_features(adapter, f)
        return len(every)

    return rate(grouped), rate(per_video), int(statistics.median(len(f) for f in feats))


# -- the whole benchmark ------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def overlap_bound(decode_cps: float, encode_cps: float, device: torch.device) -> float:
    """Best possible end-to-end rate: parallel on a GPU, serial on a CPU (shared cores)."""
    if device.type == "cuda":
        return min(decode_cps, encode_cps)
    return 1.0 / (1.0 / decode_cps + 1.0 / encode_cps)


def run_bench(options: BenchOptions | None = None, log: Log | None = None, **overrides) -> dict:
    """Run every measurement; returns the result dict (RESULT_KEYS plus settings and samples)."""
    from anonfeat.device import resolve_device, use_compile
    from anonfeat.encoders import load_encoder
    from anonfeat.extract import sampling_for, ExtractOptions

    options = with_overrides(options, BenchOptions, overrides)
    log = log or (lambda message: None)
    options.validate()
    width, height = parse_size(options.size)
    long_w, long_h = parse_size(options.long_size)
    device = resolve_device(options.device)
    from anonfeat.video.decoders import select_decoder

    decoder = select_decoder(options.decoder, device)  # refused here, before any video is generated
    compiled = use_compile(options.compile, device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)

    encoder = load_encoder(options.encoder, options.checkpoint, random_init=options.checkpoint is None, device=device)
    cfg = encoder.config
    clip_stride = options.clip_stride or max(1, cfg.clip_len * options.frame_stride // 4)
    sampling_kw = dict(frame_stride=options.frame_stride, clip_stride=clip_stride)
    sampling = sampling_for(ExtractOptions(**sampling_kw), cfg.clip_len)

    with tempfile.TemporaryDirectory(prefix="anonfeat-bench-") as tmp:
        tmp = Path(tmp)
        cache = Path(options.cache_dir) if options.cache_dir else tmp / "videos"
        items = bench_video_set(cache, options.videos, options.frames, width, height, options.fps, log)
        naive_items = items[:options.naive_videos]
        samples = Samples()
        store = tmp / "e2e.h5"
        n_clips = 0
        for r in range(options.repeats):
            log(f"round {r + 1}/{options.repeats}: decode-only")
            clips, seconds = decode_only(items, sampling, encoder, options.batch_size, options.workers, device,
                                         decoder)
            samples.decode.append(clips / seconds)
            n_clips = clips
            log(f"round {r + 1}/{options.repeats}: encode-only")
            clips, seconds = encode_only(encoder, options.batch_size, n_clips, device, compiled)
            samples.encode.append(clips / seconds)
            log(f"round {r + 1}/{options.repeats}: end-to-end extract")
            run = end_to_end(items, store, encoder, options, sampling_kw)
            samples.e2e.append(run.clips / run.seconds)
            samples.e2e_decode_wait_s.append(run.decode_wait_s)
            samples.e2e_device_wait_s.append(run.device_wait_s)
            log(f"round {r + 1}/{options.repeats}: naive reference")
            clips, seconds = naive_extract(naive_items, tmp / "naive.h5", encoder, sampling, device)
            samples.naive.append(clips / seconds)
        log("sanitize")
        sanitize_cps, sanitize_per_video_cps, seq_len = sanitize_throughput(store, device)

        decode_cps, encode_cps = _median(samples.decode), _median(samples.encode)
        e2e_cps, naive_cps = _median(samples.e2e), _median(samples.naive)
        memory: dict = {}
        if not options.skip_memory:
            mem_opts = dict(encoder=cfg.name, checkpoint=None if options.checkpoint is None else str(options.checkpoint),
                            random_init=options.checkpoint is None, batch_size=options.batch_size,
                            workers=options.workers, device=options.device, progress=False,
                            decoder=options.decoder, **sampling_kw)
            for name, seconds in (("short", options.short_seconds), ("long", options.long_seconds)):
                video = bench_long_video(cache, seconds, long_w, long_h, options.fps, log)
                log(f"peak memory: extract on the {name} video ({seconds:g} s {long_w}x{long_h})")
                memory[name] = extract_peak_rss(video, tmp / f"mem_{name}.h5", mem_opts)

    flops = encoder_flops_per_clip(cfg)
    peak = options.peak_tflops or bf16_peak_tflops(device)
    encode_tflops = flops * encode_cps / 1e12 if math.isfinite(flops) else float("nan")
    result = {
        "decode_cps": decode_cps,
        "encode_cps": encode_cps,
        "e2e_cps": e2e_cps,
        "naive_cps": naive_cps,
        "sanitize_cps": sanitize_cps,
        "speedup_vs_naive": e2e_cps / naive_cps,
        "overlap_efficiency": e2e_cps / overlap_bound(decode_cps, encode_cps, device),
        "rss_short_mb": memory["short"]["rss_mb"] if memory else None,
        "rss_long_mb": memory["long"]["rss_mb"] if memory else None,
        "device": str(device),
        "decoder": decoder.name,
        "overlap_bound_cps": overlap_bound(decode_cps, encode_cps, device),
        "sanitize_per_video_cps": sanitize_per_video_cps,
        "e2e_decode_wait_s": _median(samples.e2e_decode_wait_s),  # per e2e run, median of the rounds
        "e2e_device_wait_s": _median(samples.e2e_device_wait_s),
        "encode_gflops_per_clip": flops / 1e9,
        "encode_tflops": encode_tflops,
        "bf16_peak_tflops": peak,
        "encode_peak_fraction": encode_tflops / peak if peak and device.type == "cuda" else None,
        "overlap_efficiency_rounds": [e / overlap_bound(d, c, device)  # each round's own three figures
                                      for d, c, e in zip(samples.decode, samples.encode, samples.e2e)],
        "rss_ratio": memory["long"]["rss_mb"] / memory["short"]["rss_mb"] if memory else None,
        "pss_ratio": memory["long"]["pss_mb"] / memory["short"]["pss_mb"] if memory else None,
        "rss_sum_ratio": memory["long"]["rss_sum_mb"] / memory["short"]["rss_sum_mb"] if memory else None,
        "memory": memory,
        "samples": asdict(samples),
        "settings": {
            "encoder": cfg.name, "checkpoint": str(options.checkpoint) if options.checkpoint else None,
            "input": f"{cfg.clip_len}x{cfg.img_size}", "batch_size": options.batch_size,
            "workers": options.workers, "clip_len": cfg.clip_len, "frame_stride": options.frame_stride,
            "clip_stride": clip_stride, "videos": options.videos, "frames": options.frames,
            "size": f"{width}x{height}", "fps": options.fps, "clips_per_round": n_clips,
            "naive_videos": len(naive_items), "repeats": options.repeats, "statistic": "median",
            "sanitize_sequence_length": seq_len, "long_seconds": options.long_seconds,
            "short_seconds": options.short_seconds, "long_size": f"{long_w}x{long_h}",
            "skip_memory": options.skip_memory, "stored_dtype": "float16",
            "compute_dtype": "bfloat16" if device.type == "cuda" else "float32", "compile": compiled,
            "naive_decoder": naive_decoder_name(),
        },
        "machine": machine_info(device),
    }
    return result
