"""Hostile inputs, round 2 (issue 16): no input may delete data, write outside its place, leak pixels
or crash. One test (or a few) per case, in the issue's order of severity; every refusal is one line
naming the file and the fix, and nothing already written is lost.

The store-writing cases run `extract` in-process (random-init videomae-tiny, tiny videos) or through
the CLI in a forked child (`forked_cli`), so the whole file stays well under a minute.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.store import FeatureStore
from anonfeat.synth import write_video
from anonfeat.video.discover import find_videos

from conftest import forked_cli, moving_frames

OPTIONS = dict(encoder="videomae-tiny", random_init=True, frame_stride=1, clip_len=16, batch_size=8, workers=0,
               device="cpu", dtype="float32", progress=False)
FLAGS = ["--encoder", "videomae-tiny", "--random-init", "--frame-stride", "1", "--batch-size", "8", "--workers", "0",
         "--device", "cpu", "--dtype", "float32", "--no-progress"]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return " ".join(text.split())


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    """Six tiny videos in two folders (16 frames, 32x32: one clip each)."""
    root = tmp_path_factory.mktemp("small")
    for i, name in enumerate(["a.mp4", "b.mp4", "squat/c.mp4", "squat/d.mp4", "run/e.mp4", "run/f.mp4"]):
        write_video(root / name, moving_frames(16, 32, 32, seed=i), fps=25)
    return root


@pytest.fixture(scope="module")
def small_store(small_videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_store") / "feats.h5"
    assert extract(small_videos, out, ExtractOptions(**OPTIONS)).exit_code == 0
    return out


def copy_store(store: Path, tmp_path: Path, name: str = "feats.h5") -> Path:
    target = tmp_path / name
    shutil.copy(store, target)
    return target


def store_keys(path: Path) -> list[str]:
    with FeatureStore(path) as store:
        return store.videos()


# -- 1. video-list keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("line, needle", [
    ("/", "is a folder"),
    (".", "is a folder"),
    ("squat", "is a folder"),
    ("squat/", "is a folder"),
    ("a.mp4\x00b", "NUL byte"),
])
def test_list_line_naming_a_folder_root_or_nul_is_refused_and_deletes_nothing(small_videos, small_store, tmp_path,
                                                                               line, needle):
    out = copy_store(small_store, tmp_path)
    listing = small_videos / "list_bad.txt"
    listing.write_text(f"a.mp4\n{line}\nb.mp4\n")
    try:
        with pytest.raises(AnonfeatError) as info:
            extract(listing, out, ExtractOptions(**OPTIONS))
    finally:
        listing.unlink()
    assert needle in str(info.value) and "list_bad.txt" in str(info.value) and "\n" not in str(info.value)
    assert len(store_keys(out)) == 6  # nothing deleted


def test_list_line_cli_is_one_line_exit_2(small_videos, small_store, tmp_path):
    out = copy_store(small_store, tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("/\n")
    run = forked_cli(["extract", str(listing), "--out", str(out), *FLAGS], tmp_path)
    assert run.returncode == 2 and "is a folder" in one_line(run.stderr)
    assert len(store_keys(out)) == 6


def test_keys_that_are_folders_of_other_keys_are_refused(tmp_path):
    """'x.mp4' and 'x.mp4/y.mp4' cannot both be store groups: writing or failing one replaces the other."""
    from anonfeat.video.discover import VideoItem, check_keys

    with pytest.raises(AnonfeatError, match="is also a folder of video"):
        check_keys([VideoItem("x.mp4", tmp_path / "x.mp4"), VideoItem("x.mp4/y.mp4", tmp_path / "y.mp4")], "list")
    with pytest.raises(AnonfeatError, match="'..' path part"):
        check_keys([VideoItem("../x.mp4", tmp_path / "x.mp4")], "list")


def test_store_never_lets_a_failure_record_delete_other_videos(small_store, tmp_path):
    """The store's own guard (API users can pass any VideoItem): a key that is a folder of videos, an
    empty key, '.' or a key inside another video are refused, and every video stays."""
    out = copy_store(small_store, tmp_path)
    with FeatureStore(out, "a") as store:
        for key in ("squat", "", ".", "a.mp4/x.mp4", "squat/../a.mp4"):
            with pytest.raises(AnonfeatError):
                store.record_failure(key, "boom")
    assert len(store_keys(out)) == 6


def test_symlink_in_a_list_keeps_its_listed_key(small_videos, tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    shutil.copy(small_videos / "a.mp4", root / "target.mp4")
    os.symlink("target.mp4", root / "link.mp4")
    (root / "list.txt").write_text("link.mp4\ntarget.mp4\n")
    assert [item.key for item in find_videos(root / "list.txt")] == ["link.mp4", "target.mp4"]


# -- 2. links inside a store ----------------------------------------------------------------------
def _link_case(store: Path, tmp_path: Path, kind: str) -> Path:
    out = copy_store(store, tmp_path)
    other = copy_store(store, tmp_path, "other.h5")
    with h5py.File(out, "a") as f:
        if kind == "external_group":
            del f["videos/a.mp4"]
            f["videos/a.mp4"] = h5py.ExternalLink(str(other), "/videos/a.mp4")
        elif kind == "soft_group":
            del f["videos/a.mp4"]
            f["videos/a.mp4"] = h5py.SoftLink("/videos/b.mp4")
        elif kind == "external_dataset":
            del f["videos/b.mp4/clip_features"]
            (tmp_path / "not_hdf5.bin").write_bytes(b"plain bytes, not HDF5" * 10)
            f["videos/b.mp4/clip_features"] = h5py.ExternalLink(str(tmp_path / "not_hdf5.bin"), "/x")
    return out


@pytest.mark.parametrize("kind", ["external_group", "soft_group", "external_dataset"])
def test_links_inside_a_store_are_refused_by_every_reader_and_writer(small_videos, small_store, tmp_path, kind):
    out = _link_case(small_store, tmp_path, kind)
    other_before = (tmp_path / "other.h5").read_bytes()
    with pytest.raises(AnonfeatError, match=r"link to .*a store never links outside"):
        FeatureStore(out)
    with pytest.raises(AnonfeatError, match="link"):
        extract(small_videos, out, ExtractOptions(**OPTIONS))
    assert (tmp_path / "other.h5").read_bytes() == other_before  # the other file is untouched
    for args in (["inspect", str(out)], ["inspect", str(out), "--verify"], ["extract", str(small_videos), "--out",
                                                                              str(out), *FLAGS]):
        run = forked_cli(args, tmp_path)
        assert run.returncode == 2 and "link to" in one_line(run.stderr), (args, run.stderr)


def test_links_are_refused_by_audit_adapter_data_and_sanitize(small_store, tmp_path):
    from anonfeat.adapter.data import read_training_features
    from anonfeat.audit.runner import read_store_features
    from anonfeat.labels import load_labels

    out = _link_case(small_store, tmp_path, "external_group")
    labels = tmp_path / "labels.csv"
    labels.write_text("video,split,action,face\na.mp4,train,x,1\nb.mp4,test,y,0\n")
    for read in (read_training_features, read_store_features):
        with pytest.raises(AnonfeatError, match="external link"):
            read(out, load_labels(labels))


# -- 5. two writers, one store --------------------------------------------------------------------
def test_second_writer_is_refused_even_without_hdf5_file_locking(small_videos, small_store, tmp_path):
    """Two processes with HDF5's own locking off: the first holds the store open for writing, the second
    (`extract` through the CLI) gets one line and exit 2, and the store is unchanged."""
    out = copy_store(small_store, tmp_path)
    ready_read, ready_write = os.pipe()
    holder = os.fork()
    if holder == 0:  # child: hold the store open for writing until killed
        try:
            os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
            store = FeatureStore(out, "a")
            os.write(ready_write, b"1")
            time.sleep(120)
            store.close()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"1"
        before = out.read_bytes()
        run = forked_cli(["extract", str(small_videos), "--out", str(out), *FLAGS], tmp_path,
                         setup=lambda: os.environ.__setitem__("HDF5_USE_FILE_LOCKING", "FALSE"))
        assert run.returncode == 2 and "another process is writing this store" in one_line(run.stderr)
        assert str(out) + ".lock" in " ".join(run.stderr.split())
        assert out.read_bytes() == before
    finally:
        os.kill(holder, 9)
        os.waitpid(holder, 0)
    with FeatureStore(out, "a"):  # the lock died with its process (SIGKILL: no cleanup ran)
        pass
    assert len(store_keys(out)) == 6


# -- 8. crafted stores ----------------------------------------------------------------------------
def _craft(store: Path, tmp_path: Path, kind: str) -> Path:
    out = copy_store(store, tmp_path)
    with h5py.File(out, "a") as f:
        if kind == "huge_lazy":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4"].create_dataset("clip_features", shape=(10**8, 192), dtype="float32")
        elif kind == "huge_lazy_chunked":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4"].create_dataset("clip_features", shape=(10**8, 192), dtype="float32", chunks=(1024, 192))
        elif kind == "sampling_list":
            f.attrs["sampling"] = "[1, 2]"
        elif kind == "encoder_config_int":
            f.attrs["encoder_config"] = 7
        elif kind == "videos_dataset":
            del f["videos"]
            f["videos"] = np.zeros(3)
        elif kind == "features_1d":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4/clip_features"] = np.zeros(192, dtype="float32")
        elif kind == "features_string":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4/clip_features"] = np.array([["x"] * 192], dtype="S3")
        elif kind == "features_wrong_width":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4/clip_features"] = np.zeros((1, 7), dtype="float32")
    return out


@pytest.mark.parametrize("kind, needle", [
    ("huge_lazy", "claims 76,800,000,000 bytes"),
    ("huge_lazy_chunked", "claims 76,800,000,000 bytes but the file stores 0"),
    ("sampling_list", "'sampling'"),
    ("encoder_config_int", "'encoder_config'"),
    ("videos_dataset", "/videos is not a group"),
    ("features_1d", "has shape (192,)"),
    ("features_string", "not floating point"),
    ("features_wrong_width", "has shape (1, 7)"),
])
def test_crafted_stores_give_one_line_everywhere(small_store, tmp_path, kind, needle):
    import resource

    out = _craft(small_store, tmp_path, kind)
    lines = []
    for args in (["inspect", str(out)], ["inspect", str(out), "--json", "-"], ["inspect", str(out), "--verify"]):
        # 6 GiB of address space: reading the crafted 77 GB dataset would fail loudly, never pass
        run = forked_cli(args, tmp_path, setup=lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)))
        assert run.returncode in (2, 4), (args, run.stdout, run.stderr)
        text = run.stderr if run.returncode == 2 else run.stdout
        assert "Traceback" not in run.stdout + run.stderr
        if run.returncode == 2:
            one_line(run.stderr)
        lines.append(" ".join(text.split()))
    assert any(needle in line for line in lines), lines
    if kind.startswith(("features", "huge")):
        with FeatureStore(out) as store, pytest.raises(AnonfeatError, match="inspect --verify"):
            store.clip_features("a.mp4")


# -- 3. rotated phone videos ----------------------------------------------------------------------
def write_lossless(path: Path, frames: np.ndarray, rotation: int = 0, fps: int = 25) -> None:
    """H.264 qp 0 in yuv444p (pixels survive exactly enough for identical model inputs); `rotation`:
    PyAV's counter-clockwise display-matrix angle (a phone held upright records -90)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def random_pruner(tmp_path_factory) -> Path:
    from anonfeat.pruning.backbone import build_pruner
    from anonfeat.pruning.io import save_pruner

    model, backbone = build_pruner("videomae-tiny", None, True, actions=("a", "b"), attributes=("x",))
    return save_pruner(model, tmp_path_factory.mktemp("pruner") / "pruner.safetensors",
                       {"backbone": backbone, "sampling": {"frame_stride": 1}})


