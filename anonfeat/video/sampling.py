"""Which frames make which clip: pure functions of the video length and sampling flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from anonfeat.errors import AnonfeatError, VideoError
from anonfeat.options import DEFAULT_FRAME_STRIDE


@dataclass(frozen=True)
class Sampling:
    """Clip sampling parameters; stored in the store's root so runs can't mix samplings.

    Sliding windows by default: a clip is `clip_len` frames `frame_stride` apart, a new clip
    starts every `clip_stride` frames (default: right after the previous one ends). Sampling by
    time (`sample_fps`, which replaces `frame_stride`): the video is first sampled at `sample_fps`
    frames per second of source time (the frame shown at each instant k / sample_fps), and clips
    are windows of `clip_len` consecutive samples, `clip_stride` samples apart, so a clip spans the
    same seconds whatever the source frame rate. With
    `num_clips`, that many clips are spread evenly instead. `static_clips` frames, evenly spaced,
    are each repeated to a clip (the privacy protocol's static clips). `resize` is "short"
    (short side to the input size, centre crop) or "full" (stretch the whole frame).
    """

    clip_len: int
    frame_stride: int | None = None  # None: 4 when sampling by frames; always None when sampling by time
    clip_stride: int | None = None
    num_clips: int | None = None
    static_clips: int = 0
    resize: str = "short"
    sample_fps: float | None = None

    def __post_init__(self) -> None:
        if self.sample_fps is not None:
            if self.frame_stride is not None:
                raise AnonfeatError(f"--frame-stride {self.frame_stride} and --sample-fps {self.sample_fps:g} "
                                    "exclude each other: sample by frames or by time, not both")
            if not self.sample_fps > 0:
                raise AnonfeatError(f"--sample-fps {self.sample_fps}: give a positive number of frames per second")
        elif self.frame_stride is None:
            object.__setattr__(self, "frame_stride", DEFAULT_FRAME_STRIDE)
        if self.clip_len < 1:
            raise AnonfeatError("--clip-len must be at least 1")
        if self.frame_stride is not None and self.frame_stride < 1:
            raise AnonfeatError("--frame-stride must be at least 1")
        if self.clip_stride is not None and self.clip_stride < 1:
            raise AnonfeatError("--clip-stride must be at least 1")
        if self.num_clips is not None and self.num_clips < 1:
            raise AnonfeatError("--num-clips must be at least 1")
        if self.num_clips is not None and self.clip_stride is not None:
            raise AnonfeatError("--num-clips and --clip-stride exclude each other: choose one")
        if self.static_clips < 0:
            raise AnonfeatError("--static-clips must be 0 or more")
        if self.resize not in ("short", "full"):
            raise AnonfeatError(f"--resize {self.resize!r}: choose short or full")

    @property
    def by_time(self) -> bool:
        return self.sample_fps is not None

    @property
    def step(self) -> int:
        """Positions between a clip's frames on the sampled timeline (`timeline`)."""
        return 1 if self.by_time else int(self.frame_stride)

    @property
    def span(self) -> int:
        """Positions from a clip's first to its last sampled frame, inclusive (source frames when
        sampling by frames, samples when sampling by time)."""
        return (self.clip_len - 1) * self.step + 1

    @property
    def effective_clip_stride(self) -> int:
        return self.clip_stride if self.clip_stride is not None else self.clip_len * self.step

    def to_dict(self) -> dict:
        """The store header's `sampling`; `sample_fps` only when sampling by time, so the headers of
        frame-sampled stores are those of earlier versions (they resume as before)."""
        out = asdict(self)
        if self.sample_fps is None:
            del out["sample_fps"]
        return out


def timeline(n_frames: int, sampling: Sampling, fps: float | None = None) -> np.ndarray:
    """Source frame index of each position clips are cut from: every frame when sampling by frames;
    when sampling by time, the frame shown at each instant k / sample_fps (k = 0, 1, ... while the
    instant lies within the video's n_frames / fps seconds), which needs the video's frame rate."""
    if not sampling.by_time:
        return np.arange(n_frames, dtype=np.int64)
    if fps is None or not np.isfinite(fps) or fps <= 0:
        raise VideoError(f"frame rate unknown ({fps}); --sample-fps needs it, sample by --frame-stride instead")
    n_samples = max(1, int(np.ceil(n_frames * sampling.sample_fps / fps - 1e-9)))
    frames = np.round(np.arange(n_samples) * (fps / sampling.sample_fps)).astype(np.int64)
    return np.minimum(frames, n_frames - 1)


def clip_frame_indices(n_frames: int, sampling: Sampling, fps: float | None = None) -> np.ndarray:
    """(n_clips, clip_len) source frame indices; at least one clip per video. `fps`, the video's
    frame rate, is needed when sampling by time.

    A video shorter than one clip gives one clip whose missing frames repeat the last frame. With
    `num_clips`, a video with fewer distinct clip starts than that gets one clip per start (never
    the same clip twice: `--num-clips 100000` on a 32-frame video is 32 clips at most, not 100000).
    """
    if n_frames < 1:
        raise ValueError("video has no frames")
    positions = timeline(n_frames, sampling, fps)
    n = len(positions)
    last_start = max(n - sampling.span, 0)
    if sampling.num_clips is not None:  # capped at the distinct clips: a short video never repeats a clip
        count = min(sampling.num_clips, last_start + 1)
        starts = np.round(np.linspace(0, last_start, count)).astype(np.int64)
    else:
        starts = np.arange(0, last_start + 1, sampling.effective_clip_stride, dtype=np.int64)
    offsets = np.arange(sampling.clip_len, dtype=np.int64) * sampling.step
    return positions[np.minimum(starts[:, None] + offsets[None, :], n - 1)]


def clip_times(clip_ranges: np.ndarray, fps: float | None) -> np.ndarray:
    """(n_clips, 2) float64 seconds [start, end] of clips given as [first, last] source frame: the
    instants those frames are shown (index / fps); NaN when the frame rate is unknown."""
    ranges = np.asarray(clip_ranges, dtype=np.float64).reshape(-1, 2)
    if fps is None or not np.isfinite(fps) or fps <= 0:
        return np.full(ranges.shape, np.nan)
    return ranges / float(fps)


def static_frame_indices(n_frames: int, count: int) -> np.ndarray:
    """`count` frames evenly spread over the video (centres of equal segments)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.minimum(((np.arange(count) + 0.5) * n_frames / count).astype(np.int64), n_frames - 1)
