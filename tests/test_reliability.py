"""Crash safety, full disks, refused permissions, `inspect --verify`, and sanitized stores that hold
nothing raw.

The crash harness runs the real CLI in its own session and SIGKILLs it at named points
(tests/killpoints.py, armed on anonfeat.hooks in the forked CLI). After every kill the store must open with h5py
and read in full, every complete video in it must equal the uninterrupted run's, and re-running the
same command must end in a store equal to the uninterrupted one, video by video, for extract,
sanitize and prune (one entry each in COMMANDS).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from anonfeat.adapter.io import save_adapter
from anonfeat.adapter.model import AnonymizingAdapter
from anonfeat.adapter.sanitize import adapter_transform, sanitize_store
from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.pruning.backbone import build_pruner
from anonfeat.pruning.io import save_pruner
from anonfeat.pruning.run import PruneOptions, prune
from anonfeat.store import FeatureStore

from conftest import forked_cli

EXTRACT_FLAGS = ["--encoder", "videomae-tiny", "--random-init", "--static-clips", "2", "--frame-stride", "2",
                 "--clip-stride", "6", "--batch-size", "4", "--workers", "1", "--device", "cpu", "--dtype", "float32",
                 "--no-progress"]
EXTRACT_OPTIONS = dict(encoder="videomae-tiny", random_init=True, static_clips=2, frame_stride=2, clip_stride=6,
                       batch_size=4, workers=0, device="cpu", dtype="float32", progress=False)
PRUNE_FLAGS = ["--static-clips", "2", "--clip-stride", "6", "--batch-size", "4", "--workers", "1", "--device", "cpu",
               "--dtype", "float32", "--no-progress"]
PRUNE_OPTIONS = dict(static_clips=2, clip_stride=6, batch_size=4, workers=0, device="cpu", dtype="float32",
                     progress=False)
N_VALID = 5  # videos of the conftest video_dir; the crash folder adds one that fails (zero.mp4)


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anonfeat", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


# -- the inputs: videos, an uninterrupted raw store, an adapter, an uninterrupted sanitized store ---
@dataclass
class Workspace:
    videos: Path
    raw: Path  # uninterrupted extract of `videos`
    adapter: Path
    sanitized: Path  # uninterrupted sanitize of `raw`
    pruner: Path
    pruned: Path  # uninterrupted prune of `videos`


def random_adapter(path: Path, header) -> Path:
    model = AnonymizingAdapter(header.dim, depth=1, num_heads=2)
    torch.manual_seed(0)
    for p in model.blocks.parameters():
        p.data.normal_(0, 0.2)  # trained-looking weights: far from the identity
    return save_adapter(model, path, {"encoder": {"name": header.encoder,
                                                  "checkpoint_sha256": header.checkpoint_sha256}})


@pytest.fixture(scope="module")
def ws(video_dir, tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("reliability")
    videos = root / "videos"
    shutil.copytree(video_dir, videos)
    (videos / "zero.mp4").write_bytes(b"")  # a failure record is part of the store too
    raw = root / "raw.h5"
    assert extract(videos, raw, ExtractOptions(**EXTRACT_OPTIONS)).exit_code == 3
    with FeatureStore(raw) as store:
        assert len(store.videos()) == N_VALID and list(store.failures()) == ["zero.mp4"]
        adapter = random_adapter(root / "adapter.safetensors", store.header)
    sanitized = root / "sanitized.h5"
    sanitize_store(raw, adapter, sanitized, progress=False)
    torch.manual_seed(0)
    model, backbone = build_pruner("videomae-tiny", None, True, actions=("a", "b"), attributes=("x",))
    pruner = save_pruner(model, root / "pruner.safetensors", {"backbone": backbone, "sampling": {"frame_stride": 2}})
    pruned = root / "pruned.h5"
    assert prune(videos, pruned, pruner, PruneOptions(**PRUNE_OPTIONS)).exit_code == 3
    return Workspace(videos, raw, adapter, sanitized, pruner, pruned)


# -- comparing stores ---------------------------------------------------------------------------
def _when_unlocked(path: Path, timeout: float = 10.0) -> None:
    """The kernel drops a killed process's HDF5 file lock a moment after it is gone."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            h5py.File(path, "r").close()
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_everything(path: Path) -> None:
    """Open with plain h5py and read every dataset and attribute: the file is sound."""
    _when_unlocked(path)
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                obj[()]
        dict(f.attrs)
        f.visititems(visit)


