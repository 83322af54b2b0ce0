"""`anonfeat bench` at tiny sizes: every figure is produced, positive and self-consistent.

Speed and memory targets are never asserted here (they depend on the machine and its load);
the benchmark command measures and reports them.
"""

from __future__ import annotations

import json
import math

import decord
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
    assert result["device"] == "cpu"
    assert result["speedup_vs_naive"] == pytest.approx(result["e2e_cps"] / result["naive_cps"])
    serial = 1 / (1 / result["decode_cps"] + 1 / result["encode_cps"])  # CPU: shared cores
    assert result["overlap_efficiency"] == pytest.approx(result["e2e_cps"] / serial)
    rounds = result["overlap_efficiency_rounds"]
    assert len(rounds) == result["settings"]["repeats"] and all(r > 0 for r in rounds)
    for name in ("decode", "encode", "e2e", "naive"):
        samples = result["samples"][name]
        assert len(samples) == result["settings"]["repeats"]
        assert min(samples) <= result[f"{name}_cps"] <= max(samples)  # the median of the rounds


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
        assert len(mem["workers_mb"]) >= 1  # the decoding worker (plus any helper process), counted with main
        assert mem["rss_mb"] == pytest.approx(mem["main_mb"] + sum(mem["workers_mb"]))
        assert 0 < mem["pss_mb"] <= mem["rss_mb"] * 1.01
    assert result["memory"]["long"]["clips"] > result["memory"]["short"]["clips"]
    assert result["rss_ratio"] == pytest.approx(result["rss_long_mb"] / result["rss_short_mb"])
    assert result["machine"]["cpu_cores"] >= 1


def test_peak_rss_reports_failures(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    opts = dict(encoder="videomae-tiny", random_init=True, device="cpu", workers=0, progress=False)
    with pytest.raises(AnonfeatError, match="memory run"):
        extract_peak_rss(bad, tmp_path / "m.h5", opts)


def test_generated_video_decodes_to_the_requested_shape(tmp_path):
    path = write_bench_video(tmp_path / "v.mp4", 45, 96, 64, fps=30.0, seed=3)
    reader = decord.VideoReader(str(path))
    assert len(reader) == 45 and reader[0].shape == (64, 96, 3)
    frames = reader.get_batch([0, 1, 44]).asnumpy()
    assert (frames[0] != frames[1]).any() and (frames[1] != frames[2]).any()  # every frame moves
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
