"""`anonfeat bench` at tiny sizes: every figure is produced, positive and self-consistent.

Speed and memory targets are never asserted here (they depend on the machine and its load);
the benchmark command measures and reports them.
"""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import anonfeat.cli.bench  # noqa: F401  (registers the command)
from anonfeat.bench import (RESULT_KEYS, encoder_flops_per_clip, extract_peak_rss, overlap_bound, parse_size,
                            run_bench, targets, write_bench_video)
from anonfeat.cli import app
from anonfeat.errors import AnonfeatError

TINY = dict(videos=2, frames=40, size="96x64", repeats=1, naive_videos=1, batch_size=4, workers=1,
            device="cpu")


def _check_consistent(result: dict) -> None:
    for key in RESULT_KEYS:
        assert key in result
    for key in ("decode_cps", "encode_cps", "e2e_cps", "naive_cps", "sanitize_cps", "sanitize_per_video_cps"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["device"] == "cpu" and result["decoder"] == "cpu"
    assert result["speedup_vs_naive"] == pytest.approx(result["e2e_cps"] / result["naive_cps"])
    serial = 1 / (1 / result["decode_cps"] + 1 / result["encode_cps"])  # CPU: shared cores
    assert result["overlap_efficiency"] == pytest.approx(result["e2e_cps"] / serial)
    rounds = result["overlap_efficiency_rounds"]
    assert len(rounds) == result["settings"]["repeats"] and all(r > 0 for r in rounds)
    for name in ("decode", "encode", "e2e", "naive"):
        samples = result["samples"][name]
        assert len(samples) == result["settings"]["repeats"]
        assert min(samples) <= result[f"{name}_cps"] <= max(samples)  # the median of the rounds
    for name in ("e2e_decode_wait_s", "e2e_device_wait_s"):  # where the e2e loop waited, per round
        samples = result["samples"][name]
        assert len(samples) == result["settings"]["repeats"] and all(v >= 0 for v in samples)
        assert min(samples) <= result[name] <= max(samples)
    assert 0 < result["e2e_decode_wait_s"] < result["settings"]["clips_per_round"] / min(result["samples"]["e2e"])


def test_bench_api_without_memory(tmp_path):
    result = run_bench(**{**TINY, "repeats": 2}, skip_memory=True, cache_dir=tmp_path / "cache")
    _check_consistent(result)
    assert result["rss_short_mb"] is None and result["rss_long_mb"] is None
    s = result["settings"]
    # dense by default: clip stride below the clip's span, each frame used by several clips
    assert s["frame_stride"] == 2 and s["clip_stride"] == 16 * 2 // 4
    # 40 frames, span 31, stride 8 -> 2 clips per video, 2 videos
    assert s["clips_per_round"] == 4
    rows = {name: met for name, _, met in targets(result)}
    assert rows["rss_long_mb"] is None  # not measured, so neither passed nor failed
    # the generated videos are cached and reused
    assert len(list((tmp_path / "cache").rglob("*.mp4"))) == 2


@pytest.mark.integration
def test_bench_cli_with_memory_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--videos", "2", "--frames", "40", "--size", "96x64", "--repeats", "1",
            "--naive-videos", "1", "--batch-size", "4", "--workers", "1", "--long-seconds", "3",
            "--short-seconds", "0.5", "--long-size", "96x64", "--cache-dir", str(tmp_path / "cache"),
            "--json", str(out)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "overlap_efficiency" in run.output and "speedup_vs_naive" in run.output
    result = json.loads(out.read_text())
    _check_consistent(result)
    assert result["rss_short_mb"] > 0 and result["rss_long_mb"] > 0
    for name in ("short", "long"):
        mem = result["memory"][name]
        assert len(mem["workers_mb"]) >= 1  # the decoding worker first (an exec'd helper counts its own MB)
        # headline: main's peak + the worker's private memory; the sum of peaks counts shared pages twice
        assert mem["rss_mb"] == pytest.approx(mem["main_mb"] + sum(mem["workers_private_mb"]))
        assert mem["rss_sum_mb"] == pytest.approx(mem["main_mb"] + sum(mem["workers_mb"]))
        assert 0 < max(mem["workers_private_mb"]) < mem["workers_mb"][0]
        assert mem["main_mb"] < mem["rss_mb"] < mem["rss_sum_mb"]
        assert 0 < mem["pss_mb"] <= mem["rss_sum_mb"] * 1.01
        assert mem["heap_trims"] >= 0 and mem["heap_trim_seconds"] >= 0
    assert result["memory"]["long"]["clips"] > result["memory"]["short"]["clips"]
    assert result["rss_ratio"] == pytest.approx(result["rss_long_mb"] / result["rss_short_mb"])
    assert result["rss_sum_ratio"] == pytest.approx(result["memory"]["long"]["rss_sum_mb"]
                                                    / result["memory"]["short"]["rss_sum_mb"])
    assert result["machine"]["cpu_cores"] >= 1


@pytest.mark.integration
def test_peak_rss_reports_failures(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    opts = dict(encoder="videomae-tiny", random_init=True, device="cpu", workers=0, progress=False)
    with pytest.raises(AnonfeatError, match="memory run"):
        extract_peak_rss(bad, tmp_path / "m.h5", opts)


def test_generated_video_decodes_to_the_requested_shape(tmp_path):
    path = write_bench_video(tmp_path / "v.mp4", 45, 96, 64, fps=30.0, seed=3)
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (45, 64, 96, 3)
    assert all((frames[i] != frames[i + 1]).any() for i in range(44))  # every frame moves
    assert not list(tmp_path.glob("*.part*"))


def test_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from anonfeat.encoders import load_encoder

    encoder = load_encoder("videomae-tiny", random_init=True)
    cfg = encoder.config
    x = torch.zeros(1, 3, cfg.clip_len, cfg.img_size, cfg.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(x)
    attention = cfg.depth * 4 * cfg.num_tokens ** 2 * cfg.embed_dim  # q@k and attn@v, counted by us
    counted = counter.get_total_flops()
    if counted < encoder_flops_per_clip(cfg) - attention / 2:  # this torch does not count SDPA on CPU
        counted += attention
    assert counted == pytest.approx(encoder_flops_per_clip(cfg), rel=1e-6)


def test_videomae_b_flops_are_the_known_180_gmacs():
    from anonfeat.encoders import get_config

    assert encoder_flops_per_clip(get_config("videomae-b")) / 2e9 == pytest.approx(180, rel=0.01)


def test_overlap_bound_cpu_serial_gpu_parallel():
    assert overlap_bound(30.0, 60.0, torch.device("cpu")) == pytest.approx(20.0)
    assert overlap_bound(30.0, 60.0, torch.device("cuda:0")) == pytest.approx(30.0)


@pytest.mark.parametrize("text", ["640", "64x", "15x16", "65x64", "axb"])
def test_bad_sizes_are_user_errors(text):
    with pytest.raises(AnonfeatError):
        parse_size(text)
    assert parse_size("640x360") == (640, 360)


# A process of ~200 MB that starts short-lived helpers the way libraries do at import (ctypes runs
# `ldconfig -p`, platform runs `uname -p`: vfork + exec, sharing its memory until the exec) and one
# long-lived forked child that touches 20 MB of its own, as a decoding worker does.
_TREE = r"""
import mmap, os, subprocess, time
big = mmap.mmap(-1, 200 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # copied at fork, as a heap
if hasattr(mmap, "MADV_NOHUGEPAGE"):  # small pages: khugepaged must not unshare them behind our back
    big.madvise(mmap.MADV_NOHUGEPAGE)
for i in range(0, len(big), 4096):
    big[i] = 1
pid = os.fork()
if pid == 0:
    own = bytearray(20 * 2**20)
    for i in range(0, len(own), 4096):
        own[i] = 1
    time.sleep(1.5)
    os._exit(0)
for _ in range(60):
    subprocess.run(["uname", "-p"], stdout=subprocess.DEVNULL)
os.waitpid(pid, 0)
"""


@pytest.mark.integration
def test_poller_counts_workers_once_and_never_exec_helpers():
    import subprocess
    import sys
    import time

    from anonfeat.bench import _TreePoller

    proc = subprocess.Popen([sys.executable, "-c", _TREE])
    poller = _TreePoller(proc.pid, private_interval=0.05)
    while proc.poll() is None:
        poller.poll()
        time.sleep(0.005)
    assert proc.returncode == 0
    # a helper caught before its exec showed the parent's 200 MB: only the forked child may show that
    # much (a helper seen twice after its exec counts with its own few MB)
    big = [pid for pid, kb in poller.vm_hwm.items() if kb > 30 * 1024]
    assert len(big) == 1, (poller.vm_hwm, poller.helpers())
    (pid,) = big
    seen = (poller.vm_hwm, poller.private, poller.helpers())
    assert poller.vm_hwm[pid] > 200 * 1024, seen  # kB: its resident set includes the parent's pages...
    assert 15 * 1024 < poller.private[pid] < poller.vm_hwm[pid] / 2, seen  # ...but few are its own


@pytest.mark.parametrize("with_decord", [True, False])
def test_naive_reference_reads_the_same_full_size_frames_with_or_without_decord(tmp_path, monkeypatch, with_decord):
    """naive_cps decodes each clip on its own at full size: decord when installed, else PyAV seeking."""
    import sys

    from anonfeat.bench import naive_clip_reader, naive_decoder_name
    from anonfeat.video import reader as reader_module

    path = write_bench_video(tmp_path / "v.mp4", 75, 96, 64, fps=30.0, seed=5, gop_seconds=1.0)
    with av.open(str(path)) as container:
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    if with_decord:
        pytest.importorskip("decord")
    else:
        monkeypatch.setitem(sys.modules, "decord", None)
        monkeypatch.setattr(reader_module, "_decord", None)
    assert naive_decoder_name() == ("decord" if with_decord else "pyav")
    n_frames, read = naive_clip_reader(path)
    assert n_frames == 75
    for ids in ([0, 2, 4], [31, 33, 35, 37], [70, 72, 74], [5, 40]):  # inside a GOP, across keyframes, the end
        np.testing.assert_array_equal(read(ids), every[ids])
