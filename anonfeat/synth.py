"""Synthetic videos: a small privacy benchmark with one cartoon actor per video, and plain
texture videos for throughput measurements (`write_texture_video`, used by `anonfeat bench`).

The actor's APPEARANCE carries binary private attributes (skin tone, striped shirt,
long hair, hat) and its MOTION is the action class. Attributes are drawn independently
of the action and of each other, so an attacker can only recover them from what the
features retain of appearance, while the action needs the motion. Everything else
(background, colours, scale, speed, phase, position, camera jitter) is random nuisance.

Everything is drawn with numpy (anti-aliased signed-distance shapes) and is a pure
function of a seed, so the benchmark is reproducible without shipping data.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from anonfeat.labels import SPLIT_FRACTIONS, stratified_split
from anonfeat.video.writer import write_video  # noqa: F401  (re-exported: tests and users write videos through synth)

ATTRIBUTES = ("dark_skin", "striped_shirt", "long_hair", "hat")
ACTIONS = ("walk_left", "walk_right", "jump", "wave", "squat")
LABEL_COLUMNS = ("video", "split", "action", *ATTRIBUTES, "lighting")
# A utility task no anonymizer trains on: is the scene dim or bright (the background's luma against its
# median over the nuisance draws, 130)? Like a day/night or indoor/outdoor label, it is not private.
LIGHTING = ("dim", "bright")
_LIGHTING_LUMA = 130.0
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights of an RGB colour
PARTS = ("head", "arms", "hair", "hat", "shirt", "pants")

# Skin tone class centres (RGB); a per-video jitter keeps the classes apart but not constant.
_LIGHT_SKIN = np.array([232.0, 192.0, 160.0])
_DARK_SKIN = np.array([105.0, 66.0, 42.0])
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [70, 45, 25], [125, 55, 30], [205, 170, 95]], dtype=np.float64
)
_PANTS_COLOURS = np.array(
    [[40, 55, 110], [30, 30, 35], [95, 70, 45], [90, 95, 100], [60, 80, 50]], dtype=np.float64
)

# Figure layout in units of the figure height h: y=0 is the top of the head, y=1 the soles.
_HEAD_R = 0.105
_HEAD_CY = _HEAD_R
_NECK_Y = 2 * _HEAD_R - 0.01
_HIP_Y = 0.55
_TORSO_HALF_W = 0.145
_SHOULDER_X = 0.125
_SHOULDER_Y = _NECK_Y + 0.045
_ARM_LEN = 0.32
_ARM_R = 0.034
_HIP_X = 0.07
_LEG_R = 0.046
_ANKLE_Y = 1.0 - _LEG_R
_LEG_LEN = _ANKLE_Y - _HIP_Y
_REST_ARM = math.radians(12.0)


# --------------------------------------------------------------------------- drawing


class _Canvas:
    """One frame plus per-part visible coverage, composited with anti-aliased alpha."""

    def __init__(self, background: np.ndarray, track_parts: bool) -> None:
        self.img = background
        h, w = background.shape[:2]
        self.parts = {p: np.zeros((h, w), np.float32) for p in PARTS} if track_parts else None
        self.ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
        self.xs = np.arange(w, dtype=np.float64)[None, :] + 0.5

    def draw(
        self,
        bbox: tuple[float, float, float, float],
        sdf: Callable[[np.ndarray, np.ndarray], np.ndarray],
        colour: np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray],
        part: str,
    ) -> None:
        """Composite a shape given by its signed distance (pixels, <0 inside) within bbox."""
        x0, y0, x1, y1 = bbox
        h, w = self.img.shape[:2]
        c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, w)
        r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, h)
        if c0 >= c1 or r0 >= r1:
            return
        X, Y = self.xs[:, c0:c1], self.ys[r0:r1, :]
        alpha = np.clip(0.5 - sdf(X, Y), 0.0, 1.0)
        if not alpha.any():
            return
        col = colour(X, Y) if callable(colour) else colour
        region = self.img[r0:r1, c0:c1]
        a = alpha[..., None]
        self.img[r0:r1, c0:c1] = region * (1.0 - a) + col * a
        if self.parts is not None:
            for m in self.parts.values():
                m[r0:r1, c0:c1] *= 1.0 - alpha
            self.parts[part][r0:r1, c0:c1] += alpha

    def disc(self, cx: float, cy: float, r: float, colour: np.ndarray, part: str) -> None:
        self.draw(
            (cx - r, cy - r, cx + r, cy + r),
            lambda X, Y: np.hypot(X - cx, Y - cy) - r,
            colour,
            part,
        )

    def box(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        colour: np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray],
        part: str,
        rounding: float = 0.0,
    ) -> None:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hx, hy = (x1 - x0) / 2 - rounding, (y1 - y0) / 2 - rounding

        def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
            qx, qy = np.abs(X - cx) - hx, np.abs(Y - cy) - hy
            outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
            return outside + np.minimum(np.maximum(qx, qy), 0) - rounding

        self.draw((x0, y0, x1, y1), sdf, colour, part)

    def capsule(
        self, ax: float, ay: float, bx: float, by: float, r: float, colour: np.ndarray, part: str
    ) -> None:
        dx, dy = bx - ax, by - ay
        dd = max(dx * dx + dy * dy, 1e-12)

        def sdf(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
            t = np.clip(((X - ax) * dx + (Y - ay) * dy) / dd, 0.0, 1.0)
            return np.hypot(X - ax - t * dx, Y - ay - t * dy) - r

        bbox = (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r)
        self.draw(bbox, sdf, colour, part)


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Nuisance:
    """Every random choice of one video that is NOT a label, drawn in a fixed order.

    Drawing all of them regardless of the labels means two videos with the same seed
    differ only where their labels differ, which is what the tests rely on.
    """

    bg: np.ndarray
    waves: np.ndarray  # (k, 3): spatial frequencies fx, fy and phase of the background texture
    wave_amp: np.ndarray  # (k, 3): per-channel amplitude of each texture wave
    floor_dark: float
    skin_gain: float
    skin_tint: np.ndarray
    shirt: np.ndarray
    hair: np.ndarray
    hat: np.ndarray
    pants: np.ndarray
    scale: float  # figure height / frame height
    ground: float
    travel: float  # walking distance over the clip, pixels
    start: float
    center: float
    freq: float  # in [0, 1], mapped to each action's frequency range
    phase: float
    amplitude: float  # in [0, 1], mapped to each action's amplitude range
    wave_side: int
    jitter: np.ndarray  # (n_frames, 2) camera offset in pixels
    noise_seed: int


def _hsv_colour(
    rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]
) -> np.ndarray:
    """A random RGB colour with any hue and saturation/value in the given ranges."""
    hue, sat, val = rng.uniform(0, 6), rng.uniform(*s), rng.uniform(*v)
    k = (np.array([5.0, 3.0, 1.0]) + hue) % 6
    rgb = val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))
    return rgb * 255.0


def _draw_nuisance(rng: np.random.Generator, size: tuple[int, int], n_frames: int) -> _Nuisance:
    H, W = size
    waves = np.stack(
        [rng.uniform(0.5, 3.0, 4), rng.uniform(0.5, 3.0, 4) * rng.choice([-1, 1], 4),
         rng.uniform(0, 2 * np.pi, 4)],
        axis=1,
    )
    wave_amp = rng.uniform(3.0, 9.0, (4, 1)) * rng.uniform(0.6, 1.0, (4, 3))
    bg = _hsv_colour(rng, (0.1, 0.6), (0.35, 0.9))
    floor_dark = rng.uniform(0.7, 0.9)
    skin_gain = rng.uniform(0.9, 1.1)
    skin_tint = rng.normal(0.0, 4.0, 3)
    shirt = _hsv_colour(rng, (0.45, 0.95), (0.45, 0.95))
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.9, 1.1)
    hat = _hsv_colour(rng, (0.6, 1.0), (0.5, 1.0))
    pants = _PANTS_COLOURS[rng.integers(len(_PANTS_COLOURS))] * rng.uniform(0.85, 1.15)
    scale = rng.uniform(0.5, 0.7)
    ground = rng.uniform(0.92, 0.96) * H
    travel = rng.uniform(0.3, 0.45) * W
    start = rng.uniform(-0.05, 0.05) * W
    center = rng.uniform(0.38, 0.62) * W
    freq = rng.uniform(0.0, 1.0)  # mapped to an action-specific range at render time
    phase = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0.0, 1.0)
    wave_side = int(rng.integers(2)) * 2 - 1
    raw = rng.normal(0.0, 0.006 * H, (n_frames + 2, 2))
    jitter = (raw[:-2] + raw[1:-1] + raw[2:]) / math.sqrt(3.0)
    noise_seed = int(rng.integers(2**32))
    return _Nuisance(bg, waves, wave_amp, floor_dark, skin_gain, skin_tint, shirt, hair, hat,
                     pants, scale, ground, travel, start, center, freq, phase, amplitude,
                     wave_side, jitter, noise_seed)


def _background(
    nz: _Nuisance, size: tuple[int, int], offset: np.ndarray, ground_y: float
) -> np.ndarray:
    """Smooth texture plus a darker floor, in world coordinates so it moves with the camera."""
    H, W = size
    ys = (np.arange(H, dtype=np.float64)[:, None] + 0.5 - offset[1]) / H
    xs = (np.arange(W, dtype=np.float64)[None, :] + 0.5 - offset[0]) / W
    # cos(a + b) = cos a cos b - sin a sin b keeps each plane wave separable (fast).
    a = 2 * np.pi * nz.waves[:, 0, None, None] * xs[None] + nz.waves[:, 2, None, None]  # (k, 1, W)
    b = 2 * np.pi * nz.waves[:, 1, None, None] * ys[None]  # (k, H, 1)
    waves = np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b)  # (k, H, W)
    img = np.tensordot(waves, nz.wave_amp, axes=(0, 0)) + nz.bg
    floor = np.clip((ys * H - ground_y) / (0.02 * H) + 0.5, 0, 1)  # soft edge at the ground
    img *= (1.0 - (1.0 - nz.floor_dark) * floor)[..., None]
    return img


def _knee(hip: np.ndarray, ankle: np.ndarray, outward: float) -> np.ndarray:
    """Two-link leg: the knee that keeps thigh = shin = half the leg, bending outward."""
    d = ankle - hip
    dist = float(np.hypot(*d))
    half = _LEG_LEN / 2
    mid = (hip + ankle) / 2
    if dist < 1e-9:
        return mid + np.array([outward * half, 0.0])
    off = math.sqrt(max(half * half - (min(dist, _LEG_LEN) / 2) ** 2, 0.0))
    normal = np.array([d[1], -d[0]]) / dist
    if normal[0] * outward < 0:
        normal = -normal
    return mid + normal * off


def _pose(action: str, t: float, duration: float, nz: _Nuisance) -> dict:
    """Figure pose at time t: body offset (figure units) and limb end points (figure units).

    Coordinates are relative to the standing figure (x centred, y=0 top, y=1 soles);
    the horizontal position is returned separately in pixels.
    """
    body_dy = 0.0  # >0 moves the upper body down (figure units)
    lift = 0.0  # >0 moves the whole figure up (jumping)
    x_px = nz.center
    arm_angles = [_REST_ARM, _REST_ARM]  # from straight down, outward positive; [left, right]
    ankles = [np.array([-_HIP_X, _ANKLE_Y]), np.array([_HIP_X, _ANKLE_Y])]
    leg_swing = 0.0

    if action in ("walk_left", "walk_right"):
        direction = 1.0 if action == "walk_right" else -1.0
        freq = 1.2 + 0.8 * nz.freq  # steps per second
        x_px = nz.center + nz.start + direction * nz.travel * (t / max(duration, 1e-9) - 0.5)
        leg_swing = math.radians(18 + 10 * nz.amplitude) * math.sin(2 * np.pi * freq * t + nz.phase)
        arm_angles = [_REST_ARM - 0.8 * leg_swing, _REST_ARM + 0.8 * leg_swing]
        # Feet stay on the ground: a swung straight leg is shorter vertically, so the body dips.
        body_dy = _LEG_LEN * (1 - math.cos(leg_swing))
    elif action == "jump":
        freq = 0.9 + 0.6 * nz.freq  # bounces per second
        height = abs(math.sin(np.pi * freq * t + nz.phase))
        lift = (0.12 + 0.08 * nz.amplitude) * height
        arm_angles = [_REST_ARM + math.radians(70) * height] * 2
    elif action == "wave":
        freq = 1.5 + 1.5 * nz.freq
        up = 0.5 + 0.5 * math.sin(2 * np.pi * freq * t + nz.phase)
        angle = math.radians(95 + 65 * up)
        arm_angles[0 if nz.wave_side < 0 else 1] = angle
    elif action == "squat":
        freq = 0.6 + 0.6 * nz.freq
        k = 0.5 - 0.5 * math.cos(2 * np.pi * freq * t + nz.phase)
        body_dy = (0.1 + 0.08 * nz.amplitude) * k
        arm_angles = [_REST_ARM + math.radians(50) * k] * 2
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")

    hips = [np.array([-_HIP_X, _HIP_Y + body_dy]), np.array([_HIP_X, _HIP_Y + body_dy])]
    if leg_swing:
        ankles = [hips[0] + _LEG_LEN * np.array([math.sin(leg_swing), math.cos(leg_swing)]),
                  hips[1] + _LEG_LEN * np.array([-math.sin(leg_swing), math.cos(leg_swing)])]
    knees = [_knee(hips[0], ankles[0], -1.0), _knee(hips[1], ankles[1], 1.0)]
    shoulders = [np.array([-_SHOULDER_X, _SHOULDER_Y + body_dy]),
                 np.array([_SHOULDER_X, _SHOULDER_Y + body_dy])]
    hands = [s + _ARM_LEN * np.array([side * math.sin(a), math.cos(a)])
             for s, a, side in zip(shoulders, arm_angles, (-1.0, 1.0))]
    return dict(x_px=x_px, lift=lift, body_dy=body_dy, hips=hips, knees=knees, ankles=ankles,
                shoulders=shoulders, hands=hands)


def render_video(
    action: str,
    attributes: Mapping[str, int],
    *,
    size: tuple[int, int] = (128, 128),
    n_frames: int = 48,
    fps: float = 24.0,
    seed: int = 0,
    return_masks: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one benchmark video as (n_frames, H, W, 3) uint8 RGB.

    A pure function of its arguments: the seed fixes every nuisance factor and is drawn
    identically whatever the labels, so changing one attribute changes only its pixels.
    With ``return_masks`` also returns the visible coverage (n_frames, H, W) float32 in
    [0, 1] of each part in ``PARTS`` plus ``"actor"`` (their sum), for tests and figures.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    missing = [a for a in ATTRIBUTES if a not in attributes]
    if missing:
        raise ValueError(f"attributes lack {missing}; expected keys {ATTRIBUTES}")
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1 or n_frames < 1 or fps <= 0:
        raise ValueError("size, n_frames and fps must be positive")
    if any(int(attributes[a]) not in (0, 1) for a in ATTRIBUTES):
        raise ValueError(f"attribute values must be 0 or 1, got {dict(attributes)}")
    attrs = {a: bool(int(attributes[a])) for a in ATTRIBUTES}
    rng = np.random.default_rng(seed)
    nz = _draw_nuisance(rng, (H, W), n_frames)
    noise_rng = np.random.default_rng(nz.noise_seed)

    skin = np.clip((_DARK_SKIN if attrs["dark_skin"] else _LIGHT_SKIN) * nz.skin_gain
                   + nz.skin_tint, 0, 255)
    shirt = np.clip(nz.shirt, 0, 255)
    lum = float(shirt @ _LUMA)
    stripe = shirt * 0.35 if lum > 110 else shirt + (255 - shirt) * 0.7
    h = nz.scale * H  # figure height in pixels
    duration = n_frames / fps

    frames = np.empty((n_frames, H, W, 3), np.uint8)
    masks = {p: np.empty((n_frames, H, W), np.float32) for p in PARTS} if return_masks else None
    for i in range(n_frames):
        t = i / fps
        offset = nz.jitter[i]
        pose = _pose(action, t, duration, nz)
        canvas = _Canvas(_background(nz, (H, W), offset, nz.ground), return_masks)
        ox = pose["x_px"] + offset[0]
        oy = nz.ground - h * (1.0 + pose["lift"]) + offset[1]

        def P(p: np.ndarray) -> tuple[float, float]:
            return ox + p[0] * h, oy + p[1] * h

        dy = pose["body_dy"]
        # Legs (behind the torso).
        for hip, knee, ankle in zip(pose["hips"], pose["knees"], pose["ankles"]):
            canvas.capsule(*P(hip), *P(knee), _LEG_R * h, nz.pants, "pants")
            canvas.capsule(*P(knee), *P(ankle), _LEG_R * h, nz.pants, "pants")
        # Torso, with stripes that move with it.
        tx0, ty0 = P(np.array([-_TORSO_HALF_W, _NECK_Y + dy]))
        tx1, ty1 = P(np.array([_TORSO_HALF_W, _HIP_Y + dy + 0.02]))
        if attrs["striped_shirt"]:
            period = (ty1 - ty0) / 4.0

            def shirt_colour(
                X: np.ndarray, Y: np.ndarray, ty0: float = ty0, period: float = period
            ) -> np.ndarray:
                # Smooth square wave so that stripes stay anti-aliased when small.
                s = np.clip(2.5 * np.sin(2 * np.pi * (Y - ty0) / period), -1, 1)[..., None]
                return shirt + (stripe - shirt) * (0.5 + 0.5 * s)

            canvas.box(tx0, ty0, tx1, ty1, shirt_colour, "shirt", rounding=0.04 * h)
        else:
            canvas.box(tx0, ty0, tx1, ty1, shirt, "shirt", rounding=0.04 * h)
        hx, hy = P(np.array([0.0, _HEAD_CY + dy]))
        r = _HEAD_R * h
        # Long hair: two strands down the sides of the head to the shoulders.
        if attrs["long_hair"]:
            for side in (-1, 1):
                xa, xb = sorted((hx + side * 0.55 * r, hx + side * 1.3 * r))
                canvas.box(xa, hy - 0.4 * r, xb, hy + 1.9 * r, nz.hair, "hair", rounding=0.3 * r)
        # Arms (over the torso).
        for shoulder, hand in zip(pose["shoulders"], pose["hands"]):
            canvas.capsule(*P(shoulder), *P(hand), _ARM_R * h, skin, "arms")
        # Face, then the hair cap on top of it (short or long hair both have one).
        canvas.disc(hx, hy, r, skin, "head")
        cap_r, cap_y = 1.08 * r, hy - 0.35 * r
        canvas.draw(
            (hx - cap_r, hy - cap_r, hx + cap_r, cap_y),
            lambda X, Y: np.maximum(np.hypot(X - hx, Y - hy) - cap_r, Y - cap_y),
            nz.hair,
            "hair",
        )
        if attrs["hat"]:
            brim_y = hy - 0.5 * r
            canvas.box(hx - 1.4 * r, brim_y - 0.22 * r, hx + 1.4 * r, brim_y, nz.hat, "hat",
                       rounding=0.08 * r)
            canvas.box(hx - 0.85 * r, hy - 1.55 * r, hx + 0.85 * r, brim_y - 0.1 * r, nz.hat, "hat",
                       rounding=0.15 * r)
        img = canvas.img + 2.0 * noise_rng.standard_normal(canvas.img.shape, dtype=np.float32)
        frames[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if masks is not None and canvas.parts is not None:
            for p in PARTS:
                masks[p][i] = np.clip(canvas.parts[p], 0, 1)
    if masks is None:
        return frames
    masks["actor"] = np.clip(sum(masks[p] for p in PARTS), 0, 1)
    return frames, masks


# --------------------------------------------------------------------------- encoding

# --------------------------------------------------------------------------- benchmark


def benchmark_rows(n_videos: int, size: tuple[int, int] = (128, 128), n_frames: int = 48,
                   fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                   seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """The label rows `make_benchmark` writes and each video's render seed, without rendering."""
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos}")
    rng = np.random.default_rng(seed)
    actions = [ACTIONS[int(i) % len(ACTIONS)] for i in rng.permutation(n_videos)]
    attrs = rng.integers(0, 2, size=(n_videos, len(ATTRIBUTES)))
    video_seeds = rng.integers(0, 2**62, size=n_videos)
    split = stratified_split(actions, seed, fractions)
    rows = []
    for i in range(n_videos):
        rel = f"{actions[i]}/{i:06d}.mp4"
        background = _draw_nuisance(np.random.default_rng(int(video_seeds[i])), size, n_frames).bg
        bright = float(background @ _LUMA) >= _LIGHTING_LUMA
        rows.append({"video": rel, "split": split[i], "action": actions[i],
                     **{a: int(v) for a, v in zip(ATTRIBUTES, attrs[i])}, "lighting": LIGHTING[int(bright)]})
    return rows, video_seeds