def assert_video_equal(a: FeatureStore, b: FeatureStore, key: str) -> None:
    ra, rb = a.read_video(key), b.read_video(key)
    for name in ("clip_features", "static_features"):
        x, y = getattr(ra, name), getattr(rb, name)
        assert (x is None) == (y is None), (key, name)
        if x is not None:  # batches differ between runs: same values up to float noise
            assert x.dtype == y.dtype and x.shape == y.shape, (key, name)
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5, err_msg=f"{key} {name}")
    for name in ("clip_ranges", "static_frames"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=f"{key} {name}")
    assert ra.attrs == rb.attrs, key
    assert sorted(ra.extras) == sorted(rb.extras), key
    for name, x in ra.extras.items():  # pruning datasets: kept indices exactly, scores up to float noise
        y = rb.extras[name]
        assert x.dtype == y.dtype and x.shape == y.shape, (key, name)
        if np.issubdtype(x.dtype, np.integer):
            np.testing.assert_array_equal(x, y, err_msg=f"{key} {name}")
        else:
            np.testing.assert_allclose(x, y, atol=2e-3, rtol=1e-3, err_msg=f"{key} {name}")


def assert_stores_equal(path: Path, reference: Path) -> None:
    with FeatureStore(path) as a, FeatureStore(reference) as b:
        assert a.attrs == b.attrs
        assert a.videos() == b.videos()
        assert a.failures() == b.failures()
        assert a.incomplete() == [] and a.verify() == []
        for key in b.videos():
            assert_video_equal(a, b, key)


def assert_survived(path: Path, reference: Path) -> int:
    """After a kill: the file reads in full, only incomplete-video problems, complete videos equal
    the reference's. Returns the number of complete videos."""
    read_everything(path)
    with FeatureStore(path) as a, FeatureStore(reference) as b:
        problems = a.verify()
        assert all(p.message.startswith("incomplete") for p in problems), problems
        assert sorted(p.key for p in problems) == a.incomplete()
        for key in a.videos():
            assert_video_equal(a, b, key)
        return len(a.videos())


# -- the crash harness ----------------------------------------------------------------------------
@dataclass
class Command:
    argv: Callable[[Workspace, Path], list[str]]  # CLI arguments writing to the given store
    reference: Callable[[Workspace], Path]  # the uninterrupted run's store
    exit_code: int  # of the completing run
    kills: tuple[str, ...]  # kill points (POINT:N) of successive killed runs, each resumed by the next


