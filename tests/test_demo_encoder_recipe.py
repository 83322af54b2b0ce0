"""examples/train_demo_encoder.py end to end on a few tiny videos: both stages run, the pretrained
weights are reused, and the written weights load as `videomae-demo` and change its features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anonfeat.encoders import load_encoder
from anonfeat.synth import make_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_demo_encoder.py"


@pytest.mark.integration
def test_recipe_trains_without_attributes_and_writes_loadable_weights(tmp_path):
    make_benchmark(tmp_path / "videos", n_videos=10, size=(64, 64), n_frames=40, seed=1000)
    out, pretrained = tmp_path / "demo.safetensors", tmp_path / "mae.safetensors"
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--workdir", str(tmp_path / "videos"), "--pretrained",
            str(pretrained), "--pretrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4", "--threads", "1"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "pretrain   1" in first.stdout and "finetune   1" in first.stdout and pretrained.is_file()
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert [h["stage"] for h in log["history"]] == ["pretrain", "finetune"]
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)  # stage 1 read back, not redone
    assert again.returncode == 0 and "pretrained weights read from" in again.stdout
    assert "pretrain   1" not in again.stdout
    trained = load_encoder("videomae-demo", checkpoint=out)
    bundled = load_encoder("videomae-demo")
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(trained(x), bundled(x), atol=1e-3)
