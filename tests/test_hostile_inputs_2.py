"""Hostile inputs, round 2 (issue 16): no input may delete data, write outside its place, leak pixels
or crash. One test (or a few) per case, in the issue's order of severity; every refusal is one line
naming the file and the fix, and nothing already written is lost.

The store-writing cases run `extract` in-process (random-init videomae-tiny, tiny videos) or through
the CLI in a forked child (`forked_cli`), so the whole file stays well under a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    out = copy_store(small_store, tmp_path)
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE", "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from anonfeat.store import FeatureStore\n"
                               f"s = FeatureStore({str(out)!r}, 'a'); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "open"
        before = out.read_bytes()
        run = subprocess.run([sys.executable, "-m", "anonfeat", "extract", str(small_videos), "--out", str(out), *FLAGS],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 2 and "another process is writing this store" in one_line(run.stderr)
        assert out.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    with FeatureStore(out, "a"):  # the lock died with its process
        pass
    assert len(store_keys(out)) == 6


# -- 8. crafted stores ----------------------------------------------------------------------------
def _craft(store: Path, tmp_path: Path, kind: str) -> Path:
    out = copy_store(store, tmp_path)
    with h5py.File(out, "a") as f:
        if kind == "huge_lazy":
            del f["videos/a.mp4/clip_features"]
            f["videos/a.mp4"].create_dataset("clip_features", shape=(10**8, 192), dtype="float32")
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
    for args in (["inspect", str(out)], ["inspect", str(out), "--json"], ["inspect", str(out), "--verify"]):
        # 6 GiB of address space: reading the crafted 77 GB dataset would fail loudly, never pass
        run = forked_cli(args, tmp_path, setup=lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)))
        assert run.returncode in (2, 4), (args, run.stdout, run.stderr)
        text = run.stderr if run.returncode == 2 else run.stdout
        assert "Traceback" not in run.stdout + run.stderr
        if run.returncode == 2:
            one_line(run.stderr)
        lines.append(" ".join(text.split()))
    assert any(needle in line for line in lines), lines
    if kind.startswith("features") or kind == "huge_lazy":
        with FeatureStore(out) as store, pytest.raises(AnonfeatError, match="inspect --verify"):
            store.clip_features("a.mp4")