COMMANDS = {
    "extract": Command(
        argv=lambda ws, out: ["extract", str(ws.videos), "--out", str(out), *EXTRACT_FLAGS],
        reference=lambda ws: ws.raw, exit_code=3,
        # during decoding (in the worker), in the middle of writing a video, with all datasets but no
        # mark, between two videos, as a write starts
        kills=("decode:3", "write-datasets:1", "write-mark:2", "written:1", "write:1")),
    "sanitize": Command(
        argv=lambda ws, out: ["sanitize", str(ws.raw), "--adapter", str(ws.adapter), "--out", str(out),
                              "--device", "cpu", "--no-progress"],
        reference=lambda ws: ws.sanitized, exit_code=0,
        kills=("write:2", "write-datasets:1", "write-mark:2", "written:1")),
    "prune": Command(
        argv=lambda ws, out: ["prune", str(ws.videos), "--pruner", str(ws.pruner), "--out", str(out), *PRUNE_FLAGS],
        reference=lambda ws: ws.pruned, exit_code=3,
        kills=("decode:3", "write-datasets:1", "write-mark:2", "written:1")),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_sigkill_at_every_point_then_rerun_gives_the_uninterrupted_store(ws, tmp_path, name):
    command = COMMANDS[name]
    out, reference = tmp_path / f"{name}.h5", command.reference(ws)
    progress = []
    for spec in command.kills:
        run = forked_cli(command.argv(ws, out), tmp_path, kill_at=spec)
        assert run.returncode == -signal.SIGKILL, f"{spec} did not kill: {run.returncode} {run.stderr[-2000:]}"
        progress.append(assert_survived(out, reference))
    assert progress[-1] < N_VALID  # the final run still had work to do
    proc = cli(*command.argv(ws, out))
    assert proc.returncode == command.exit_code, proc.stderr
    assert_stores_equal(out, reference)


def test_hook_points_are_inert_until_installed_and_kill_specs_are_checked(monkeypatch):
    import killpoints

    from anonfeat import hooks

    hooks.fire("write", "a.mp4")  # nothing installed: nothing happens
    seen = []
    remove = hooks.install("write", lambda point, key: seen.append((point, key)))
    hooks.fire("write", "a.mp4")
    hooks.fire("written", "a.mp4")
    remove()
    hooks.fire("write", "b.mp4")
    assert seen == [("write", "a.mp4")]
    with pytest.raises(ValueError, match="unknown hook point"):
        hooks.install("nowhere", print)

    class Killed(Exception):
        pass

    def kill_run():
        raise Killed

    monkeypatch.setattr(killpoints, "_kill_run", kill_run)  # what SIGKILL would do, as an exception here
    disarm = killpoints.arm("written:3")
    try:
        for point in ("decode", "write", "write-datasets", "write-mark") * 3:
            hooks.fire(point, "a.mp4")  # armed for another point: not counted
        hooks.fire("written", "a.mp4")
        hooks.fire("written", "b.mp4")  # only its own point counts...
        with pytest.raises(Killed):
            hooks.fire("written", "c.mp4")  # ... and the third kills
    finally:
        disarm()
    for bad in ("nowhere:1", "write", "write:0", "write:x"):
        with pytest.raises(ValueError, match="POINT:N"):
            killpoints.parse(bad)
    assert killpoints.parse("written:2") == ("written", 2)


# -- full disk, permissions ---------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _first_two(ws: Workspace, out: Path) -> None:
    """Extract two videos into `out` (a list file inside the video folder: same keys as the folder)."""
    listing = ws.videos / "first_two.txt"
    listing.write_text("a.mp4\nnested/b.mkv\n")
    assert extract(listing, out, ExtractOptions(**EXTRACT_OPTIONS)).exit_code == 0


# The file-size limit applies to every file the process writes, torch's shared-memory files of
# decoding workers included: these runs decode in the main process (a full disk would not hit /dev/shm).
NO_WORKERS = [*EXTRACT_FLAGS, "--workers", "0"]


@pytest.mark.integration
def test_full_disk_stops_with_one_line_and_keeps_completed_videos(ws, tmp_path):
    """The file cannot grow (ulimit -f): the next video is refused before HDF5 writes anything."""
    out = tmp_path / "full.h5"
    _first_two(ws, out)
    limit = out.stat().st_size + 200_000  # far less than the space check's margin (1 MiB)
    proc = forked_cli(["extract", str(ws.videos), "--out", str(out), *NO_WORKERS], tmp_path,
                      setup=_file_size_limit(limit))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in " ".join(proc.stderr.split()) and "file size limit" in lines[0] and "re-run" in lines[0]
    assert assert_survived(out, ws.raw) == 2
    with FeatureStore(out) as store:
        assert store.videos() == ["a.mp4", "nested/b.mkv"]
    assert extract(ws.videos, out, ExtractOptions(**EXTRACT_OPTIONS)).exit_code == 3  # space again: resumes
    assert_stores_equal(out, ws.raw)


@pytest.mark.integration
def test_disk_full_inside_an_hdf5_write_is_survived_like_a_crash(ws, tmp_path):
    """Without the space check (margin 0, a disk filled by someone else meanwhile), the write fails
    inside HDF5, which may crash the process; the file is then as after a kill."""
    out = tmp_path / "inside.h5"
    _first_two(ws, out)
    limit = out.stat().st_size + 6_000  # about one more video

    def no_space_check() -> None:
        FeatureStore.check_space = lambda *a: None
        _file_size_limit(limit)()

    proc = forked_cli(["extract", str(ws.videos), "--out", str(out), *NO_WORKERS], tmp_path, setup=no_space_check)
    assert proc.returncode not in (0, 3)  # it did not pretend to finish (HDF5 2.0 may even segfault)
    try:
        FeatureStore(out).close()
    except AnonfeatError as exc:  # the superblock records more than reached the disk: say what to do
        assert "re-run the command that wrote it" in str(exc)
    FeatureStore(out, "a").close()  # what the re-run does first: restore the missing end
    assert 2 <= assert_survived(out, ws.raw) < N_VALID
    assert extract(ws.videos, out, ExtractOptions(**EXTRACT_OPTIONS)).exit_code == 3
    assert_stores_equal(out, ws.raw)


def test_write_error_in_the_writer_thread_is_one_line(ws, tmp_path, monkeypatch, capsys):
    """Any OSError while writing (here ENOSPC on the 2nd video) ends the run with one line, exit 2."""
    from anonfeat.cli import main

    calls = []
    original = FeatureStore.check_space

    def fail_second(self, nbytes, what):
        calls.append(what)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, nbytes, what)

    monkeypatch.setattr(FeatureStore, "check_space", fail_second)
    out = tmp_path / "enospc.h5"
    monkeypatch.setattr(sys, "argv", ["anonfeat", "extract", str(ws.videos), "--out", str(out), *EXTRACT_FLAGS,
                                      "--workers", "0"])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and str(out) in " ".join(err.split())
    assert assert_survived(out, ws.raw) == 1


