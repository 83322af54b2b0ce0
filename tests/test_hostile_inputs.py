"""Hostile and odd inputs: each generated here, each either processed correctly or recorded in the
store's failures with a clear message, and the run always goes on to the end.

Labels, checkpoints and adapters that must be refused are at the end (most of their refusals are
tested next to their code: test_labels.py, test_encoders.py, test_adapter.py; the cases here are
the ones those files do not cover).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from anonfeat.errors import AnonfeatError, VideoError
from anonfeat.store import FeatureStore
from anonfeat.synth import write_video
from anonfeat.video.discover import find_videos

from conftest import forked_cli, moving_frames

# The frame-size limit is lowered for the run below so "huge" costs nothing to make; the refusal
# path is the same as at the real limit (8192 x 8192).
LIMIT = 200 * 200
UNICODE_NAME = "dir with space/vidéo ünï 日本 #1.mp4"

# key -> ("ok", expected n_frames) or ("failed", text the failure message must contain)
EXPECTED: dict[str, tuple[str, object]] = {
    "zero.mp4": ("failed", "empty file (0 bytes)"),
    "text.mp4": ("failed", "cannot decode"),
    "truncated.mp4": ("failed", "cannot decode"),
    "audio_only.mp4": ("failed", "no video stream (the file holds audio streams only)"),
    "huge.mp4": ("failed", f"huge.mp4: frame size 320x240 (76,800 pixels) is above the limit of {LIMIT:,} pixels"),
    "loop_a.mp4": ("failed", "broken or looping symbolic link"),
    "loop_b.mp4": ("failed", "broken or looping symbolic link"),
    "dangling.mp4": ("failed", "broken or looping symbolic link"),
    "one_frame.mp4": ("ok", 1),
    "shorter_than_clip.mp4": ("ok", 7),
    "vertical.mp4": ("ok", 20),
    "odd_size.mkv": ("ok", 18),
    "gray.mkv": ("ok", 20),
    "vfr.mkv": ("ok", 30),
    UNICODE_NAME: ("ok", 12),
    "x/same.mp4": ("ok", 16),
    "y/same.mp4": ("ok", 17),
    "link_to_vertical.mp4": ("ok", 20),
}


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        tone = np.sin(np.arange(16384) * 2 * np.pi * 440 / 16000).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gray(path: Path, n_frames: int) -> None:
    """A true one-channel video (FFV1, pix_fmt gray), not RGB frames that happen to be grey."""
    frames = moving_frames(n_frames, 48, 64, seed=7).mean(axis=-1).astype(np.uint8)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_vfr(path: Path, n_frames: int) -> None:
    """Variable frame rate: frame durations alternate 100, 20, 20 ms."""
    frames = moving_frames(n_frames, 48, 64, seed=8)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
            pts += 100 if i % 3 == 0 else 20
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a text file, not a video\n")
    good = root / "good_for_truncation.tmp"
    write_video(good.with_suffix(".mp4"), moving_frames(30, 64, 64, seed=9), fps=25)
    data = good.with_suffix(".mp4").read_bytes()
    good.with_suffix(".mp4").unlink()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_audio_only(root / "audio_only.mp4")
    write_video(root / "huge.mp4", moving_frames(2, 240, 320, seed=10), fps=25)
    write_video(root / "one_frame.mp4", moving_frames(1, 64, 64, seed=11), fps=25)
    write_video(root / "shorter_than_clip.mp4", moving_frames(7, 64, 64, seed=12), fps=25)
    write_video(root / "vertical.mp4", moving_frames(20, 96, 54, seed=13), fps=30)
    write_video(root / "odd_size.mkv", moving_frames(18, 33, 47, seed=14), fps=24)
    write_gray(root / "gray.mkv", 20)
    write_vfr(root / "vfr.mkv", 30)
    write_video(root / UNICODE_NAME, moving_frames(12, 64, 64, seed=15), fps=25)
    write_video(root / "x" / "same.mp4", moving_frames(16, 64, 64, seed=16), fps=25)
    write_video(root / "y" / "same.mp4", moving_frames(17, 64, 64, seed=17), fps=25)
    os.symlink("loop_b.mp4", root / "loop_a.mp4")  # a file symlink loop
    os.symlink("loop_a.mp4", root / "loop_b.mp4")
    os.symlink("missing.mp4", root / "dangling.mp4")
    os.symlink("vertical.mp4", root / "link_to_vertical.mp4")
    os.symlink(".", root / "x" / "loop_dir")  # folder symlink loops: x/loop_dir -> x, back to the root
    os.symlink("..", root / "y" / "up")
    (root / "folder_named.mp4").mkdir()  # a folder with a video extension is not a video
    (root / "readme.txt").write_text("ignored by extension\n")
    return root


def test_generated_inputs_are_what_they_claim(hostile_dir):
    """Guard against a generator silently making ordinary videos."""
    with av.open(str(hostile_dir / "vfr.mkv")) as container:
        pts = [frame.pts for frame in container.decode(video=0)]
    assert len(set(np.diff(pts).tolist())) > 1  # really variable frame rate
    with av.open(str(hostile_dir / "gray.mkv")) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "gray"
    with av.open(str(hostile_dir / "audio_only.mp4")) as container:
        assert not container.streams.video and container.streams.audio


def test_discovery_survives_symlink_loops(hostile_dir):
    found: list = []
    thread = threading.Thread(target=lambda: found.extend(find_videos(hostile_dir)), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "find_videos hangs on a symlink loop"
    assert sorted(item.key for item in found) == sorted(EXPECTED)  # every file once, loops not followed


@pytest.fixture(scope="module")
def hostile_run(hostile_dir, tmp_path_factory):
    """One real CLI run (a decoding worker) over every hostile input."""
    out = tmp_path_factory.mktemp("hostile_out") / "feats.h5"
    env = {**os.environ, "ANONFEAT_MAX_PIXELS": str(LIMIT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "anonfeat", "extract", str(hostile_dir), "--out", str(out),
                           "--encoder", "videomae-tiny", "--random-init", "--static-clips", "2",
                           "--frame-stride", "2", "--batch-size", "8", "--workers", "1", "--device", "cpu",
                           "--dtype", "float32", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc, out


@pytest.mark.integration
def test_every_hostile_input_is_processed_or_reported(hostile_run):
    proc, out = hostile_run
    assert proc.returncode == 3, proc.stderr  # some failed, the run went to the end
    assert "Traceback" not in proc.stderr + proc.stdout
    with FeatureStore(out) as store:
        written, failures = store.videos(), store.failures()
        assert sorted(written + list(failures)) == sorted(EXPECTED)
        for key, (outcome, detail) in EXPECTED.items():
            if outcome == "ok":
                assert key in written, f"{key}: {failures.get(key)}"
                record = store.read_video(key)
                assert record.attrs["n_frames"] == detail, key
                assert record.clip_features.shape[0] >= 1 and np.isfinite(record.clip_features).all()
                assert record.static_features.shape == (2, 192)
            else:
                message = failures[key]
                assert detail in message, (key, message)
                assert "\n" not in message and "Traceback" not in message and len(message) < 400
                assert f"failed {key}: " in " ".join(proc.stdout.split())  # the CLI names the file
        assert store.verify() == []
        # odd inputs keep their facts
        assert store.video_attrs("vertical.mp4")["height"] == 96 and store.video_attrs("vertical.mp4")["width"] == 54
        assert store.video_attrs("odd_size.mkv")["width"] == 47
        assert store.video_attrs("gray.mkv")["n_frames"] == 20
        # duplicate stems in different folders are two videos with different features
        assert not np.allclose(store.clip_features("x/same.mp4"), store.clip_features("y/same.mp4"))
        # the symlink is read through: same features as its target
        np.testing.assert_allclose(store.clip_features("link_to_vertical.mp4"), store.clip_features("vertical.mp4"),
                                   atol=1e-5)


def test_frame_size_limit_refuses_before_decoding(hostile_dir, monkeypatch):
    """The refusal comes from the container headers: decord never gets to decode a huge frame."""
    from anonfeat.video import reader

    monkeypatch.setattr(reader, "_import_decord", lambda: pytest.fail("decoding started"))
    monkeypatch.setattr(reader, "MAX_PIXELS", LIMIT)
    with pytest.raises(VideoError, match=r"huge\.mp4: frame size 320x240 .* limit of 40,000 pixels"):
        reader.FrameReader(hostile_dir / "huge.mp4", 112)
    monkeypatch.setenv("ANONFEAT_MAX_PIXELS", "lots")
    with pytest.raises(VideoError, match="ANONFEAT_MAX_PIXELS='lots'"):
        reader.FrameReader(hostile_dir / "huge.mp4", 112)
    assert reader.MAX_PIXELS == LIMIT and reader.max_pixels.__doc__  # the default stays documented


def test_frame_size_default_limit_is_8192_squared():
    from anonfeat.video import reader

    assert reader.MAX_PIXELS == 8192 * 8192
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "8192 × 8192" in readme and "ANONFEAT_MAX_PIXELS" in readme


# -- labels ---------------------------------------------------------------------------------------
def test_labels_with_unknown_videos_are_counted_not_fatal(tmp_path):
    """Label rows without a store video and store videos without labels are counted (audit and
    train-adapter print both counts); only the matched ones are used."""
    from anonfeat.labels import load_labels, match_videos

    csv = tmp_path / "labels.csv"
    csv.write_text("video,split,action,face\n"
                   "a.mp4,train,run,1\nb.mp4,test,walk,0\nnot_in_store.mp4,train,run,1\nalso_absent.avi,test,walk,0\n")
    match = match_videos(load_labels(csv), ["a.mp4", "b.mp4", "unlabelled.mp4"])
    assert match.keys == ["a.mp4", "b.mp4"]
    assert (match.unmatched_labels, match.unmatched_store) == (2, 1)


@pytest.mark.parametrize("content, needle", [
    ("", "empty CSV"),
    ("video,split,action,face\n", "no videos in the labels"),
    ("video,action,face\nv,run,1\n", "has no test videos"),  # one video: the generated split is empty
    ("video,split,action,face\nv,train,run,yes\nw,test,run,maybe\n", "is 'maybe', not 0/1"),
    ("video,split,face\nv,train,1\nw,test,0\n", "missing column(s) action"),
    ("video,split,action,face\nv,train,run,1,extra\nw,test,run,0\n", "line 2 has"),
    ("video,split,action,face\nvidéo.mp4,train,run,1\nb.mp4,test,walk,0\n".encode("latin-1"),
     "not UTF-8 (byte 0xe9 on line 2); save it as UTF-8"),
    (("video,split,action,face\n" + "x" * 140000 + ".mp4,train,run,1\nb.mp4,test,walk,0\n").encode(),
     "line 2 cannot be read as CSV (field larger than field limit"),
    (b"video,split,action,face,action\na.mp4,train,run,1,walk\nb.mp4,test,walk,0,run\n",
     "column 'action' appears 2 times"),
])
def test_bad_labels_give_one_clear_line(tmp_path, content, needle):
    from anonfeat.labels import load_labels

    path = tmp_path / "labels.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(AnonfeatError) as info:
        load_labels(path)
    assert needle in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


# -- checkpoints and adapters ---------------------------------------------------------------------
def test_safetensors_checkpoint_with_wrong_shapes_is_refused_naming_the_tensors(tmp_path):
    from safetensors.torch import save_file

    from anonfeat.encoders import build_encoder, get_config, load_encoder

    state = {k: v.contiguous() for k, v in build_encoder(get_config("videomae-tiny"), seed=0).state_dict().items()}
    state["blocks.2.mlp.fc1.weight"] = state["blocks.2.mlp.fc1.weight"][:100].contiguous()
    state["blocks.0.norm1.weight"] = state["blocks.0.norm1.weight"][:10].contiguous()
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(AnonfeatError) as info:
        load_encoder("videomae-tiny", checkpoint=tmp_path / "bad.safetensors")
    message = str(info.value)
    assert "bad.safetensors" in message and "blocks.2.mlp.fc1.weight" in message and "blocks.0.norm1.weight" in message


@pytest.mark.integration
def test_cli_refuses_malicious_pth_and_foreign_adapter_in_one_line(tmp_path, video_dir):
    """Through the CLI (forked): a code-running .pth is refused (the code does not run), an adapter of another
    encoder is refused; both one line, exit 2, no traceback."""
    import pickle

    import torch

    from anonfeat.adapter.io import save_adapter
    from anonfeat.adapter.model import AnonymizingAdapter

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": {"x": torch.zeros(1)}, "hook": Payload()}))
    adapter = save_adapter(AnonymizingAdapter(384, 1, 2), tmp_path / "other.safetensors",
                           {"encoder": {"name": "videomae-s", "checkpoint_sha256": "abc"}})
    base = ["extract", str(video_dir), "--out", str(tmp_path / "o.h5"), "--no-progress", "--device", "cpu"]
    for extra, needle in ((["--checkpoint", str(tmp_path / "evil.pth")], "refused"),
                          (["--encoder", "videomae-tiny", "--random-init", "--adapter", str(adapter)],
                           "do not fit adapter other.safetensors: encoder videomae-tiny (adapter: videomae-s)")):
        proc = forked_cli([*base, *extra], tmp_path)
        assert proc.returncode == 2 and needle in " ".join(proc.stderr.split()), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "o.h5").exists()  # refused before any store is created
