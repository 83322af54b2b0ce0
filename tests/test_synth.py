"""The synthetic benchmark must carry attributes in appearance and the action in motion.

Those two properties are what makes it a meaningful privacy test bed, so they are
checked directly on rendered pixels and part masks, not just on file layout.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

decord = pytest.importorskip("decord")

from anonfeat.labels import load_labels, stratified_split  # noqa: E402
from anonfeat.synth import (  # noqa: E402
    ACTIONS,
    ATTRIBUTES,
    make_benchmark,
    render_video,
    write_video,
)

NONE = {a: 0 for a in ATTRIBUTES}
LUMA = np.array([0.299, 0.587, 0.114])


def _read(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _rows(labels: Path) -> list[dict[str, str]]:
    with open(labels, newline="") as f:
        return list(csv.DictReader(f))


def test_make_benchmark_layout(tmp_path: Path) -> None:
    labels = make_benchmark(tmp_path / "bench", n_videos=15, size=(64, 64), n_frames=16, seed=3)
    assert labels == tmp_path / "bench" / "labels.csv"
    header = labels.read_text().splitlines()[0]
    assert header == "video,split,action,dark_skin,striped_shirt,long_hair,hat,lighting"
    rows = _rows(labels)
    assert len(rows) == 15
    assert {r["lighting"] for r in rows} == {"dim", "bright"}
    # lighting is an unseen task (class names), never a default private attribute
    loaded = load_labels(labels, tasks=("action", "lighting"))
    assert list(loaded.attributes) == list(ATTRIBUTES) == list(load_labels(labels).attributes)
    assert set(loaded.tasks["lighting"]) == {"dim", "bright"}
    for split in ("train", "attacker", "test"):  # three splits, each action in each
        assert {r["action"] for r in rows if r["split"] == split} == set(ACTIONS)
    # the split is the one every command derives from these actions and seed
    assert [r["split"] for r in rows] == stratified_split([r["action"] for r in rows], 3)
    corner_luma = {"dim": [], "bright": []}
    for r in rows:
        assert r["video"] == f"{r['action']}/{Path(r['video']).name}"
        assert all(r[a] in ("0", "1") for a in ATTRIBUTES)
        frames = _read(tmp_path / "bench" / "videos" / r["video"])
        assert frames.shape == (16, 64, 64, 3)
        corner_luma[r["lighting"]].append(float((frames[:, :8, :8] @ LUMA).mean()))  # background only
    # the lighting label is what the decoded video shows
    assert np.mean(corner_luma["bright"]) > np.mean(corner_luma["dim"]) + 20, corner_luma


def test_same_seed_same_labels(tmp_path: Path) -> None:
    kw = dict(n_videos=6, size=(32, 32), n_frames=2)
    a = make_benchmark(tmp_path / "a", seed=7, **kw)
    b = make_benchmark(tmp_path / "b", seed=7, progress=True, **kw)
    c = make_benchmark(tmp_path / "c", seed=8, **kw)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    attrs = {a: 1 for a in ATTRIBUTES}
    v1 = render_video("wave", attrs, size=(40, 30), n_frames=3, seed=5)
    v2 = render_video("wave", attrs, size=(40, 30), n_frames=3, seed=5)
    assert v1.shape == (3, 40, 30, 3) and v1.dtype == np.uint8
    assert np.array_equal(v1, v2)
    assert not np.array_equal(v1, render_video("wave", attrs, size=(40, 30), n_frames=3, seed=6))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skin_tone_changes_only_skin(seed: int) -> None:
    light, m = render_video("wave", NONE, size=(96, 96), n_frames=3, seed=seed, return_masks=True)
    dark = render_video("wave", {**NONE, "dark_skin": 1}, size=(96, 96), n_frames=3, seed=seed)
    head = m["head"] > 0.99
    assert head.sum() > 30
    assert (dark[head] @ LUMA).mean() < (light[head] @ LUMA).mean() - 60
    skin = (m["head"] + m["arms"]) > 0
    assert np.array_equal(dark[~skin], light[~skin])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stripes_show_as_row_variance(seed: int) -> None:
    def row_var(striped: int) -> float:
        v, m = render_video("jump", {**NONE, "striped_shirt": striped}, size=(96, 96), n_frames=1,
                            seed=seed, return_masks=True)
        shirt = m["shirt"][0] > 0.99
        rows = [(v[0][r][shirt[r]] @ LUMA).mean() for r in range(96) if shirt[r].sum() >= 3]
        return float(np.var(rows))

    plain, striped = row_var(0), row_var(1)
    assert plain < 30
    assert striped > 300


@pytest.mark.parametrize("seed", [0, 1])
def test_hair_and_hat_shapes(seed: int) -> None:
    def masks(**attrs: int) -> dict[str, np.ndarray]:
        return render_video("squat", {**NONE, **attrs}, size=(96, 96), n_frames=1, seed=seed,
                            return_masks=True)[1]

    short, long_, hat = masks(), masks(long_hair=1), masks(hat=1)
    assert long_["hair"].sum() > 2 * short["hair"].sum() > 0
    # Long hair reaches below the face centre; a short cap does not.
    head_rows = np.nonzero(short["head"][0].sum(1) > 0)[0]
    centre = int(head_rows.mean())
    assert long_["hair"][0, centre + 2 :].sum() > 5
    assert short["hair"][0, centre:].sum() == 0
    assert short["hat"].sum() == 0 and hat["hat"].sum() > 20


def _centroid_x(mask: np.ndarray) -> np.ndarray:
    xs = np.arange(mask.shape[2])
    return (mask.sum(1) * xs).sum(1) / mask.sum((1, 2))


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top and bottom row of the actor in each frame."""
    rows = mask.sum(2) > 0.5
    top = rows.argmax(1)
    bottom = mask.shape[1] - 1 - rows[:, ::-1].argmax(1)
    return top, bottom


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_walk_direction_is_in_the_motion(seed: int) -> None:
    size = (64, 64)
    for action, sign in (("walk_right", 1), ("walk_left", -1)):
        _, m = render_video(action, NONE, size=size, n_frames=24, seed=seed, return_masks=True)
        cx = _centroid_x(m["actor"])
        assert sign * (cx[-1] - cx[0]) > 0.15 * size[1]
        assert sign * np.polyfit(np.arange(len(cx)), cx, 1)[0] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jump_lifts_feet_squat_keeps_them(seed: int) -> None:
    H = 96
    _, jm = render_video("jump", NONE, size=(H, H), n_frames=48, seed=seed, return_masks=True)
    _, sm = render_video("squat", NONE, size=(H, H), n_frames=48, seed=seed, return_masks=True)
    _, wm = render_video("wave", NONE, size=(H, H), n_frames=48, seed=seed, return_masks=True)
    jt, jb = _extent(jm["actor"])
    st, sb = _extent(sm["actor"])
    assert np.ptp(jb) > 0.04 * H  # the feet leave the ground
    assert np.ptp(sb) < 0.04 * H  # the feet stay put ...
    assert np.ptp(sb - st) > 0.04 * H  # ... while the body shortens
    # Waving moves an arm, not the body.
    assert np.ptp(_centroid_x(wm["shirt"])) < 0.04 * H
    arm_rows = [np.nonzero(f.sum(1) > 0.5)[0].min() for f in wm["arms"]]
    assert np.ptp(arm_rows) > 0.04 * H