def _deny(monkeypatch, path: Path) -> None:
    """Read-only for real when not root; root ignores modes, so h5py is made to answer as the OS would."""
    if os.geteuid() != 0:
        return
    real = h5py.File

    def denied(name, mode="r", *args, **kw):
        if Path(name) == path and mode != "r":
            raise PermissionError(errno.EACCES, f"Unable to synchronously open file (unable to open file: name = "
                                  f"'{name}', errno = 13, error message = 'Permission denied')")
        return real(name, mode, *args, **kw)

    monkeypatch.setattr(h5py, "File", denied)


@pytest.mark.parametrize("target", ["read-only store", "read-only folder"])
def test_permission_denied_is_one_line_and_the_store_still_opens(ws, tmp_path, monkeypatch, capsys, target):
    from anonfeat.cli import main

    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "s.h5"
    if target == "read-only store":
        shutil.copy(ws.raw, out)
        out.chmod(0o444)
    else:
        folder.chmod(0o555)
    _deny(monkeypatch, out)
    monkeypatch.setattr(sys, "argv", ["anonfeat", "extract", str(ws.videos), "--out", str(out), *EXTRACT_FLAGS])
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "permission denied" in err.lower() and str(out) in " ".join(err.split()) and "Traceback" not in err
    if target == "read-only store":
        assert_stores_equal(out, ws.raw)  # untouched
    else:
        assert not out.exists()


