"""Which frames make which clip: pure functions of the video length and sampling flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from anonfeat.errors import AnonfeatError


@dataclass(frozen=True)
class Sampling:
    """Clip sampling parameters; stored in the store's root so runs can't mix samplings.

    Sliding windows by default: a clip is `clip_len` frames `frame_stride` apart, a new clip
    starts every `clip_stride` frames (default: right after the previous one ends). With
    `num_clips`, that many clips are spread evenly instead. `static_clips` frames, evenly spaced,
    are each repeated to a clip (the privacy protocol's static clips). `resize` is "short"
    (short side to the input size, centre crop) or "full" (stretch the whole frame).
    """

    clip_len: int
    frame_stride: int = 4
    clip_stride: int | None = None
    num_clips: int | None = None
    static_clips: int = 0
    resize: str = "short"

    def __post_init__(self) -> None:
        for name in ("clip_len", "frame_stride"):
            if getattr(self, name) < 1:
                raise AnonfeatError(f"--{name.replace('_', '-')} must be at least 1")
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
    def span(self) -> int:
        """Frames from a clip's first to its last sampled frame, inclusive."""
        return (self.clip_len - 1) * self.frame_stride + 1

    @property
    def effective_clip_stride(self) -> int:
        return self.clip_stride if self.clip_stride is not None else self.clip_len * self.frame_stride

    def to_dict(self) -> dict:
        return asdict(self)


def clip_frame_indices(n_frames: int, sampling: Sampling) -> np.ndarray:
    """(n_clips, clip_len) source frame indices; at least one clip per video.

    A video shorter than one clip gives one clip whose missing frames repeat the last frame. With
    `num_clips`, a video with fewer distinct clip starts than that gets one clip per start (never
    the same clip twice: `--num-clips 100000` on a 32-frame video is 32 clips at most, not 100000).
    """
    if n_frames < 1:
        raise ValueError("video has no frames")
    last_start = max(n_frames - sampling.span, 0)
    if sampling.num_clips is not None:  # capped at the distinct clips: a short video never repeats a clip
        count = min(sampling.num_clips, last_start + 1)
        starts = np.round(np.linspace(0, last_start, count)).astype(np.int64)
    else:
        starts = np.arange(0, last_start + 1, sampling.effective_clip_stride, dtype=np.int64)
    offsets = np.arange(sampling.clip_len, dtype=np.int64) * sampling.frame_stride
    return np.minimum(starts[:, None] + offsets[None, :], n_frames - 1)


def static_frame_indices(n_frames: int, count: int) -> np.ndarray:
    """`count` frames evenly spread over the video (centres of equal segments)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.minimum(((np.arange(count) + 0.5) * n_frames / count).astype(np.int64), n_frames - 1)
