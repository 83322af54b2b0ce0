"""Writing videos with PyAV, one frame at a time (memory stays one frame whatever the length)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CONTAINERS = {
    ".mp4": ("mp4", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".avi": ("avi", "mpeg4"),
}


class VideoWriter:
    """Encode RGB uint8 frames (H, W, 3) to a file; the container follows the suffix.

    .mp4/.mkv hold H.264, .avi MPEG-4 part 2 (qscale 2). H.264 is crf 18 in yuv420p (what players
    expect) or, with `lossless=True`, qp 0 in yuv444p: pixels come back within YUV rounding and a
    black region stays exactly black. yuv420p cannot represent odd sizes (chroma is cropped in
    whole samples), so odd sizes use yuv444p and decode to exactly H x W.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, lossless: bool = False):
        import av

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in CONTAINERS:
            raise ValueError(f"cannot write {self.path}: suffix must be one of {sorted(CONTAINERS)}")
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be at least 1x1, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        fmt, codec = CONTAINERS[suffix]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (height, width)
        self._container = av.open(str(self.path), mode="w", format=fmt)
        stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        if codec == "libx264":
            even = height % 2 == 0 and width % 2 == 0
            stream.pix_fmt = "yuv420p" if even and not lossless else "yuv444p"
            stream.options = {"qp": "0", "preset": "fast"} if lossless else {"crf": "18", "preset": "medium"}
        else:
            stream.pix_fmt = "yuv420p"
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2 * 118  # qscale 2 (FF_QP2LAMBDA = 118)
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape != (*self.size, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {(*self.size, 3)}, got {frame.dtype} {frame.shape}")
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(picture):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(path: str | Path, frames: np.ndarray, fps: float, lossless: bool = False) -> None:
    """Encode RGB frames (T, H, W, 3) uint8 to a file (see VideoWriter). Any T, H, W >= 1 works."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1 or 0 in frames.shape:
        raise ValueError(f"frames must have shape (T>=1, H>=1, W>=1, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], lossless) as writer:
        for frame in frames:
            writer.write(frame)


def read_frames(path: str | Path):
    """Yield every frame of a video as RGB uint8 (H, W, 3) at its native size, in decode order,
    upright (the display rotation applied, as every reader of anonfeat sees them)."""
    from anonfeat.video.reader import iter_upright_frames

    yield from iter_upright_frames(path)