def test_rotated_phone_video_is_anonymized_upright_and_drops_what_the_pruner_dropped(tmp_path, random_pruner):
    import av

    from anonfeat.pruning.io import load_pruner
    from anonfeat.pruning.render import frame_grids, pixel_cells, pixel_mask
    from anonfeat.pruning.run import prune
    from anonfeat.video.reader import display_rotation, iter_upright_frames
    from anonfeat.video.sampling import Sampling

    stored = moving_frames(16, 48, 80, seed=21)  # landscape as stored by the sensor
    upright = np.ascontiguousarray(np.rot90(stored, k=-1, axes=(1, 2)))  # turned 90 degrees clockwise: 80 x 48
    videos = tmp_path / "videos"
    videos.mkdir()
    write_lossless(videos / "phone.mp4", stored, rotation=-90)
    write_lossless(videos / "turned.mp4", upright)
    with av.open(str(videos / "phone.mp4")) as container:
        assert display_rotation(next(container.decode(video=0))) == 90  # really a rotated phone video
    assert np.abs(np.stack(list(iter_upright_frames(videos / "phone.mp4"))).astype(int) - upright).max() <= 3

    result = prune(videos, tmp_path / "p.h5", random_pruner, frame_stride=1, keep_ratio=0.5, batch_size=4,
                   save_videos=tmp_path / "anon", lossless=True, workers=0, progress=False)
    assert not result.failed
    loaded = load_pruner(random_pruner)
    enc, last = loaded.config.encoder, loaded.config.prune_blocks[-1]
    with FeatureStore(tmp_path / "p.h5") as store:
        kept = {name: store.dataset(name, f"pruning/kept_{last}") for name in ("phone.mp4", "turned.mp4")}
        assert store.video_attrs("phone.mp4")["height"] == 80 and store.video_attrs("phone.mp4")["width"] == 48
    np.testing.assert_array_equal(kept["phone.mp4"], kept["turned.mp4"])  # the model saw the same upright clips
    outputs = {}
    for name in ("phone.mp4", "turned.mp4"):
        with av.open(str(tmp_path / "anon" / name)) as container:
            frames = list(container.decode(video=0))
            assert display_rotation(frames[0]) == 0  # written upright, no display matrix
            outputs[name] = np.stack([f.to_ndarray(format="rgb24") for f in frames]).astype(int)
    assert outputs["phone.mp4"].shape == (16, 80, 48, 3)
    grids = frame_grids(16, Sampling(clip_len=enc.clip_len, frame_stride=1), kept["phone.mp4"], enc)
    rows, cols = pixel_cells(80, 48, enc, "short")
    dropped = ~np.stack([pixel_mask(g, rows, cols) for g in grids])
    assert 0.3 < dropped.mean() < 0.95
    for name, frames in outputs.items():
        assert frames[dropped].max() == 0, name  # no pixel the pruner dropped is visible
        assert np.abs(frames[~dropped] - upright[~dropped]).max() <= 3, name
    np.testing.assert_array_equal(outputs["phone.mp4"] == 0, outputs["turned.mp4"] == 0)


