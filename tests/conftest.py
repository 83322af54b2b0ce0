"""Shared fixtures: small real videos written with PyAV and decoded by decord in the tests."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# -- the CLI in a forked child (no torch import per run) ---------------------------------------
@dataclass
class Run:
    returncode: int  # exit status, or -signal when killed
    stdout: str
    stderr: str


def forked_cli(args: list[str], tmp: Path, kill_at: str | None = None, setup: Callable[[], None] | None = None) -> Run:
    """The CLI's `main()` in a forked child in its own session, optionally armed with a kill point,
    after `setup()` (in the child only). Forking skips re-importing torch for every run; each
    command's final run in the crash harness goes through a fresh interpreter (`cli`).
    `kill_at` ("POINT:N", tests/killpoints.py) is armed in the child only: the product code never
    reads it, it only fires the hook points (anonfeat.hooks)."""
    import killpoints

    out_path, err_path = tmp / "forked.stdout", tmp / "forked.stderr"
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 70
        try:
            os.setsid()
            sys.stdout = open(out_path, "w")
            sys.stderr = open(err_path, "w")
            os.dup2(sys.stdout.fileno(), 1)
            os.dup2(sys.stderr.fileno(), 2)
            if kill_at is not None:
                killpoints.arm(kill_at)
            if setup is not None:
                setup()
            sys.argv = ["anonfeat", *args]
            from anonfeat.cli import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported through the stderr file
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    _wait_group_gone(pid)  # decoding workers die with the group, a moment later
    return Run(code, out_path.read_text(), err_path.read_text())


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Until no live process (zombies have closed their files) is left in process group `pgid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive = True
                    break
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive after {timeout} s")
