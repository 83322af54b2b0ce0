"""Decoding with decord: each needed frame once, at the resolution the encoder needs.

Frames are scaled by the decoder itself (short side to the input size, or the whole frame
for resize="full"); cropping and normalization happen later on the compute device. Memory is
bounded by one chunk of clips, never the whole video.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from anonfeat.errors import VideoError

# Frames above this many pixels are refused before any frame is decoded (one decoded 8192x8192
# frame is 200 MB; a hostile header can claim far more). ANONFEAT_MAX_PIXELS overrides it.
MAX_PIXELS = 8192 * 8192
MAX_PIXELS_ENV = "ANONFEAT_MAX_PIXELS"


def max_pixels() -> int:
    """The frame-size limit in pixels: ANONFEAT_MAX_PIXELS when set, else MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise VideoError(f"{MAX_PIXELS_ENV}={value!r} is not a positive number of pixels")
    return int(value)


def probe_stream(path: Path) -> tuple[int, int] | None:
    """(height, width) of the first video stream from the container headers, no frame decoded;
    None when PyAV cannot read the container (decord then reports why)."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency
        return None
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.video
            if not streams:
                kinds = sorted({s.type for s in container.streams}) or ["no"]
                raise VideoError(f"no video stream (the file holds {' and '.join(kinds)} streams only)")
            ctx = streams[0].codec_context
            return int(ctx.height or 0), int(ctx.width or 0)
    except VideoError:
        raise
    except Exception:  # noqa: BLE001 - unreadable containers are diagnosed by decord below
        return None


def _check_size(path: Path, height: int, width: int) -> None:
    limit = max_pixels()
    if height * width > limit:
        raise VideoError(f"{path.name}: frame size {width}x{height} ({height * width:,} pixels) is above the "
                         f"limit of {limit:,} pixels (8192x8192 by default, {MAX_PIXELS_ENV}); "
                         "downscale the video first")


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    height: int
    width: int


def decode_size(height: int, width: int, input_size: int, resize: str) -> tuple[int, int]:
    """(height, width) to decode at: short side to `input_size` (aspect kept), or exactly square."""
    if resize == "full":
        return input_size, input_size
    scale = input_size / min(height, width)
    return max(input_size, round(height * scale)), max(input_size, round(width * scale))


class FrameReader:
    """Random access to a video's frames through decord, with a cache of the last chunk's frames."""

    def __init__(self, path: str | Path, input_size: int, resize: str = "short", num_threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            if self.path.is_symlink():
                raise VideoError(f"{self.path}: broken or looping symbolic link; point it at a video file")
            raise VideoError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise VideoError("empty file (0 bytes)")
        size = probe_stream(self.path)
        if size is not None:
            _check_size(self.path, *size)  # before decord decodes a first frame at full size
        decord = _import_decord()
        try:
            with _native_stderr_silenced():
                probe = decord.VideoReader(str(self.path), num_threads=1)
            n_frames = len(probe)
            if n_frames < 1:
                raise VideoError("no video frames")
            height, width = probe[0].shape[:2]
            fps = float(probe.get_avg_fps())
            del probe
        except VideoError:
            raise
        except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
            raise VideoError(f"cannot decode: {_first_line(exc)}") from None
        _check_size(self.path, height, width)
        self.info = VideoInfo(n_frames=n_frames, fps=fps, height=height, width=width)
        out_h, out_w = decode_size(height, width, input_size, resize)
        try:
            self._reader = decord.VideoReader(str(self.path), width=out_w, height=out_h,
                                              num_threads=num_threads)
        except Exception as exc:
            raise VideoError(f"cannot decode: {_first_line(exc)}") from None
        self._cache: dict[int, np.ndarray] = {}

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique frames (F, h, w, 3) uint8 for `indices` and the position of each index in them.

        Frames decoded for the previous call are reused, so overlapping clips decode each frame once.
        """
        unique, inverse = np.unique(indices, return_inverse=True)
        missing = [int(i) for i in unique if int(i) not in self._cache]
        if missing:
            try:
                batch = self._reader.get_batch(missing).asnumpy()
            except Exception as exc:
                raise VideoError(f"decoding failed near frame {missing[0]}: {_first_line(exc)}") from None
            decoded = dict(zip(missing, batch))
        else:
            decoded = {}
        cache = {int(i): decoded[int(i)] if int(i) in decoded else self._cache[int(i)] for i in unique}
        self._cache = cache
        return np.stack([cache[int(i)] for i in unique]), inverse.reshape(indices.shape)


_decord = None


def _import_decord():
    """decord, with FFmpeg's console chatter about broken files silenced (we report them ourselves)."""
    global _decord
    if _decord is None:
        import decord
        import decord.logging

        decord.logging.set_level(decord.logging.QUIET)
        _decord = decord
    return _decord


@contextlib.contextmanager
def _native_stderr_silenced():
    """decord's C++ layer prints its own copy of open errors straight to fd 2; we report them."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