@pytest.mark.parametrize("frame_resize", [False, True])
def test_rotated_video_is_probed_and_decoded_upright_by_pyav_alone(tmp_path, monkeypatch, frame_resize):
    """PyAV turns rotated streams upright itself: the probed size is the upright one and the frames equal
    those of the same video stored upright, with decord unavailable (no fallback is needed), also
    when a timm-style resize takes the full-size frames."""
    import sys

    from anonfeat.video import reader as reader_module
    from anonfeat.video.reader import FrameReader
    from anonfeat.video.resize import PilResize

    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(reader_module, "_decord", None)
    stored = moving_frames(8, 48, 80, seed=5)
    write_lossless(tmp_path / "phone.mp4", stored, rotation=-90)
    write_lossless(tmp_path / "turned.mp4", np.ascontiguousarray(np.rot90(stored, k=-1, axes=(1, 2))))
    resize = PilResize(32, interpolation="bicubic") if frame_resize else None
    decoded = {}
    for name in ("phone.mp4", "turned.mp4"):
        reader = FrameReader(tmp_path / name, 32, frame_resize=resize)
        assert (reader.info.n_frames, reader.info.height, reader.info.width) == (8, 80, 48)
        decoded[name], _ = reader.frames(np.array([0, 3, 7]))
        assert reader._reader is None  # served by PyAV, decord never opened
        reader.close()
    assert decoded["phone.mp4"].shape[1:3] == ((32, 32) if frame_resize else (53, 32))
    assert np.abs(decoded["phone.mp4"].astype(int) - decoded["turned.mp4"]).max() <= 3