# -- inspect --verify ------------------------------------------------------------------------------
@pytest.mark.integration
def test_verify_accepts_sound_stores(ws, tmp_path):
    for path in (ws.raw, ws.sanitized):
        with FeatureStore(path) as store:
            assert store.verify() == []
    proc = forked_cli(["inspect", str(ws.raw), "--verify"], tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout and f"{N_VALID} complete videos" in proc.stdout


CORRUPTIONS = {
    "no complete mark": (lambda f: f["videos/a.mp4"].attrs.__setitem__("complete", False), "a.mp4", "incomplete"),
    "wrong dim": (lambda f: _replace(f, "videos/a.mp4/clip_features", lambda x: x[:, :100]), "a.mp4",
                  "clip_features has shape (2, 100), expected (n, 192)"),
    "wrong dtype": (lambda f: _replace(f, "videos/short.mp4/clip_features", lambda x: x.astype(np.float16)),
                    "short.mp4", "clip_features is float16, the store's dtype is float32"),
    "NaN and Inf": (lambda f: _poke(f, "videos/nested/b.mkv/static_features", [np.nan, np.inf]), "nested/b.mkv",
                    "static_features holds 1 NaN and 1 Inf values"),
    "clip count": (lambda f: _replace(f, "videos/a.mp4/clip_ranges", lambda x: x[:1]), "a.mp4",
                   "clip_ranges has 1 rows, clip_features 2"),
    "static count": (lambda f: _replace(f, "videos/one_frame.mp4/static_frames", lambda x: x[:1]), "one_frame.mp4",
                     "static_frames is int64(1,), expected integer (2,)"),
    "missing dataset": (lambda f: f.__delitem__("videos/short.mp4/clip_ranges"), "short.mp4", "clip_ranges missing"),
    "range past the end": (lambda f: _replace(f, "videos/short.mp4/clip_ranges", lambda x: x + 100), "short.mp4",
                           "clip_ranges outside the video's 5 frames"),
    "failure and video": (lambda f: f["failures"].create_group("a.mp4").attrs.update(error="boom", source=""),
                          "a.mp4", "listed both as a complete video and as a failure"),
}


def _replace(f: h5py.File, name: str, change) -> None:
    data = change(f[name][()])
    del f[name]
    f.create_dataset(name, data=data)


def _poke(f: h5py.File, name: str, values) -> None:
    data = f[name][()]
    data.flat[:len(values)] = values
    f[name][...] = data


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_verify_names_each_problem(ws, tmp_path, case):
    corrupt, key, needle = CORRUPTIONS[case]
    path = tmp_path / "bad.h5"
    shutil.copy(ws.raw, path)
    with h5py.File(path, "a") as f:
        corrupt(f)
    with FeatureStore(path) as store:
        problems = store.verify()
    assert [p.key for p in problems] == [key] and needle in problems[0].message, problems


@pytest.mark.integration
def test_cli_verify_reports_problems_with_exit_4_and_json(ws, tmp_path):
    path = tmp_path / "bad.h5"
    shutil.copy(ws.raw, path)
    with h5py.File(path, "a") as f:
        CORRUPTIONS["NaN and Inf"][0](f)
        CORRUPTIONS["no complete mark"][0](f)
    table = forked_cli(["inspect", str(path), "--verify"], tmp_path)
    assert table.returncode == 4 and "2 problem(s)" in table.stdout and "nested/b.mkv" in table.stdout
    report = json.loads(forked_cli(["inspect", str(path), "--verify", "--json", "-"], tmp_path).stdout)
    assert report["ok"] is False and report["videos"] == N_VALID - 1 and report["failed"] == 1
    assert [p["video"] for p in report["problems"]] == ["a.mp4", "nested/b.mkv"]
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    junk = forked_cli(["inspect", str(tmp_path / "junk.h5"), "--verify"], tmp_path)
    assert junk.returncode == 2 and "cannot open as HDF5" in junk.stderr and "Traceback" not in junk.stderr


# -- sanitized stores leak nothing raw -------------------------------------------------------------
def test_sanitized_store_holds_no_raw_feature_dataset_or_vector(ws):
    raw_rows = set()
    with h5py.File(ws.raw, "r") as raw, h5py.File(ws.sanitized, "r") as sanitized:
        equal, compared = [], []

        def collect(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith("_features"):
                raw_rows.update(np.asarray(row, dtype=np.float16).tobytes() for row in obj[()])

        raw.visititems(collect)

        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                compared.append(name)
                if np.array_equal(obj[()], raw[name][()]):
                    equal.append(name)
                if name.endswith("_features"):
                    for row in obj[()]:
                        assert np.asarray(row, dtype=np.float16).tobytes() not in raw_rows, name

        sanitized.visititems(check)
    # only the frame indices are shared; every features dataset differs
    assert sorted(equal) == sorted(n for n in compared if n.endswith(("clip_ranges", "clip_times", "static_frames")))
    assert len(compared) == 5 * N_VALID


def test_untrained_adapter_is_refused_instead_of_copying_raw_features(ws, tmp_path):
    with FeatureStore(ws.raw) as store:
        header = store.header
    identity = save_adapter(AnonymizingAdapter(header.dim, depth=1, num_heads=2), tmp_path / "identity.safetensors",
                            {"encoder": {"name": header.encoder, "checkpoint_sha256": header.checkpoint_sha256}})
    with pytest.raises(AnonfeatError, match="unchanged .*untrained adapter is the identity"):
        sanitize_store(ws.raw, identity, tmp_path / "s.h5", progress=False)
    with FeatureStore(tmp_path / "s.h5") as store:
        assert store.videos() == []
    with pytest.raises(AnonfeatError, match="unchanged"):
        extract(ws.videos, tmp_path / "e.h5", ExtractOptions(**EXTRACT_OPTIONS), transform=adapter_transform(identity))


def test_sanitize_refuses_the_raw_store_by_any_name(ws, tmp_path):
    link = tmp_path / "link.h5"
    link.symlink_to(ws.raw)
    hard = tmp_path / "hard.h5"
    os.link(ws.raw, hard)
    before = ws.raw.read_bytes()
    for out in (ws.raw, link, hard, tmp_path / ".." / tmp_path.name / "hard.h5"):
        with pytest.raises(AnonfeatError, match="is the raw store itself; write sanitized features to another --out"):
            sanitize_store(ws.raw, ws.adapter, out, progress=False)
    with pytest.raises(AnonfeatError, match="store was made with"):  # nor into another raw store
        sanitize_store(ws.raw, ws.adapter, shutil.copy(ws.raw, tmp_path / "other_raw.h5"), progress=False)
    assert ws.raw.read_bytes() == before
