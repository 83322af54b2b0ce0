"""Shared fixtures: small real videos written with PyAV and decoded by decord in the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anonfeat.synth import write_video

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "real-videos"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: one intra-op thread is as fast, and immune to the many-fold
    slowdown OpenMP spin-waiting suffers when other processes share a 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def moving_frames(n_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured square moving over a noisy background: every frame differs."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    side = max(2, min(height, width) // 3)
    for t in range(n_frames):
        frame = background.copy()
        x = (t * 3) % max(1, width - side)
        y = (t * 2) % max(1, height - side)
        frame[y:y + side, x:x + side] = (40 + 5 * t) % 255
        frames[t] = frame
    return frames


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A folder of valid videos of varied containers, sizes and lengths, with a nested folder."""
    root = tmp_path_factory.mktemp("videos")
    (root / "nested" / "deeper").mkdir(parents=True)
    write_video(root / "a.mp4", moving_frames(40, 64, 80, seed=1), fps=25)
    write_video(root / "nested" / "b.mkv", moving_frames(24, 33, 47, seed=2), fps=24)  # odd size, mkv
    write_video(root / "nested" / "deeper" / "vertical.mp4", moving_frames(36, 96, 54, seed=3), fps=30)
    write_video(root / "short.mp4", moving_frames(5, 64, 64, seed=4), fps=25)  # shorter than a clip
    write_video(root / "one_frame.mp4", moving_frames(1, 64, 64, seed=5), fps=25)
    (root / "notes.txt").write_text("not a video, ignored by extension\n")
    return root


@pytest.fixture(scope="session")
def tiny_encoder():
    from anonfeat.encoders import load_encoder

    return load_encoder("videomae-tiny", random_init=True)


@pytest.fixture()
def bad_video_dir(tmp_path, video_dir) -> Path:
    """Valid videos plus a zero-byte file, a text file named .mp4 and a truncated mp4."""
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("a.mp4", "short.mp4"):
        (root / name).write_bytes((video_dir / name).read_bytes())
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    data = (video_dir / "a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return root
