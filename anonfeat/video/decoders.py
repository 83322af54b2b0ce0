"""Decoder backends: what turns a video file into the uint8 frames extraction crops and encodes.

`--decoder cpu` is the PyAV path of anonfeat.video.reader (`FrameReader`), run in the DataLoader's
worker processes: the features of today's runs. `--decoder gpu` names NVDEC decoding through
NVIDIA's PyNvVideoCodec (`pip install 'anonfeat[gpu]'`). This build has no NVDEC backend yet (it
lands once it can be measured on a GPU), so resolving `gpu` always ends in one line saying why;
`auto` then keeps the CPU path. `auto` picks `gpu` when the run's device is CUDA and the gpu backend
loads, `cpu` otherwise.

A backend may refuse a single video (`can_decode` False: a codec or pixel format its hardware
cannot decode); that video is then decoded by the CPU path and the run reports it
(`ExtractResult.decoder_fallbacks`).

Why PyNvVideoCodec for the gpu backend (the wheels below were inspected after `pip download`):

- PyNvVideoCodec 2.2.4 (cp311, manylinux x86-64): a 27 MB wheel with no Python dependencies; it
  bundles the FFmpeg demuxing libraries (libavformat, libavutil) and the CUDA runtime, so it
  installs from PyPI alone, with no system FFmpeg. It drives NVDEC directly (H.264, HEVC, AV1,
  VP9...) and hands decoded surfaces to torch over DLPack without a host copy; the resize, crop
  and normalization then run as torch kernels on the same device. Small enough to carry to a GPU
  machine that reaches no registry.
- NVIDIA DALI (nvidia-dali-cuda120 2.4.0): also self-contained (bundles FFmpeg) and resizes on the
  GPU itself, but the wheel alone is 424 MB, plus nvidia-nvimgcodec and other dependencies, and
  it needs its pipeline model around the decoder (and keyframes every 10-15 frames for its video
  reader, per its release notes).
- torchcodec (0.17.0): a 10 MB wheel with a simple tensor API and CUDA decoding, but it loads
  FFmpeg's shared libraries from the system (and needs an FFmpeg built with NVDEC for CUDA), which
  the brief rules out: a plain `pip install` must be enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from anonfeat.errors import AnonfeatError, first_line
from anonfeat.options import DECODERS
from anonfeat.video.reader import FrameReader, VideoInfo
from anonfeat.video.resize import PilResize

DECODER_CHOICES = DECODERS  # declared with the --decoder flag
GPU_PACKAGE = "PyNvVideoCodec"


class DecoderUnavailable(AnonfeatError):
    """The decoder asked for cannot run here (no CUDA device, package missing, backend not built)."""


class FrameSource(Protocol):
    """One open video: its probed info and frames by index, decoded at the encoder's resolution."""

    info: VideoInfo

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique frames (F, h, w, 3) uint8 for `indices` and the position of each index in them."""
        ...

    def close(self) -> None: ...


class DecoderBackend(Protocol):
    """A way to decode videos: `open` a video scaled for the encoder, `can_decode` its stream."""

    name: str

    def can_decode(self, path: Path) -> bool:
        """Whether this backend decodes the stream of `path` (else the CPU path takes the video)."""
        ...

    def open(self, path: Path, input_size: int, resize: str, num_threads: int = 0,
             frame_resize: PilResize | None = None) -> FrameSource: ...


class CpuDecoder:
    """Today's path: PyAV in the calling process (a DataLoader worker during extraction)."""

    name = "cpu"

    def can_decode(self, path: Path) -> bool:
        return True

    def open(self, path: Path, input_size: int, resize: str, num_threads: int = 0,
             frame_resize: PilResize | None = None) -> FrameSource:
        return FrameReader(path, input_size, resize, num_threads=num_threads, frame_resize=frame_resize)


CPU = CpuDecoder()


@dataclass(frozen=True)
class DecoderEntry:
    """A registered backend: the compute device types it can feed and how to load it (`load`
    raises DecoderUnavailable, one line, when it cannot run here)."""

    name: str
    devices: tuple[str, ...]
    load: Callable[[], DecoderBackend]


def _load_nvdec() -> DecoderBackend:
    """The NVDEC backend. Its package is imported first, so a missing install is named as such."""
    try:
        __import__(GPU_PACKAGE)
    except ImportError:
        raise DecoderUnavailable(f"--decoder gpu needs {GPU_PACKAGE}, which is not installed: "
                                 "pip install 'anonfeat[gpu]', or use --decoder cpu") from None
    except Exception as exc:  # noqa: BLE001 - e.g. no CUDA driver library: one line, not a traceback
        raise DecoderUnavailable(f"--decoder gpu: {GPU_PACKAGE} failed to load ({first_line(exc)}); "
                                 "use --decoder cpu") from None
    raise DecoderUnavailable(f"--decoder gpu: GPU decoding is not available in this build of anonfeat "
                             f"({GPU_PACKAGE} is installed, but the NVDEC backend has not landed); "
                             "use --decoder cpu")


# name -> entry; tests put stand-in backends here (monkeypatch.setitem), product code never does.
DECODERS: dict[str, DecoderEntry] = {
    "cpu": DecoderEntry("cpu", ("cpu", "cuda"), lambda: CPU),
    "gpu": DecoderEntry("gpu", ("cuda",), _load_nvdec),
}


def select_decoder(spec: str, device) -> DecoderBackend:
    """The backend for `--decoder spec` on `device` (a torch.device); DecoderUnavailable, one line,
    when `spec` names a backend that cannot run here. Call it before any work starts."""
    if spec not in DECODER_CHOICES:
        raise AnonfeatError(f"--decoder {spec!r}: choose {', '.join(DECODER_CHOICES)}")
    if spec == "cpu":
        return DECODERS["cpu"].load()
    entry = DECODERS["gpu"]
    if spec == "auto":
        if device.type not in entry.devices:
            return DECODERS["cpu"].load()
        try:
            return entry.load()
        except DecoderUnavailable:
            return DECODERS["cpu"].load()
    if device.type not in entry.devices:
        import torch

        where = " (torch sees no CUDA GPU here)" if not torch.cuda.is_available() else ""
        raise DecoderUnavailable(f"--decoder gpu decodes for a CUDA device, but this run is on {device}{where}; "
                                 "use --decoder cpu (or auto), or --device cuda")
    return entry.load()


def open_video(decoder: DecoderBackend, path: Path, input_size: int, resize: str,
               num_threads: int = 0, frame_resize: PilResize | None = None) -> tuple[FrameSource, bool]:
    """`decoder`'s frame source for `path`, or the CPU path's when `decoder` cannot decode its
    stream; and whether it fell back to the CPU. `frame_resize`: the encoder family's own resize."""
    if decoder is not CPU and not decoder.can_decode(Path(path)):
        return CPU.open(Path(path), input_size, resize, num_threads, frame_resize), True
    return decoder.open(Path(path), input_size, resize, num_threads, frame_resize), False
