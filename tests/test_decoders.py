"""--decoder: backend selection, the one-line refusal, the per-video CPU fallback, and extraction
without decord. No GPU here: a stand-in backend is registered by the tests, never by product code."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from anonfeat.errors import AnonfeatError, VideoError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.store import FeatureStore
from anonfeat.synth import write_video
from anonfeat.video import decoders, reader as reader_module
from anonfeat.video.decoders import CPU, DecoderEntry, DecoderUnavailable, select_decoder
from anonfeat.video.reader import FrameReader

from conftest import forked_cli, moving_frames

CUDA, CPU_DEVICE = torch.device("cuda"), torch.device("cpu")


class H264OnlyDecoder:
    """A stand-in for a hardware decoder: it decodes H.264 streams only (through the CPU reader, so
    features can be compared) and records which videos it opened."""

    name = "gpu"

    def __init__(self):
        self.opened: list[str] = []

    def can_decode(self, path: Path) -> bool:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name == "h264"

    def open(self, path: Path, input_size: int, resize: str, num_threads: int = 0, frame_resize=None):
        self.opened.append(Path(path).name)
        return FrameReader(path, input_size, resize, num_threads=num_threads, frame_resize=frame_resize)


def _unavailable() -> decoders.DecoderBackend:
    raise DecoderUnavailable("--decoder gpu: the stand-in is not installed")


def register_gpu(monkeypatch, backend=None, devices=("cuda",)):
    """Put a stand-in under the name "gpu" for this test (or one whose load fails when backend is None)."""
    load = _unavailable if backend is None else (lambda: backend)
    monkeypatch.setitem(decoders.DECODERS, "gpu", DecoderEntry("gpu", devices, load))


# -- selection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, device, available, expected", [
    ("auto", CUDA, True, "standin"),
    ("auto", CUDA, False, "cpu"),
    ("auto", CPU_DEVICE, True, "cpu"),
    ("auto", CPU_DEVICE, False, "cpu"),
    ("cpu", CUDA, True, "cpu"),
    ("cpu", CPU_DEVICE, False, "cpu"),
    ("gpu", CUDA, True, "standin"),
    ("gpu", CUDA, False, "refused: the stand-in is not installed"),
    ("gpu", CPU_DEVICE, True, "refused: decodes for a CUDA device"),
    ("gpu", CPU_DEVICE, False, "refused: decodes for a CUDA device"),
])
def test_selection_by_spec_device_and_availability(monkeypatch, spec, device, available, expected):
    standin = H264OnlyDecoder()
    register_gpu(monkeypatch, standin if available else None)
    if expected.startswith("refused: "):
        with pytest.raises(DecoderUnavailable, match=expected.removeprefix("refused: ")):
            select_decoder(spec, device)
    else:
        assert select_decoder(spec, device) is (standin if expected == "standin" else CPU)


def test_unknown_decoder_name_is_refused():
    with pytest.raises(AnonfeatError, match="--decoder 'nvdec': choose auto, cpu, gpu"):
        select_decoder("nvdec", CPU_DEVICE)


def test_the_shipped_gpu_entry_never_pretends(monkeypatch):
    """Without the package: it says to install the extra; with it: GPU decoding is not in this build.
    Either way `auto` on CUDA keeps the CPU path."""
    monkeypatch.setitem(sys.modules, decoders.GPU_PACKAGE, None)  # import fails: not installed
    with pytest.raises(DecoderUnavailable, match=r"needs PyNvVideoCodec, which is not installed: pip install 'anonfeat\[gpu\]'"):
        select_decoder("gpu", CUDA)
    monkeypatch.setitem(sys.modules, decoders.GPU_PACKAGE, types.ModuleType(decoders.GPU_PACKAGE))
    with pytest.raises(DecoderUnavailable, match="GPU decoding is not available in this build"):
        select_decoder("gpu", CUDA)
    assert select_decoder("auto", CUDA) is CPU


@pytest.mark.parametrize("command", [
    ["extract", "VIDEOS", "--out", "OUT", "--random-init", "--encoder", "videomae-tiny"],
    ["prune", "VIDEOS", "--pruner", "missing.safetensors", "--out", "OUT"],
    ["train-pruner", "VIDEOS", "--labels", "missing.csv", "--out", "OUT", "--random-init"],
    ["bench", "--json", "OUT", "--skip-memory"],
])
@pytest.mark.parametrize("device", ["cpu", "auto"])  # auto: this machine has no CUDA GPU
def test_cli_refuses_gpu_decoding_in_one_line_before_any_work(tmp_path, video_dir, command, device):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the refusal below is for machines without one")
    out = tmp_path / "out.file"
    args = [str(video_dir) if a == "VIDEOS" else str(out) if a == "OUT" else a for a in command]
    run = forked_cli([*args, "--device", device, "--decoder", "gpu", "--no-progress"]
                     if command[0] != "bench" else [*args, "--device", device, "--decoder", "gpu"], tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--decoder gpu decodes for a CUDA device" in lines[0], run.stderr
    assert "this run is on cpu (torch sees no CUDA GPU here)" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("out.file*"))  # nothing was started


# -- the per-video fallback --------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_codecs(tmp_path_factory) -> Path:
    """Two H.264 videos and one MPEG-4 part 2 (.avi) that the stand-in cannot decode."""
    root = tmp_path_factory.mktemp("codecs")
    write_video(root / "a.mp4", moving_frames(24, 64, 80, seed=21), fps=25)
    write_video(root / "b.avi", moving_frames(20, 48, 64, seed=22), fps=25)
    write_video(root / "c.mkv", moving_frames(18, 40, 56, seed=23), fps=24)
    return root


def opts(**kw) -> ExtractOptions:
    base = dict(encoder="videomae-tiny", random_init=True, frame_stride=2, clip_stride=6, static_clips=1,
                batch_size=4, workers=0, device="cpu", dtype="float32", progress=False)
    return ExtractOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def default_store(mixed_codecs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "default.h5"
    result = extract(mixed_codecs, out, opts())  # --decoder auto: the CPU path on this machine
    assert not result.failed and result.decoder == "cpu" and result.decoder_fallbacks == []
    return out


def assert_same_features(a: Path, b: Path) -> None:
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        assert fa.videos() == fb.videos() and len(fa.videos()) >= 3
        for key in fa.videos():
            np.testing.assert_array_equal(fa.clip_features(key), fb.clip_features(key))
            np.testing.assert_array_equal(fa.static_features(key), fb.static_features(key))


def test_decoder_cpu_gives_exactly_the_default_runs_features(mixed_codecs, default_store, tmp_path):
    result = extract(mixed_codecs, tmp_path / "cpu.h5", opts(decoder="cpu"))
    assert result.decoder == "cpu" and not result.failed
    assert_same_features(default_store, tmp_path / "cpu.h5")


def test_a_stream_the_decoder_refuses_is_decoded_on_the_cpu(mixed_codecs, default_store, tmp_path, monkeypatch):
    standin = H264OnlyDecoder()
    register_gpu(monkeypatch, standin, devices=("cpu", "cuda"))  # lets the stand-in run on this CPU machine
    result = extract(mixed_codecs, tmp_path / "gpu.h5", opts(decoder="gpu"))
    assert not result.failed and result.decoder == "gpu"
    assert result.decoder_fallbacks == ["b.avi"]
    assert sorted(standin.opened) == ["a.mp4", "c.mkv"]  # the stand-in never opened the MPEG-4 video
    assert_same_features(default_store, tmp_path / "gpu.h5")


@pytest.mark.integration
def test_the_run_summary_notes_the_fallback(mixed_codecs, tmp_path):
    def setup() -> None:  # in the forked CLI process only
        decoders.DECODERS["gpu"] = DecoderEntry("gpu", ("cpu",), H264OnlyDecoder)

    run = forked_cli(["extract", str(mixed_codecs), "--out", str(tmp_path / "s.h5"), "--encoder", "videomae-tiny",
                      "--random-init", "--device", "cpu", "--decoder", "gpu", "--workers", "1", "--no-progress"],
                     tmp_path, setup=setup)
    assert run.returncode == 0, run.stderr
    assert "3 written" in run.stdout
    assert "1 videos decoded on the CPU (fallback" in run.stdout and "b.avi" in run.stdout


def test_training_clips_fall_back_per_video(mixed_codecs):
    from anonfeat.pruning.data import LabelledVideos, TrainingClips
    from anonfeat.video.discover import find_videos

    items = find_videos(mixed_codecs)
    videos = LabelledVideos(items, [item.key for item in items], np.zeros(len(items), dtype=np.int64),
                            np.zeros((len(items), 0), np.float32), ["x"], [], 0, 0)
    standin = H264OnlyDecoder()
    plain = TrainingClips(videos, 16, 1, 112, augment=False)
    routed = TrainingClips(videos, 16, 1, 112, augment=False, decoder=standin)
    for i, item in enumerate(items):
        a, b = plain[i], routed[i]
        assert b["fallback"] == (item.key == "b.avi") and not a["fallback"]
        assert torch.equal(a["clip"], b["clip"])
    assert sorted(standin.opened) == ["a.mp4", "c.mkv"]


# -- without decord ----------------------------------------------------------------------------
@pytest.fixture()
def no_decord(monkeypatch):
    """This process as on a machine without decord (arm64): `import decord` fails."""
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(reader_module, "_decord", None)
    assert reader_module._import_decord() is None


def test_extraction_without_decord_gives_the_same_features(mixed_codecs, default_store, tmp_path, no_decord):
    result = extract(mixed_codecs, tmp_path / "nodecord.h5", opts(workers=1))
    assert not result.failed
    assert_same_features(default_store, tmp_path / "nodecord.h5")
    with FeatureStore(default_store) as fa, FeatureStore(tmp_path / "nodecord.h5") as fb:
        for key in fa.videos():  # the probe (frame count, fps, size) agrees too
            assert fa.read_video(key).attrs == fb.read_video(key).attrs


def test_probe_reads_count_fps_and_size_from_pyav(mixed_codecs, no_decord):
    for name, (n, fps, h, w) in {"a.mp4": (24, 25, 64, 80), "b.avi": (20, 25, 48, 64), "c.mkv": (18, 24, 40, 56)}.items():
        info = FrameReader(mixed_codecs / name, 112).info
        assert (info.n_frames, info.height, info.width) == (n, h, w)
        assert info.fps == pytest.approx(fps, rel=1e-3)


def test_without_decord_a_stream_pyav_refuses_names_the_extra(mixed_codecs, monkeypatch, no_decord):
    def failing(self, indices):
        raise ValueError("a decoded frame without a known timestamp")

    monkeypatch.setattr(reader_module.SequentialDecoder, "get", failing)
    reader = FrameReader(mixed_codecs / "a.mp4", 112)
    with pytest.raises(VideoError, match=r"decoding failed near frame 0: a decoded frame without a known "
                                         r"timestamp; installing decord \(pip install 'anonfeat\[decord\]'"):
        reader.frames(np.arange(4)[None])