def make_benchmark(
    out_dir: str | Path,
    n_videos: int = 60,
    size: tuple[int, int] = (128, 128),
    n_frames: int = 48,
    fps: float = 24.0,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Writes out_dir/videos/<action>/<id>.mp4 and out_dir/labels.csv; returns the labels path.

    Actions are balanced and attributes are fair independent coins, so a probe that beats
    chance on an attribute learned it from appearance, not from a correlation with the
    action. The same seed gives byte-identical labels and identical rendered frames.
    The lighting column (dim/bright: the background's luma, from the video's own nuisance draw) is an
    unseen utility task for `audit --task lighting`; it is not a 0/1 column, so it is never a default
    private attribute. The split column holds train, attacker and test (`fractions` of each action, default 50/25/25),
    drawn by `anonfeat.labels.stratified_split` with the same seed.
    """
    out_dir = Path(out_dir)
    rows, video_seeds = benchmark_rows(n_videos, size, n_frames, fractions, seed)

    def render_one(i: int) -> None:
        row = rows[i]
        frames = render_video(row["action"], row, size=size, n_frames=n_frames, fps=fps,
                              seed=int(video_seeds[i]))
        write_video(out_dir / "videos" / row["video"], frames, fps)

    from anonfeat.progress import RichBar

    with RichBar(progress, "rendering synthetic videos", n_videos, []) as bar:
        for i in range(n_videos):
            render_one(i)
            bar.step()

    labels = out_dir / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return labels


# --------------------------------------------------------------------------- texture videos


def _smooth_texture(rng: np.random.Generator, height: int, width: int, cell: int, low: int, high: int) -> np.ndarray:
    import torch

    small = torch.from_numpy(rng.integers(low, high, (1, 1, height // cell + 2, width // cell + 2)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, scale_factor=cell, mode="bilinear", align_corners=False)
    return big[0, 0, :height, :width].round().clamp(0, 255).to(torch.uint8).numpy()


def write_texture_video(path: str | Path, n_frames: int, width: int, height: int, fps: float = 30.0,
                      seed: int = 0, preset: str = "veryfast", gop_seconds: float = 2.0) -> Path:
    """A synthetic H.264 video: a smooth texture panning under a moving square, every frame different
    (what `anonfeat bench` measures on).

    Frames are built directly in yuv420p (no colour conversion) so that even a 10-minute 720p video
    takes only a few minutes to write; the file appears under its name only once complete.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pad = 256
    cell = max(8, min(width, height) // 24)
    luma = _smooth_texture(rng, height + pad, width + pad, cell, 0, 256)
    cb = _smooth_texture(rng, (height + pad) // 2, (width + pad) // 2, cell, 64, 192)
    cr = _smooth_texture(rng, (height + pad) // 2, (width + pad) // 2, cell, 64, 192)
    side = max(8, min(height, width) // 4) // 2 * 2
    h2, w2 = height // 2, width // 2
    tmp = path.with_name(path.name + ".part" + path.suffix)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": "23", "g": str(max(1, round(gop_seconds * fps)))}
        buf = np.empty((height * 3 // 2, width), np.uint8)
        y_plane = buf[:height]
        u_plane = buf[height:height + height // 4].reshape(h2, w2)
        v_plane = buf[height + height // 4:].reshape(h2, w2)
        for t in range(n_frames):
            dx, dy = (2 * t) % pad, t % pad
            y_plane[:] = luma[dy:dy + height, dx:dx + width]
            sx, sy = (5 * t) % max(1, width - side), (3 * t) % max(1, height - side)
            y_plane[sy:sy + side, sx:sx + side] = (40 + 3 * t) % 256
            u_plane[:] = cb[dy // 2:dy // 2 + h2, dx // 2:dx // 2 + w2]
            v_plane[:] = cr[dy // 2:dy // 2 + h2, dx // 2:dx // 2 + w2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(buf, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
