"""Decoding: each needed frame once, at the resolution the encoder needs.

Frames are scaled by the decoder itself (short side to the input size, or the whole frame
for resize="full"); cropping and normalization happen later on the compute device. Memory is
bounded by one chunk of clips, never the whole video.

PyAV does everything: probing (frame count from the packet index, average fps, frame size from the
stream headers) and decoding through FFmpeg's filter `scale=W:H:flags=bilinear,format=rgb24`,
decoding forward and seeking only backwards or over a keyframe.

decord is optional (`pip install 'anonfeat[decord]'`, x86-64 wheels only): when it is installed it
decodes the streams the PyAV path refuses (frames without timestamps). It is never used for
probing, so a video the PyAV path serves gives the same frames, hence the same features, with or
without decord. decord's own reader is not the main path because it reads packets ahead without a
bound: its reading loop pushes packets while the decoder thread has no frame ready yet, so at the
start of a video (and after each seek) it can queue most of the compressed file in memory
(measured: +160 to +200 MB for the first 150 frames of a 190 MB file, +12 MB for a 3 MB one).
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
from anonfeat.video.resize import PilResize

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
    None when PyAV cannot read the container (opening the video then reports why)."""
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
    except Exception:  # noqa: BLE001 - unreadable containers are diagnosed when the video is opened
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
    """Random access to a video's frames (PyAV; decord, when installed, for streams PyAV refuses),
    with a cache of the last chunk's frames."""

    def __init__(self, path: str | Path, input_size: int, resize: str = "short", num_threads: int = 0,
                 frame_resize: PilResize | None = None):
        """frame_resize: resize each frame as torchvision does (timm encoders) instead of the
        decoder's own scaling; frames are then decoded at full size and resized one at a time."""
        self.path = Path(path)
        if not self.path.is_file():
            if self.path.is_symlink():
                raise VideoError(f"{self.path}: broken or looping symbolic link; point it at a video file")
            raise VideoError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise VideoError("empty file (0 bytes)")
        size = probe_stream(self.path)
        if size is not None:
            _check_size(self.path, *size)  # before any frame is decoded at full size
        self._num_threads = num_threads
        self._frame_resize = frame_resize
        self._reader = None  # decord, only when the PyAV path cannot serve this video
        self._sequential: SequentialDecoder | None = None
        try:
            self._sequential = SequentialDecoder(self.path, num_threads, frame_resize)
            info = self._sequential.info
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 - av raises many kinds; decord may still decode it
            info = self._probe_decord(exc)
        if info.n_frames < 1:
            self.close()
            raise VideoError("no video frames")
        _check_size(self.path, info.height, info.width)
        self.info = info
        self._out_h, self._out_w = ((info.height, info.width) if frame_resize
                                    else decode_size(info.height, info.width, input_size, resize))
        if self._sequential is not None:
            self._sequential.set_output_size(self._out_h, self._out_w)
        else:
            self._open_decord()
        self._cache: dict[int, np.ndarray] = {}

    def _probe_decord(self, pyav_error: BaseException) -> VideoInfo:
        """VideoInfo from decord for a stream the PyAV path refused; without decord, the PyAV error."""
        decord = _import_decord()
        if decord is None:
            raise VideoError(f"cannot decode: {_first_line(pyav_error)}{_DECORD_HINT}") from None
        try:
            with _native_stderr_silenced():
                probe = decord.VideoReader(str(self.path), num_threads=1)
            n_frames = len(probe)
            if n_frames < 1:
                raise VideoError("no video frames")
            height, width = probe[0].shape[:2]
            return VideoInfo(n_frames=n_frames, fps=float(probe.get_avg_fps()), height=height, width=width)
        except VideoError:
            raise
        except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
            raise VideoError(f"cannot decode: {_first_line(exc)}") from None

    def _open_decord(self) -> None:
        decord = _import_decord()
        if decord is None:
            raise VideoError(f"cannot decode this stream with PyAV{_DECORD_HINT}")
        try:
            self._reader = decord.VideoReader(str(self.path), width=self._out_w, height=self._out_h,
                                              num_threads=self._num_threads)
        except Exception as exc:
            raise VideoError(f"cannot decode: {_first_line(exc)}") from None

    def _decode(self, indices: list[int]) -> np.ndarray:
        """(len(indices), h, w, 3) uint8 for sorted, unique frame indices."""
        if self._sequential is not None:
            try:
                return self._sequential.get(indices)
            except Exception as exc:  # noqa: BLE001 - e.g. a rotated stream or a frame without a timestamp
                self._sequential.close()
                self._sequential = None
                if _import_decord() is None:
                    raise VideoError(f"decoding failed near frame {indices[0]}: {_first_line(exc)}"
                                     f"{_DECORD_HINT}") from None
                self._open_decord()
        try:
            if self._frame_resize is not None:  # full-size frames: one at a time
                return np.stack([self._frame_resize(self._reader.get_batch([i]).asnumpy()[0]) for i in indices])
            return self._reader.get_batch(indices).asnumpy()
        except Exception as exc:
            raise VideoError(f"decoding failed near frame {indices[0]}: {_first_line(exc)}") from None

    def close(self) -> None:
        """Release the decoders now (the frame cache is dropped too)."""
        if self._sequential is not None:
            self._sequential.close()
            self._sequential = None
        self._reader = None
        self._cache = {}

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique frames (F, h, w, 3) uint8 for `indices` and the position of each index in them.

        Frames decoded for the previous call are reused, so overlapping clips decode each frame once.
        """
        unique, inverse = np.unique(indices, return_inverse=True)
        missing = [int(i) for i in unique if int(i) not in self._cache]
        if missing:
            decoded = dict(zip(missing, self._decode(missing)))
        else:
            decoded = {}
        cache = {int(i): decoded[int(i)] if int(i) in decoded else self._cache[int(i)] for i in unique}
        self._cache = cache
        return np.stack([cache[int(i)] for i in unique]), inverse.reshape(indices.shape)


class SequentialDecoder:
    """Frames by index through PyAV, in decoding order, with memory bounded by a frame or two.

    Frame i is the video packet with the i-th smallest timestamp (decord's numbering). Reading
    forward decodes every frame up to the next one asked for (a P/B frame needs those before it),
    but scales only the frames asked for; it seeks back to a keyframe only to go backwards or to
    jump over at least `SEEK_GAP` frames not needed.
    """

    SEEK_GAP = 32

    def __init__(self, path: Path, num_threads: int = 0, frame_resize: PilResize | None = None):
        import av

        self._container = av.open(str(path), metadata_errors="ignore")
        try:
            stream = self._container.streams.video[0]
            pts = []
            for packet in self._container.demux(stream):
                if packet.pts is None:
                    if packet.size:
                        raise ValueError("a video packet without a timestamp")
                    continue  # the flush packet at the end
                pts.append((packet.pts, packet.is_keyframe))
            pts.sort(key=lambda item: item[0])
            self._pts = [p for p, _ in pts]
            self._keyframes = np.array([i for i, (_, key) in enumerate(pts) if key] or [0], dtype=np.int64)
            self._index_of = {p: i for i, p in enumerate(self._pts)}
            if len(self._index_of) != len(self._pts):
                raise ValueError("two frames with the same timestamp")
            # One decoding thread whatever `num_threads` says (workers are the parallelism): FFmpeg's
            # own threads would outlive a reader that is not closed, and a process forked meanwhile
            # (DataLoader workers, a forked CLI) deadlocks when it frees their codec context.
            ctx = stream.codec_context
            ctx.thread_count = 1
            ctx.thread_type = "SLICE"
            if not (ctx.height and ctx.width):
                raise ValueError("the stream headers give no frame size")
            self._stream = stream
            self.info = VideoInfo(n_frames=len(self._pts), fps=_average_fps(stream),
                                  height=int(ctx.height or 0), width=int(ctx.width or 0))
            self._size = (self.info.width, self.info.height)  # until set_output_size
            self._frame_resize = frame_resize
            self._graph = None
            self._frames = None  # the decoding iterator
            self._next = 0  # index of the next frame the iterator will yield
        except BaseException:
            self._container.close()
            raise

    def __len__(self) -> int:
        return len(self._pts)

    def set_output_size(self, out_h: int, out_w: int) -> None:
        """Scale decoded frames to (out_h, out_w) from now on."""
        self._size = (out_w, out_h)
        self._graph = None

    def close(self) -> None:
        self._frames = None
        self._graph = None
        self._stream = None
        self._container.close()

    def _seek(self, index: int) -> None:
        key = int(self._keyframes[max(0, np.searchsorted(self._keyframes, index, side="right") - 1)])
        self._frames = None
        self._container.seek(self._pts[key], stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._next = -1  # unknown until the first frame comes out

    def _scale(self, frame) -> np.ndarray:
        import av

        if getattr(frame, "rotation", 0):
            raise ValueError("rotated stream")  # decord applies the display matrix; fall back to it
        if self._graph is None:
            graph = av.filter.Graph()
            src = graph.add_buffer(template=self._stream)
            scale = graph.add("scale", f"{self._size[0]}:{self._size[1]}:flags=bilinear")
            fmt = graph.add("format", "rgb24")
            sink = graph.add("buffersink")
            src.link_to(scale)
            scale.link_to(fmt)
            fmt.link_to(sink)
            graph.configure()
            self._graph = graph
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()

    def get(self, indices: list[int]) -> np.ndarray:
        """(len(indices), h, w, 3) uint8 for sorted, unique frame indices."""
        out = []
        for target in indices:
            key = int(self._keyframes[max(0, np.searchsorted(self._keyframes, target, side="right") - 1)])
            if self._frames is None or target < self._next or key - max(self._next, 0) >= self.SEEK_GAP:
                self._seek(target)
            while True:
                frame = next(self._frames, None)
                if frame is None:
                    raise ValueError(f"the stream ended before frame {target}")
                index = self._index_of.get(frame.pts)
                if index is None:
                    raise ValueError("a decoded frame without a known timestamp")
                self._next = index + 1
                if index == target:
                    image = self._scale(frame)
                    out.append(image if self._frame_resize is None else self._frame_resize(image))
                    break
                if index > target:
                    raise ValueError(f"frame {target} was skipped")
        return np.stack(out)


def _average_fps(stream) -> float:
    """The stream's average frame rate (FFmpeg's avg_frame_rate, the figure decord reports), else
    its guessed rate, else 0."""
    for rate in (stream.average_rate, getattr(stream, "guessed_rate", None)):
        if rate:
            return float(rate)
    return 0.0


_DECORD_HINT = ("; installing decord (pip install 'anonfeat[decord]', x86-64 only) "
                "lets anonfeat decode such streams")
_decord = None


def _import_decord():
    """decord when it is installed (None otherwise), with FFmpeg's console chatter about broken
    files silenced (we report them ourselves)."""
    global _decord
    if _decord is None:
        try:
            import decord
            import decord.logging
        except ImportError:
            return None
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