@pytest.mark.parametrize(
    "name,shape",
    [("odd.mp4", (5, 33, 47)), ("one.mp4", (1, 33, 47)), ("even.mp4", (3, 32, 40)),
     ("odd.mkv", (4, 33, 47)), ("one.mkv", (1, 20, 30)), ("odd.avi", (4, 33, 47)),
     ("one.avi", (1, 33, 47))],
)
def test_write_video_round_trip(tmp_path: Path, name: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 225, (shape[0], 1, 1, 3))
    frames = np.broadcast_to(colours, (*shape, 3)).astype(np.uint8)
    path = tmp_path / "sub" / name
    write_video(path, frames, fps=25.0)
    got = _read(path)
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 4


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.gif", frames, 24.0)
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", frames[..., 0], 24.0)
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32), 24.0)
    with pytest.raises(ValueError):
        render_video("dance", NONE)


@pytest.mark.integration
def test_synth_cli_writes_benchmark(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "anonfeat", "synth", str(tmp_path / "b"), "--videos", "5",
                           "--size", "48", "--frames", "8", "--seed", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "b" / "labels.csv").read_text().splitlines()
    assert lines[0] == "video,split,action,dark_skin,striped_shirt,long_hair,hat,lighting" and len(lines) == 6
    assert {line.split(",")[1] for line in lines[1:]} == {"train", "attacker", "test"}
    assert len(list((tmp_path / "b" / "videos").rglob("*.mp4"))) == 5