# -- 6. the pixel limit holds for every decoded frame ---------------------------------------------
def write_growing(path: Path, small: int, large: int) -> None:
    """MJPEG in Matroska whose frames change size mid-stream: 10 frames small x small, then 6 large x large
    (the header only knows the first size)."""
    from fractions import Fraction

    import av

    def encoded(size: int, n: int, seed: int) -> list:
        codec = av.CodecContext.create("mjpeg", "w")
        codec.width = codec.height = size
        codec.pix_fmt, codec.time_base = "yuvj444p", Fraction(1, 25)
        rng = np.random.default_rng(seed)
        packets = []
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            packets += codec.encode(frame.reformat(format="yuvj444p"))
        return packets + list(codec.encode(None))

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width = stream.height = small
        stream.pix_fmt = "yuvj444p"
        for i, packet in enumerate(encoded(small, 10, 0) + encoded(large, 6, 1)):
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            container.mux(packet)


def test_frame_growing_past_the_pixel_limit_mid_stream_fails_that_video(tmp_path, small_videos, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_growing(videos / "grows.mkv", 32, 300)
    shutil.copy(small_videos / "a.mp4", videos / "a.mp4")
    monkeypatch.setenv("ANONFEAT_MAX_PIXELS", str(200 * 200))
    result = extract(videos, tmp_path / "o.h5", ExtractOptions(**OPTIONS))
    assert result.exit_code == 3 and result.written == ["a.mp4"]
    assert "grows.mkv: frame size 300x300 (90,000 pixels) is above the limit of 40,000" in result.failed["grows.mkv"]
    from anonfeat.video.reader import iter_upright_frames  # the anonymized-video reader holds the limit too

    with pytest.raises(AnonfeatError, match="300x300"):
        list(iter_upright_frames(videos / "grows.mkv"))


# -- 9. a store cut short -------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_store_cut_short_is_repaired_or_refused_plainly(small_videos, small_store, tmp_path, fraction):
    out = copy_store(small_store, tmp_path)
    size = int(out.stat().st_size * fraction)
    os.truncate(out, size)
    cut = out.read_bytes()
    run = forked_cli(["inspect", str(out)], tmp_path)
    assert run.returncode == 2 and "re-run the command that wrote it" in one_line(run.stderr)
    run = forked_cli(["extract", str(small_videos), "--out", str(out), *FLAGS], tmp_path)
    assert "Traceback" not in run.stderr + run.stdout
    if run.returncode == 2:  # not repairable: said so, the file left as it was
        assert "cannot be repaired: move it aside" in one_line(run.stderr)
        assert out.read_bytes() == cut
    else:  # repaired: what lost data was redone, the store equals the original
        assert run.returncode == 0, run.stderr
        with FeatureStore(out) as store, FeatureStore(small_store) as original:
            assert store.verify() == [] and store.videos() == original.videos()
            for key in original.videos():
                np.testing.assert_allclose(store.clip_features(key), original.clip_features(key), atol=1e-5)


# -- 4. outputs never over inputs, never one output for two sources -------------------------------
def test_outputs_over_inputs_are_refused_before_any_work(small_videos, small_store, random_pruner, tmp_path):
    from anonfeat.adapter.train import train_adapter
    from anonfeat.pruning.run import prune

    store = copy_store(small_store, tmp_path)
    before = store.read_bytes()
    labels = tmp_path / "labels.csv"
    labels.write_text("video,split,action,face\na.mp4,train,x,1\nb.mp4,test,y,0\n")
    videos = tmp_path / "videos"
    shutil.copytree(small_videos, videos)
    sources = {p: p.read_bytes() for p in videos.rglob("*.mp4")}
    with pytest.raises(AnonfeatError, match=r"--save-videos is also the input VIDEOS"):
        prune(videos, tmp_path / "p.h5", random_pruner, save_videos=videos, progress=False, workers=0)
    with pytest.raises(AnonfeatError, match=r"--save-videos lies inside the input folder VIDEOS"):
        prune(videos, tmp_path / "p.h5", random_pruner, save_videos=videos / "anon", progress=False, workers=0)
    listing = tmp_path / "list.txt"  # a list outside the folder, whose videos' names are the outputs' names
    listing.write_text("videos/squat/c.mp4\n")
    with pytest.raises(AnonfeatError, match=r"--save-videos would write over the input video videos/squat/c.mp4"):
        prune(listing, tmp_path / "p.h5", random_pruner, save_videos=tmp_path, progress=False, workers=0)
    a_file = tmp_path / "not_a_folder"  # a folder output that names a file: refused before any video is decoded
    a_file.write_text("keep me\n")
    for folder, needle in ((a_file, "is a file, not a folder"), (a_file / "sub", "is not a writable folder")):
        for flag in ("save_videos", "save_heatmaps"):
            with pytest.raises(AnonfeatError, match=needle):
                prune(videos, tmp_path / "p.h5", random_pruner, progress=False, workers=0, **{flag: folder})
    assert a_file.read_text() == "keep me\n" and not (tmp_path / "p.h5").exists()
    with pytest.raises(AnonfeatError, match=r"--out is also the input STORE"):
        train_adapter(store, labels, store, epochs=1, progress=False)
    with pytest.raises(AnonfeatError, match=r"--out is also the input --labels"):
        train_adapter(store, labels, tmp_path / "." / "labels.csv", epochs=1, progress=False)
    assert store.read_bytes() == before and all(p.read_bytes() == data for p, data in sources.items())
    assert not (tmp_path / "p.h5").exists() and not (videos / "anon").exists()
    for args, needle in ((["audit", str(store), "--labels", str(labels), "--json", str(store)], "which --json would "
                          "overwrite"),
                         (["audit", str(store), "--labels", str(labels), "--json", str(labels)], "is also labels"),
                         (["extract", str(listing), "--out", str(tmp_path / "new.h5"), "--json", str(tmp_path / "new.h5"),
                           *FLAGS], "is also out"),
                         (["audit", str(store), "--labels", str(labels), "--plot", str(tmp_path / "x.xyz")],
                          "--plot cannot write .xyz"),
                         (["audit", str(store), "--labels", str(labels), "--json", str(labels / "x.json")],
                          "--json cannot be written"),
                         (["extract", str(listing), "--out", str(listing), *FLAGS], "--out is also the input VIDEOS"),
                         (["prune", str(videos), "--pruner", str(random_pruner), "--out", str(tmp_path / "q.h5"),
                           "--save-videos", str(videos), "--no-progress"], "--save-videos is also the input")):
        started = time.monotonic()
        run = forked_cli(args, tmp_path)
        assert run.returncode == 2 and needle in one_line(run.stderr), (args, run.stderr)
        assert time.monotonic() - started < 20  # refused up front, not after the audit
    assert store.read_bytes() == before and labels.read_text().startswith("video,split")


def test_sources_that_would_share_an_output_name_are_refused_naming_them(small_videos, random_pruner, tmp_path):
    from anonfeat.pruning.run import prune

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", moving_frames(16, 32, 32, seed=1), fps=25)
    write_video(videos / "a.avi", moving_frames(16, 32, 32, seed=2), fps=25)
    write_video(videos / "a.mkv", moving_frames(16, 32, 32, seed=3), fps=25)
    with pytest.raises(AnonfeatError) as info:
        prune(videos, tmp_path / "p.h5", random_pruner, save_videos=tmp_path / "anon", progress=False, workers=0)
    assert "a.avi, a.mkv, a.mp4 would all be saved as" in str(info.value) and "rename" in str(info.value)
    assert not (tmp_path / "p.h5").exists()
    # the store keys keep the extension: without --save-videos the three are three videos
    result = prune(videos, tmp_path / "p.h5", random_pruner, frame_stride=1, progress=False, workers=0)
    assert sorted(result.written) == ["a.avi", "a.mkv", "a.mp4"]


# -- 10. silent skips and odd names ---------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0 and not os.environ.get("ANONFEAT_TEST_AS_ROOT_OK"), reason="root reads any folder")
def test_unreadable_subfolder_is_a_warning_and_exit_3(small_videos, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(small_videos, videos)
    (videos / "squat").chmod(0)
    try:
        run = forked_cli(["extract", str(videos), "--out", str(tmp_path / "o.h5"), *FLAGS], tmp_path)
    finally:
        (videos / "squat").chmod(0o755)
    assert run.returncode == 3 and "squat: folder skipped, it cannot be read" in " ".join(run.stderr.split())
    assert len(store_keys(tmp_path / "o.h5")) == 4


def test_unreadable_subfolder_is_reported_by_discovery(small_videos, tmp_path, monkeypatch):
    """The same through a simulated permission error (tests run as root, who reads every folder)."""
    real_walk = os.walk

    def walk(top, onerror=None, **kw):
        for root, dirs, files in real_walk(top, onerror=onerror, **kw):
            if "squat" in dirs:
                dirs.remove("squat")
                onerror(PermissionError(13, "Permission denied", os.path.join(root, "squat")))
            yield root, dirs, files

    monkeypatch.setattr(os, "walk", walk)
    warnings: list[str] = []
    keys = [item.key for item in find_videos(small_videos, warnings)]
    assert keys == ["a.mp4", "b.mp4", "run/e.mp4", "run/f.mp4"]
    assert len(warnings) == 1 and "squat: folder skipped, it cannot be read (Permission denied)" in warnings[0]
    with pytest.raises(AnonfeatError, match="cannot be read"):
        find_videos(small_videos)  # callers that cannot report a warning refuse instead of skipping
    result = extract(small_videos, tmp_path / "o.h5", ExtractOptions(**OPTIONS))
    assert result.exit_code == 3 and result.warnings == warnings and len(result.written) == 4


def test_names_with_rich_markup_are_printed_verbatim(tmp_path):
    videos = tmp_path / "videos"
    (videos / "a[").mkdir(parents=True)
    write_video(videos / "[live].mp4", moving_frames(16, 32, 32, seed=1), fps=25)
    write_video(videos / "a[" / "x].mp4", moving_frames(16, 32, 32, seed=2), fps=25)
    (videos / "[bold]bad[red].mp4").write_bytes(b"")
    out = tmp_path / "[o].h5"
    run = forked_cli(["extract", str(videos), "--out", str(out), *FLAGS[:-1]], tmp_path)  # with the progress bar
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr
    assert "failed [bold]bad[red].mp4: empty file" in " ".join(run.stdout.split())
    assert sorted(store_keys(out)) == ["[live].mp4", "a[/x].mp4"]
    run = forked_cli(["inspect", str(out)], tmp_path)
    assert run.returncode == 0 and "[bold]bad[red].mp4" in run.stdout and str(out) in " ".join(run.stdout.split())
    run = forked_cli(["inspect", str(tmp_path / "[missing].h5")], tmp_path)
    assert run.returncode == 2 and "[missing].h5: no such feature store" in one_line(run.stderr)


# -- 7. model files are checked before anything is built ------------------------------------------
def _adapter_file(path: Path, meta: object | None = None, state: dict | None = None, nan: bool = False) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    from anonfeat.adapter.model import AnonymizingAdapter

    model = AnonymizingAdapter(192, depth=1, num_heads=2)
    torch.manual_seed(0)
    for p in model.blocks.parameters():
        p.data.normal_(0, 0.2)
    if nan:
        for p in model.blocks.parameters():
            p.data.fill_(float("nan"))
    config = {"format": "anonfeat-adapter/1", **model.architecture(),
              "encoder": {"name": "videomae-tiny", "checkpoint_sha256": "random-init-seed-0"}}
    if meta is not None:
        config = meta(config) if callable(meta) else meta
    tensors = {k: v.contiguous() for k, v in (state or model.state_dict()).items()}
    save_file(tensors, str(path), metadata={"anonfeat_adapter": json.dumps(config)})
    return path


@pytest.mark.parametrize("meta, needle", [
    (lambda c: {**c, "dim": 200000, "num_heads": 3}, "dim 200000 not divisible by num_heads 3"),
    (lambda c: {**c, "dim": 200000, "num_heads": 8}, "blocks.0.attn.qkv.weight (576, 192) vs (600000, 200000)"),
    (lambda c: {**c, "depth": "3"}, "depth='3', not a positive integer"),
    (lambda c: {**c, "encoder": ["videomae-tiny"]}, "has encoder=['videomae-tiny'], not {name, checkpoint_sha256}"),
    (lambda c: {k: v for k, v in c.items() if k != "mlp_ratio"}, "mlp_ratio=None"),
    ([1, 2, 3], "is a JSON list, not an object"),
    (lambda c: {**c, "dim": {"nested": 1}}, "dim={'nested': 1}"),
])
def test_adapter_metadata_is_checked_against_its_tensors_before_building(tmp_path, meta, needle):
    import tracemalloc

    from anonfeat.adapter.io import load_adapter

    path = _adapter_file(tmp_path / "adapter.safetensors", meta)
    tracemalloc.start()
    with pytest.raises(AnonfeatError) as info:
        load_adapter(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert needle in str(info.value) and "adapter.safetensors" in str(info.value), str(info.value)
    assert peak < 50 << 20  # nothing of the claimed size was allocated


def test_pruner_metadata_claiming_huge_dims_or_wrong_types_is_refused(tmp_path, random_pruner):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from anonfeat.pruning.io import load_pruner

    with safe_open(str(random_pruner), framework="pt") as handle:
        meta = json.loads(handle.metadata()["anonfeat_pruner"])
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    cases = [({**meta, "pruner": {**meta["pruner"], "encoder": {**meta["pruner"]["encoder"], "embed_dim": 60000}}},
              "tensors do not fit its config"),
             ({**meta, "pruner": [1]}, "pruner format"),
             ({**meta, "pruner": {**meta["pruner"], "encoder": 5}}, "metadata does not describe a model"),
             ({**meta, "sampling": [4]}, r"sampling=\[4\], not an object")]
    for i, (bad, needle) in enumerate(cases):
        path = tmp_path / f"p{i}.safetensors"
        save_file(state, str(path), metadata={"anonfeat_pruner": json.dumps(bad)})
        with pytest.raises(AnonfeatError, match=needle):
            load_pruner(path)
    nan_state = {k: (v.fill_(float("nan")) if k == "action_head.weight" else v) for k, v in state.items()}
    save_file(nan_state, str(tmp_path / "nan.safetensors"), metadata={"anonfeat_pruner": json.dumps(meta)})
    with pytest.raises(AnonfeatError, match=r"weights hold NaN or Inf \(action_head.weight\)"):
        load_pruner(tmp_path / "nan.safetensors")


def _leace_file(path: Path, meta=None, state: dict | None = None) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    from anonfeat.adapter.leace import LinearEraser

    model = LinearEraser(192, 2)
    model.proj_left.normal_()
    model.proj_right.normal_()
    config = {"format": "anonfeat-adapter/1", **model.architecture(),
              "encoder": {"name": "videomae-tiny", "checkpoint_sha256": "random-init-seed-0"}, "training_videos": ["a"]}
    config = meta(config) if meta is not None else config
    tensors = {k: v.contiguous() for k, v in (state or model.state_dict()).items()}
    save_file(tensors, str(path), metadata={"anonfeat_adapter": json.dumps(config)})
    assert torch.isfinite(model.proj_left).all()
    return path


@pytest.mark.parametrize("meta, state, needle", [
    (lambda c: {**c, "rank": 100000, "dim": 100000}, None, "proj_left (192, 2) vs (100000, 100000)"),
    (lambda c: {**c, "rank": "2"}, None, "rank='2', not a positive integer"),
    (lambda c: {**c, "rank": 3}, None, "proj_right (2, 192) vs (3, 192)"),
    (lambda c: {**c, "kind": "magic"}, None, "adapter kind 'magic' is not one this anonfeat knows"),
    (lambda c: {**c, "training_videos": {"a": 1}}, None, "training_videos that are not a list"),
    (None, {"proj_left": np.zeros((192, 2)), "proj_right": np.zeros((2, 192)), "bias": np.zeros(7)},
     "bias (7,) vs (192,)"),
    (None, {"proj_left": np.full((192, 2), np.nan), "proj_right": np.zeros((2, 192)), "bias": np.zeros(192)},
     "weights hold NaN or Inf (proj_left)"),
])
def test_leace_adapter_metadata_is_checked_against_its_tensors(tmp_path, meta, state, needle):
    import torch

    from anonfeat.adapter.io import load_adapter

    if state is not None:
        state = {k: torch.from_numpy(v).float() for k, v in state.items()}
    path = _leace_file(tmp_path / "leace.safetensors", meta, state)
    with pytest.raises(AnonfeatError) as info:
        load_adapter(path)
    assert needle in str(info.value) and "leace.safetensors" in str(info.value), str(info.value)
    assert load_adapter(_leace_file(tmp_path / "good.safetensors")).model.rank == 2  # the intact file loads


def test_pruner_source_encoder_and_training_videos_of_wrong_types_are_refused(tmp_path, random_pruner):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from anonfeat.pruning.io import load_pruner

    with safe_open(str(random_pruner), framework="pt") as handle:
        meta = json.loads(handle.metadata()["anonfeat_pruner"])
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    for i, (bad, needle) in enumerate([({**meta, "backbone": "videomae-tiny"}, "has backbone='videomae-tiny'"),
                                       ({**meta, "backbone": {**meta["backbone"], "checkpoint": 5}}, "has backbone="),
                                       ({**meta, "training_videos": 7}, "training_videos that are not a list")]):
        path = tmp_path / f"p{i}.safetensors"
        save_file(state, str(path), metadata={"anonfeat_pruner": json.dumps(bad)})
        with pytest.raises(AnonfeatError, match=needle):
            load_pruner(path)


def test_nan_adapter_is_refused_and_non_finite_features_are_never_written(small_store, tmp_path):
    from anonfeat.adapter.sanitize import sanitize_store

    nan = _adapter_file(tmp_path / "nan.safetensors", nan=True)
    run = forked_cli(["sanitize", str(small_store), "--adapter", str(nan), "--out", str(tmp_path / "s.h5")], tmp_path)
    assert run.returncode == 2 and "weights hold NaN or Inf" in one_line(run.stderr)
    assert not (tmp_path / "s.h5").exists()
    # a finite adapter whose outputs overflow float16: refused before the write, nothing of the video written
    out = copy_store(small_store, tmp_path, "o.h5")
    with FeatureStore(out, "a") as store:
        record = store.read_video("a.mp4")
        record.key = "new.mp4"
        record.clip_features = np.full_like(record.clip_features, 1e6)
        store._header = __import__("dataclasses").replace(store.header, dtype="float16")
        with pytest.raises(AnonfeatError, match="hold NaN or Inf in float16"):
            store.write_video(record)
    assert "new.mp4" not in store_keys(out)
    with pytest.raises(AnonfeatError):
        sanitize_store(small_store, nan, tmp_path / "s.h5", progress=False)


def test_encoder_producing_nan_fails_that_video_not_the_store(small_videos, tmp_path):
    import torch

    from anonfeat.encoders import load_encoder

    encoder = load_encoder("videomae-tiny", random_init=True)
    with torch.no_grad():
        encoder.blocks[0].mlp.fc1.bias.fill_(float("nan"))
    result = extract(small_videos, tmp_path / "o.h5", ExtractOptions(**OPTIONS), encoder=encoder)
    assert result.exit_code == 3 and not result.written and len(result.failed) == 6
    assert "the model produced NaN or Inf features" in result.failed["a.mp4"]
    with FeatureStore(tmp_path / "o.h5") as store:
        assert store.videos() == [] and len(store.failures()) == 6 and store.verify() == []


# -- 11. sampling edge cases ----------------------------------------------------------------------
def test_clip_len_the_encoder_cannot_take_is_refused_before_the_header(small_videos, tmp_path):
    out = tmp_path / "o.h5"
    run = forked_cli(["extract", str(small_videos), "--out", str(out), *FLAGS, "--clip-len", "1"], tmp_path)
    assert run.returncode == 2 and "--clip-len 1: encoder videomae-tiny takes clips of exactly 16" in one_line(run.stderr)
    assert not out.exists()
    assert extract(small_videos, out, ExtractOptions(**{**OPTIONS, "clip_len": None})).exit_code == 0  # the fix runs


def test_num_clips_is_capped_at_the_distinct_clips(small_videos, tmp_path):
    from anonfeat.video.sampling import Sampling, clip_frame_indices

    idx = clip_frame_indices(32, Sampling(clip_len=16, frame_stride=1, num_clips=100000))
    assert idx.shape == (17, 16) and len(np.unique(idx[:, 0])) == 17
    assert clip_frame_indices(5, Sampling(clip_len=16, num_clips=8)).shape == (1, 16)
    started = time.monotonic()
    result = extract(small_videos, tmp_path / "o.h5", ExtractOptions(**{**OPTIONS, "num_clips": 100000}))
    assert result.exit_code == 0 and result.clips == 6 and time.monotonic() - started < 60


def test_negative_timestamps_give_the_shown_frames_without_duplicates(tmp_path):
    """An mp4 whose first 10 frames have negative timestamps (an edit list's pre-roll): players show
    frames 10..31; the reader gives exactly those, never copies of the last frame."""
    from fractions import Fraction

    import av

    from anonfeat.video.reader import FrameReader

    frames = moving_frames(32, 32, 32, seed=3)
    for i in range(32):
        frames[i, :4, :4] = i * 7  # each frame's number, readable after decoding
    path = tmp_path / "neg.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.options, stream.time_base = "yuv444p", {"qp": "0"}, Fraction(1, 25)
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = i - 10, Fraction(1, 25)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert min(p.pts for p in container.demux(video=0) if p.pts is not None) < 0
    reader = FrameReader(path, 32)
    decoded, _ = reader.frames(np.arange(reader.info.n_frames))
    reader.close()
    assert reader.info.n_frames == 22
    assert [round(f[1, 1, 0] / 7) for f in decoded] == list(range(10, 32))


# -- 12. labels -----------------------------------------------------------------------------------
# (UTF-8, field size and repeated columns: cases of test_bad_labels_give_one_clear_line in
# tests/test_hostile_inputs.py, beside the other malformed CSVs)


@pytest.mark.parametrize("data", ['[1, 2]', '{"v.avi": 3}', '{"v.avi": {"face": 5}}', '{"v.avi": {"face": [[1, 2]]}}',
                                  '{"v.avi": {"face": "x"}}', '{"v.avi": '])
def test_every_pa_hmdb51_format_message_shows_the_range_shape(tmp_path, data):
    from anonfeat.labels import load_labels

    folder = tmp_path / "pa"
    folder.mkdir()
    (folder / "run.json").write_text(data)
    with pytest.raises(AnonfeatError) as info:
        load_labels(folder)
    assert "[start_frame, end_frame, value]" in str(info.value) and "run.json" in str(info.value)
