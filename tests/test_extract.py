"""Extraction end to end on real decoded videos: layout, correctness, batching, failures, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.store import FeatureStore
from anonfeat.video.reader import FrameReader, decode_size
from anonfeat.video.sampling import Sampling, clip_frame_indices, static_frame_indices

from conftest import REAL_VIDEOS

EXPECTED_KEYS = ["a.mp4", "nested/b.mkv", "nested/deeper/vertical.mp4", "one_frame.mp4", "short.mp4"]


def options(**kw) -> ExtractOptions:
    base = dict(encoder="videomae-tiny", random_init=True, frame_stride=2, clip_stride=6, static_clips=2,
                batch_size=4, workers=0, device="cpu", dtype="float32", progress=False)
    base.update(kw)
    return ExtractOptions(**base)


def _decord():
    """decord, the independent reference decoder of these tests (skipped where it is not installed:
    tests/test_decoders.py checks that extraction is the same without it)."""
    return pytest.importorskip("decord")


def reference_features(path: Path, encoder, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """Clip and static features computed the plain way: decode every clip on its own, fp32."""
    cfg = encoder.config
    decord = _decord()
    probe = decord.VideoReader(str(path))
    height, width = probe[0].shape[:2]
    out_h, out_w = decode_size(height, width, cfg.img_size, sampling.resize)
    reader = decord.VideoReader(str(path), width=out_w, height=out_h)
    top, left = (out_h - cfg.img_size) // 2, (out_w - cfg.img_size) // 2
    mean, std = np.array(cfg.mean), np.array(cfg.std)

    def encode(indices: np.ndarray) -> np.ndarray:
        frames = reader.get_batch(list(indices)).asnumpy()[:, top:top + cfg.img_size, left:left + cfg.img_size]
        clip = ((frames / 255.0 - mean) / std).astype(np.float32).transpose(3, 0, 1, 2)[None]
        with torch.no_grad():
            return encoder(torch.from_numpy(clip))[0].numpy()

    n = len(probe)
    clips = np.stack([encode(row) for row in clip_frame_indices(n, sampling)])
    statics = np.stack([encode(np.full(sampling.clip_len, i)) for i in static_frame_indices(n, sampling.static_clips)])
    return clips, statics


@pytest.fixture(scope="module")
def store(video_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "feats.h5"
    result = extract(video_dir, out, options())
    assert result.exit_code == 0 and not result.failed
    return out


def test_layout_keys_and_attributes(store, video_dir):
    with FeatureStore(store) as fs:
        assert fs.videos() == EXPECTED_KEYS
        header = fs.header
        assert header.encoder == "videomae-tiny" and header.dim == 192 and header.features == "raw"
        assert header.sampling["frame_stride"] == 2 and header.sampling["static_clips"] == 2
        rec = fs.read_video("a.mp4")
        assert rec.clip_features.shape == (len(clip_frame_indices(40, Sampling(16, 2, 6))), 192)
        assert rec.clip_ranges.tolist()[0] == [0, 30]
        assert rec.static_features.shape == (2, 192) and rec.static_frames.tolist() == [10, 30]
        assert rec.attrs["n_frames"] == 40 and rec.attrs["width"] == 80 and rec.attrs["height"] == 64
        assert rec.attrs["fps"] == pytest.approx(25, rel=0.01)
        assert Path(rec.attrs["source"]) == video_dir / "a.mp4"
    # plain h5py readers see the documented layout
    with h5py.File(store) as f:
        assert json.loads(f.attrs["encoder_config"])["embed_dim"] == 192
        assert f["videos/nested/b.mkv/clip_features"].dtype == np.float32
        assert bool(f["videos/nested/b.mkv"].attrs["complete"])


@pytest.mark.parametrize("key", ["a.mp4", "nested/b.mkv", "nested/deeper/vertical.mp4", "short.mp4", "one_frame.mp4"])
def test_features_equal_plain_per_clip_encoding(store, video_dir, tiny_encoder, key):
    """Cross-video batching, the frame cache and on-device preprocessing change nothing."""
    clips, statics = reference_features(video_dir / key, tiny_encoder, Sampling(16, 2, 6, static_clips=2))
    with FeatureStore(store) as fs:
        np.testing.assert_allclose(fs.clip_features(key), clips, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(fs.static_features(key), statics, atol=2e-4, rtol=1e-4)


def test_short_video_pads_with_last_frame(store):
    with FeatureStore(store) as fs:
        assert fs.clip_ranges("short.mp4").tolist() == [[0, 4]]
        assert fs.clip_ranges("one_frame.mp4").tolist() == [[0, 0]]
        assert fs.static_features("one_frame.mp4").shape == (2, 192)


def test_batch_size_and_workers_do_not_change_features(store, video_dir, tmp_path):
    out = tmp_path / "other.h5"
    extract(video_dir, out, options(batch_size=3, workers=2))
    with FeatureStore(store) as a, FeatureStore(out) as b:
        assert a.videos() == b.videos()
        for key in a.videos():
            np.testing.assert_allclose(a.clip_features(key), b.clip_features(key), atol=1e-5)
            np.testing.assert_allclose(a.static_features(key), b.static_features(key), atol=1e-5)


def test_overlapping_clips_decode_each_frame_once(video_dir, monkeypatch, tmp_path):
    decoded: list[int] = []
    original = FrameReader.frames

    def counting(self, indices):
        before = set(self._cache)
        frames, index = original(self, indices)
        decoded.extend(int(i) for i in np.unique(indices) if int(i) not in before)
        return frames, index

    monkeypatch.setattr(FrameReader, "frames", counting)
    extract([_item(video_dir, "a.mp4")], tmp_path / "o.h5", options(frame_stride=1, clip_stride=2, static_clips=0,
                                                                     batch_size=2))
    needed = np.unique(clip_frame_indices(40, Sampling(16, 1, 2)))
    assert sorted(decoded) == needed.tolist()  # every needed frame decoded exactly once


@pytest.mark.parametrize("key", EXPECTED_KEYS)
def test_frames_are_decords_pixels_in_any_order(video_dir, key):
    """The PyAV reader (bounded memory) gives decord's pixels bit for bit, forward, sparse and backward."""
    reader = FrameReader(video_dir / key, 112)
    assert reader._sequential is not None  # these videos are served without decord's reader
    n = reader.info.n_frames
    reference = _decord().VideoReader(str(video_dir / key), width=reader._out_w, height=reader._out_h)
    for indices in ([0], list(range(0, n, 2)), [n - 1], sorted({0, n // 2, n - 1}), list(range(n))):
        np.testing.assert_array_equal(reader._decode(indices), reference.get_batch(indices).asnumpy())


def test_decord_takes_over_when_the_pyav_path_fails(video_dir, monkeypatch):
    from anonfeat.video import reader as reader_module

    decord = _decord()

    def failing(self, indices):
        raise ValueError("no")

    monkeypatch.setattr(reader_module.SequentialDecoder, "get", failing)
    reader = FrameReader(video_dir / "a.mp4", 112)
    frames, _ = reader.frames(np.arange(0, 8)[None])
    reference = decord.VideoReader(str(video_dir / "a.mp4"), width=reader._out_w, height=reader._out_h)
    np.testing.assert_array_equal(frames, reference.get_batch(list(range(8))).asnumpy())
    assert reader._sequential is None and reader._reader is not None


def _item(root: Path, key: str):
    from anonfeat.video.discover import VideoItem

    return VideoItem(key, root / key)


def test_bad_videos_are_recorded_and_the_run_goes_on(bad_video_dir, tmp_path):
    out = tmp_path / "mixed.h5"
    result = extract(bad_video_dir, out, options())
    assert result.exit_code == 3
    assert sorted(result.written) == ["a.mp4", "short.mp4"]
    assert set(result.failed) == {"zero.mp4", "text.mp4", "truncated.mp4"}
    with FeatureStore(out) as fs:
        assert fs.videos() == ["a.mp4", "short.mp4"]
        failures = fs.failures()
        assert "0 bytes" in failures["zero.mp4"] and failures["text.mp4"]


def test_resume_skips_done_and_redoes_incomplete(video_dir, tmp_path):
    out = tmp_path / "resume.h5"
    extract(video_dir, out, options())
    with h5py.File(out, "a") as f:  # simulate a crash in the middle of writing one video
        f["videos/a.mp4"].attrs["complete"] = False
        reference = f["videos/short.mp4/clip_features"][()]
        del f["videos/short.mp4"]
    result = extract(video_dir, out, options())
    assert sorted(result.written) == ["a.mp4", "short.mp4"]
    assert len(result.skipped) == 3
    with FeatureStore(out) as fs:
        assert fs.videos() == EXPECTED_KEYS
        np.testing.assert_array_equal(fs.clip_features("short.mp4"), reference)


@pytest.mark.parametrize("change", [dict(frame_stride=3), dict(static_clips=1), dict(dtype="float16"),
                                    dict(resize="full")])
def test_appending_with_other_settings_is_refused(video_dir, tmp_path, change):
    out = tmp_path / "mix.h5"
    extract([_item(video_dir, "short.mp4")], out, options())
    with pytest.raises(AnonfeatError, match="store was made with"):
        extract(video_dir, out, options(**change))
    with FeatureStore(out) as fs:  # what was written is untouched
        assert fs.videos() == ["short.mp4"]


def test_list_file_input(video_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# videos\n{video_dir / 'a.mp4'}\n\n{video_dir / 'short.mp4'}\n")
    result = extract(listing, tmp_path / "l.h5", options())
    assert len(result.written) == 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anonfeat", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_cli_extract_inspect_and_exit_codes(bad_video_dir, tmp_path):
    out = tmp_path / "cli.h5"
    proc = run_cli("extract", str(bad_video_dir), "--out", str(out), "--encoder", "videomae-tiny", "--random-init",
                   "--static-clips", "1", "--frame-stride", "2", "--workers", "1", "--no-progress")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(run_cli("inspect", str(out), "--json", "-").stdout)
    assert summary["encoder"]["name"] == "videomae-tiny"
    assert summary["videos"]["a.mp4"] == {"n_clips": 1, "dim": 192, "n_static": 1}
    assert set(summary["failed"]) == {"zero.mp4", "text.mp4", "truncated.mp4"}
    table = run_cli("inspect", str(out))
    assert table.returncode == 0 and "videomae-tiny" in table.stdout


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["--encoder", "videomae-tiny"], "--random-init"),
    (["--encoder", "nope", "--random-init"], "unknown encoder"),
    (["--encoder", "videomae-tiny", "--random-init", "--dtype", "int8"], "--dtype"),
])
def test_cli_usage_errors_are_one_line_exit_2(video_dir, tmp_path, args, message):
    proc = run_cli("extract", str(video_dir), "--out", str(tmp_path / "x.h5"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_cli_version_and_encoders():
    assert run_cli("--version").stdout.startswith("anonfeat ")
    listing = json.loads(run_cli("encoders", "--json", "-").stdout)
    assert {"videomae-s", "videomae-b", "videomae-l", "videomae-h", "videomaev2-g", "videomae-tiny"} <= set(listing)
    assert listing["videomae-b"]["embed_dim"] == 768 and 80e6 < listing["videomae-b"]["parameters"] < 90e6


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="../shared/real-videos is not here (only in the dev workspace)")
def test_real_videos_of_people(tmp_path):
    result = extract(REAL_VIDEOS, tmp_path / "real.h5", options(frame_stride=4, clip_stride=None, static_clips=3,
                                                                 workers=1, batch_size=8))
    assert result.exit_code == 0
    with FeatureStore(tmp_path / "real.h5") as fs:
        assert "flipping_pancake.mkv" in fs.videos()
        for key in fs.videos():
            feats = fs.clip_features(key)
            assert feats.shape[1] == 192 and np.isfinite(feats).all()
            assert fs.read_video(key).attrs["n_frames"] >= 120


def test_framewise_timm_encoder_extracts_real_video(video_dir, tmp_path):
    result = extract([_item(video_dir, "a.mp4")], tmp_path / "timm.h5",
                     options(encoder="timm:test_vit", clip_len=4, frame_stride=4, clip_stride=None, static_clips=1))
    assert result.exit_code == 0
    with FeatureStore(tmp_path / "timm.h5") as fs:
        assert fs.header.encoder == "timm:test_vit"
        feats = fs.clip_features("a.mp4")
        assert feats.shape == (2, fs.header.dim) and np.isfinite(feats).all()


def test_api_overrides_copy_the_options_and_refuse_unknown_names(tmp_path):
    from anonfeat.options import with_overrides

    options = ExtractOptions(batch_size=4)
    copy = with_overrides(options, ExtractOptions, {"batch_size": 8})
    assert copy.batch_size == 8 and options.batch_size == 4  # the caller's object is untouched
    assert with_overrides(None, ExtractOptions, {}).batch_size == ExtractOptions().batch_size
    with pytest.raises(TypeError, match="unknown ExtractOptions option.*batchsize"):
        extract(tmp_path, tmp_path / "x.h5", options, batchsize=8)
    assert not (tmp_path / "x.h5").exists()


def test_padded_last_batch_gives_the_same_features(store, video_dir, tmp_path, monkeypatch):
    """Compiled encoders see one batch shape: the short last batch is padded, and the padding's
    outputs never reach the store."""
    import anonfeat.extract as extract_module

    seen: list[int] = []
    real_job = extract_module.encoder_job

    def fixed_job(encoder, transform=None, compile=False):
        job = real_job(encoder, transform, compile=False)
        infer = job.infer
        job.infer = lambda clips: (seen.append(len(clips)), infer(clips))[1]
        job.fixed_batch = True
        return job

    monkeypatch.setattr(extract_module, "encoder_job", fixed_job)
    out = tmp_path / "padded.h5"
    result = extract(video_dir, out, options(batch_size=5))
    assert set(seen) == {5}, seen  # every batch, the last one included, had the full batch size
    with FeatureStore(store) as ref, FeatureStore(out) as got:
        stored = 0
        for key in ref.videos():
            np.testing.assert_allclose(got.clip_features(key), ref.clip_features(key), atol=1e-5)
            np.testing.assert_allclose(got.static_features(key), ref.static_features(key), atol=1e-5)
            stored += len(got.clip_features(key)) + len(got.static_features(key))
    assert result.clips == stored < 5 * len(seen)  # padding rows are not counted either


def test_result_says_where_the_loop_waited(video_dir, tmp_path):
    result = extract(video_dir, tmp_path / "s.h5", options())
    assert 0 < result.decode_wait_s < result.seconds
    assert result.device_wait_s == 0.0  # on the CPU every batch completes when it is run


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, tiny_encoder):
    from anonfeat import device as device_module

    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError("no Triton here\nlong traceback")
        return run

    monkeypatch.setattr(device_module.torch, "compile", broken_compile)
    forward = device_module.CompiledForward(tiny_encoder)
    x = torch.randn(2, 3, 16, 112, 112)
    with pytest.warns(RuntimeWarning, match="torch.compile failed \\(no Triton here\\)"):
        out = forward(x)
    with torch.no_grad():
        torch.testing.assert_close(out, tiny_encoder(x))
    assert forward.compiled is None  # later calls go straight to eager


def test_compile_default_is_on_for_cuda_only():
    from anonfeat.device import use_compile

    assert use_compile(None, torch.device("cuda", 0)) and not use_compile(None, torch.device("cpu"))
    assert use_compile(True, torch.device("cpu")) and not use_compile(False, torch.device("cuda", 0))
