"""torch.distributed: extraction split over ranks and merged, DDP adapter training, on CPU (gloo).

Ranks are real processes: `torchrun --nproc-per-node 2` for the contract's command lines, and plain
processes with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set (what srun-style launchers do) for the
gradient check. Each process start costs seconds (torch imports; DDP imports torch._dynamo), so
the multi-process runs are few and each checks a lot.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from anonfeat import distributed
from anonfeat.distributed import (probe_length, row_range, shard_dir, shard_path, split_balanced,
                                  video_weights)
from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
GOOD = ["a.mp4", "nested/b.mkv", "nested/deeper/vertical.mp4", "one_frame.mp4", "short.mp4"]
BAD = ["0zero.mp4", "text.mp4"]  # 0zero sorts first: its rank fails it, then goes on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(name, None)
    return e


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                           "-m", "anonfeat", *args], capture_output=True, text=True, timeout=300, env=env())


def launch_ranks(*args: str, world: int = 2, module: bool = True) -> list[subprocess.CompletedProcess]:
    """Start `world` ranks the way srun-style launchers do: one process each, environment set."""
    port = free_port()
    command = [sys.executable, *(["-m", "anonfeat"] if module else []), *args]
    procs = []
    for rank in range(world):
        e = dict(env(), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(command, env=e, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


# -- splitting ----------------------------------------------------------------------------------
def test_split_puts_each_video_on_one_rank_balanced_and_deterministic():
    weights = [40, 36, 24, 5, 1, 1, 300, 7, 7, 90]
    for world in (1, 2, 3, 4):
        parts = split_balanced(weights, world)
        assert parts == split_balanced(weights, world)
        assert sorted(i for p in parts for i in p) == list(range(len(weights)))
        loads = [sum(weights[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(weights)  # greedy longest-first bound
    # 3 videos on 5 ranks: two ranks get nothing, nothing is duplicated (no sampler padding)
    parts = split_balanced([3, 2, 1], 5)
    assert sorted(i for p in parts for i in p) == [0, 1, 2] and sum(not p for p in parts) == 2
    # the heavy video alone on a rank, the light ones share the other
    assert split_balanced([100, 10, 10, 10], 2) == [[0], [1, 2, 3]]


def test_row_range_covers_each_row_once():
    for n in (0, 1, 5, 6, 7):
        for world in (1, 2, 3):
            ranges = [row_range(n, r, world) for r in range(world)]
            assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_lengths_come_from_container_headers(video_dir, bad_video_dir):
    assert probe_length(video_dir / "a.mp4") == 40
    assert probe_length(video_dir / "nested" / "b.mkv") == pytest.approx(24, abs=1)  # mkv: duration x rate
    assert probe_length(bad_video_dir / "zero.mp4") is None
    assert probe_length(bad_video_dir / "text.mp4") is None
    paths = [video_dir / "a.mp4", bad_video_dir / "text.mp4", bad_video_dir / "zero.mp4", video_dir / "short.mp4"]
    weights = video_weights(paths, [40.0, None, None, 5.0])
    assert weights[0] == 40 and weights[3] == 5 and weights[2] == 1
    assert weights[1] >= 1  # unknown length: estimated from the file size


def test_missing_master_address_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(AnonfeatError, match="MASTER_ADDR is not set; launch with torchrun"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(AnonfeatError, match="RANK='7'"):
        distributed.init_from_env("cpu")


def test_run_sharded_reports_a_rank_error_and_keeps_finished_work(tmp_path):
    """The generic driver with a store command of its own (no decoding), one process."""
    from anonfeat.encoders.config import EncoderConfig
    from anonfeat.extract import ExtractResult
    from anonfeat.video.discover import VideoItem

    header = StoreHeader(encoder="fake", encoder_config=EncoderConfig(name="fake", embed_dim=4),
                         checkpoint_sha256="x", sampling={}, dim=4, dtype="float32")
    videos = [VideoItem(k, tmp_path / k) for k in ("a.mp4", "b.mp4", "boom.mp4", "c.mp4")]
    broken = {"boom.mp4"}

    def run(items, path):
        result = ExtractResult(store=path, total=len(items))
        with FeatureStore(path, "a") as fs:
            fs.initialize(header)
            for item in items:
                if item.key in broken:
                    raise AnonfeatError(f"{path}: writing failed (disk full)")
                fs.write_video(VideoRecord(item.key, np.ones((2, 4)), np.zeros((2, 2))))
                result.written.append(item.key)
        return result

    out = tmp_path / "out.h5"
    with pytest.raises(distributed.DistributedError, match=r"rank 0: .*disk full.*re-run the same command") as err:
        distributed.run_sharded(videos, out, run)
    assert not err.value.quiet and not out.exists()
    with FeatureStore(shard_path(out, 0, 1)) as fs:
        assert fs.videos() == ["a.mp4", "b.mp4"]  # written before the error, kept
    broken.clear()
    result = distributed.run_sharded(videos, out, run)
    assert result.written == ["boom.mp4", "c.mp4"] and result.skipped == ["a.mp4", "b.mp4"]
    with FeatureStore(out) as fs:
        assert fs.videos() == ["a.mp4", "b.mp4", "boom.mp4", "c.mp4"]
    assert not shard_dir(out).exists()


# -- gradients through the gather -----------------------------------------------------------------
@pytest.mark.distributed
def test_gathered_nt_xent_gives_the_single_process_loss_and_gradients(tmp_path):
    from dist_worker import gradient_worker

    gradient_worker(str(tmp_path / "one.pt"))  # this process: one rank
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import dist_worker; " \
           f"dist_worker.gradient_worker({str(tmp_path / 'two.pt')!r})"
    ranks = launch_ranks("-c", code, world=2, module=False)
    assert all(p.returncode == 0 for p in ranks), [p.stderr[-2000:] for p in ranks]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-5)
    assert float(one["weight"].abs().max()) > 1e-3


# -- extraction ---------------------------------------------------------------------------------
EXTRACT_FLAGS = ["--encoder", "videomae-tiny", "--random-init", "--static-clips", "2", "--frame-stride", "2",
                 "--clip-stride", "6", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--dtype", "float32", "--no-progress"]


@pytest.fixture()
def mixed_dir(tmp_path, video_dir) -> Path:
    root = tmp_path / "mixed"
    shutil.copytree(video_dir, root)
    (root / "0zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    return root


def assert_same_store(merged: Path, reference: Path) -> float:
    """Every video once, same keys, failures and facts; returns the largest feature difference."""
    worst = 0.0
    with FeatureStore(merged) as m, FeatureStore(reference) as r:
        assert m.header.to_attrs() | {"anonfeat_version": 0} == r.header.to_attrs() | {"anonfeat_version": 0}
        assert m.videos() == r.videos() == GOOD
        assert sorted(m.failures()) == sorted(r.failures()) == BAD
        for key in GOOD:
            a, b = m.read_video(key), r.read_video(key)
            np.testing.assert_array_equal(a.clip_ranges, b.clip_ranges)
            np.testing.assert_array_equal(a.static_frames, b.static_frames)
            assert a.attrs == b.attrs
            for x, y in ((a.clip_features, b.clip_features), (a.static_features, b.static_features)):
                assert x.shape == y.shape
                worst = max(worst, float(np.abs(x - y).max()))
    with h5py.File(merged) as f:  # one group per video, nothing duplicated or nested twice
        groups = []
        f["videos"].visititems(lambda n, o: groups.append(n) if "complete" in o.attrs else None)
        assert sorted(groups) == GOOD
    return worst


@pytest.mark.distributed
def test_torchrun_extract_equals_single_process_and_resumes_with_another_world_size(mixed_dir, tmp_path):
    reference = tmp_path / "single.h5"
    opts = ExtractOptions(encoder="videomae-tiny", random_init=True, static_clips=2, frame_stride=2, clip_stride=6,
                          batch_size=4, workers=0, device="cpu", dtype="float32", progress=False)
    assert extract(mixed_dir, reference, opts).exit_code == 3

    # 2 ranks through torchrun: both work, the bad videos do not stop anyone, rank 0 merges
    out = tmp_path / "dist.h5"
    proc = torchrun("extract", str(mixed_dir), "--out", str(out), *EXTRACT_FLAGS, "--keep-shards")
    assert "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]  # rank 0's status: some videos failed
    assert proc.stdout.count("5 written, 0 already done, 2 failed") == 1, proc.stdout  # printed once, by rank 0
    assert f'File "{REPO / "anonfeat"}' not in proc.stderr  # no traceback from a rank (torchrun's own report only)
    worst = assert_same_store(out, reference)
    assert worst < 1e-4, worst  # float32 stores; batches mix other videos than in the single run
    print(json.dumps({"merged_vs_single_max_abs_diff": worst}))
    shards = [shard_path(out, r, 2) for r in range(2)]
    per_rank = []
    for shard in shards:
        with FeatureStore(shard) as s:
            per_rank.append(set(s.videos()) | set(s.failures()))
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(GOOD + BAD)
    with FeatureStore(shards[0 if "0zero.mp4" in per_rank[0] else 1]) as s:
        assert "0zero.mp4" in s.failures() and set(s.videos()) & set(GOOD)  # failed first, went on

    # interrupted before the merge with one video half-written in each shard, resumed by one
    # process (another world size): only those two are redone, the bad videos retried
    out.unlink()
    redo = []
    for shard, videos in zip(shards, per_rank):
        key = sorted(videos & set(GOOD))[0]
        with h5py.File(shard, "a") as f:
            f[f"videos/{key}"].attrs["complete"] = False
        redo.append(key)
    result = distributed.extract_sharded(mixed_dir, out, opts)
    assert result.written == sorted(redo) and result.skipped == sorted(set(GOOD) - set(redo))
    assert sorted(result.failed) == BAD and result.exit_code == 3
    assert not shard_dir(out).exists()  # merged, shards removed
    assert_same_store(out, reference)

    # a finished store resumes from itself; other settings into it are refused before any work
    result = distributed.extract_sharded(mixed_dir, out, opts)
    assert result.written == [] and len(result.skipped) == 5
    with pytest.raises(AnonfeatError, match="store was made with frame_stride=2"):
        distributed.extract_sharded(mixed_dir, out, opts, frame_stride=3)


# -- training -----------------------------------------------------------------------------------
def synthetic_store(root: Path, n_videos: int = 24, dim: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """A raw store of random clip/static features whose mean depends on an attribute, and labels."""
    from anonfeat.encoders.config import EncoderConfig

    rng = np.random.default_rng(seed)
    header = StoreHeader(encoder="fake", encoder_config=EncoderConfig(name="fake", embed_dim=dim),
                         checkpoint_sha256="random", sampling={"clip_len": 16}, dim=dim, dtype="float32")
    store, labels = root / "train.h5", root / "labels.csv"
    rows = []
    with FeatureStore(store, "a") as fs:
        fs.initialize(header)
        for i in range(n_videos):
            attr, action = int(rng.integers(2)), int(rng.integers(3))
            n = int(rng.integers(1, 6))  # 1 to 5 clips: padding, and videos without a clip pair
            shift = np.zeros(dim)
            shift[0], shift[1 + action] = 2.0 * attr, 1.5
            fs.write_video(VideoRecord(
                key=f"v{i:02d}.mp4", clip_features=rng.normal(size=(n, dim)) + shift,
                clip_ranges=np.zeros((n, 2), dtype=np.int64), static_features=rng.normal(size=(3, dim)) + shift,
                static_frames=np.arange(3), attrs={"n_frames": 10}))
            rows.append({"video": f"v{i:02d}.mp4", "split": "train" if i < 20 else "test",
                         "action": f"a{action}", "hat": attr})
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return store, labels


TRAIN_FLAGS = ["--epochs", "3", "--warmup-epochs", "1", "--batch-size", "5", "--heads", "4", "--depth", "2",
               "--privacy-loss", "both", "--device", "cpu", "--seed", "3", "--no-progress"]


@pytest.mark.distributed
def test_ddp_train_adapter_has_the_single_process_loss_curve_and_weights(tmp_path):
    from anonfeat.adapter.io import load_adapter
    from anonfeat.adapter.train import AdapterTrainOptions, train_adapter

    store, labels = synthetic_store(tmp_path)
    single = train_adapter(store, labels, tmp_path / "one.safetensors", AdapterTrainOptions(
        epochs=3, warmup_epochs=1, batch_size=5, heads=4, depth=2, privacy_loss="both", device="cpu", seed=3,
        progress=False))
    # 17 fitting videos, global batch 5: steps of 5, 5, 7 rows, split 3+2, 3+2 and 4+3 over the ranks
    assert single.train_videos == 17

    out = tmp_path / "ddp.safetensors"
    proc = torchrun("train-adapter", str(store), "--labels", str(labels), "--out", str(out), *TRAIN_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("adapter written to") == 1  # rank 0 only
    ddp = load_adapter(out)
    assert ddp.config["world_size"] == 2 and load_adapter(single.adapter).config["world_size"] == 1
    curve_one, curve_ddp = single.history, ddp.config["history"]
    assert [r["phase"] for r in curve_ddp] == ["warmup", "joint", "joint", "joint"]
    worst = 0.0
    for a, b in zip(curve_one, curve_ddp, strict=True):
        assert set(a) == set(b) >= {"task", "lc", "ntxent", "attr"} - ({"lc", "ntxent", "attr"} if a["phase"] == "warmup" else set())
        for name in a:
            if name not in ("epoch", "phase"):
                worst = max(worst, abs(a[name] - b[name]) / max(1.0, abs(a[name])))
    assert worst < 1e-4, worst
    one_weights = load_adapter(single.adapter).model.state_dict()
    for key, value in ddp.model.state_dict().items():
        torch.testing.assert_close(value, one_weights[key], atol=1e-4, rtol=1e-4)
    # the weights moved during training: equality is not the identity on both sides
    assert max(float(v.abs().max()) for k, v in one_weights.items() if "proj.weight" in k) > 1e-3
    print(json.dumps({"loss_curve_max_rel_diff": worst}))


# -- pruning: train-pruner under DDP, prune split over ranks --------------------------------------
@pytest.mark.distributed
def test_torchrun_train_pruner_and_prune_match_one_process(tmp_path):
    from anonfeat.pruning.io import load_pruner
    from anonfeat.pruning.run import prune
    from anonfeat.synth import make_benchmark

    labels = make_benchmark(tmp_path / "bench", n_videos=14, size=(64, 64), n_frames=20, seed=9)
    videos = tmp_path / "bench" / "videos"
    out = tmp_path / "ddp.safetensors"
    proc = torchrun("train-pruner", str(videos), "--labels", str(labels), "--out", str(out), "--encoder",
                    "videomae-demo", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "5", "--frame-stride",
                    "1", "--workers", "0", "--device", "cpu", "--seed", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pruner written to") == 1  # rank 0 only
    cli_single = subprocess.run([sys.executable, "-m", "anonfeat", "train-pruner", str(videos), "--labels", str(labels),
                                 "--out", str(tmp_path / "cli_one.safetensors"), "--encoder", "videomae-demo",
                                 "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "5", "--frame-stride", "1",
                                 "--workers", "0", "--device", "cpu", "--seed", "4", "--no-progress"],
                                capture_output=True, text=True, timeout=300, env=env())
    assert cli_single.returncode == 0, cli_single.stderr[-3000:]
    one, ddp = load_pruner(tmp_path / "cli_one.safetensors"), load_pruner(out)
    assert ddp.info["world_size"] == 2 and one.info["world_size"] == 1
    worst = 0.0
    for a, b in zip(one.info["history"], ddp.info["history"], strict=True):
        for name in ("action", "privacy", "acc"):
            worst = max(worst, abs(a[name] - b[name]) / max(1.0, abs(a[name])))
    assert worst < 1e-4, worst
    one_weights = one.model.state_dict()
    for key, value in ddp.model.state_dict().items():
        torch.testing.assert_close(value, one_weights[key], atol=1e-4, rtol=1e-4)
    print(json.dumps({"pruner_loss_curve_max_rel_diff": worst}))

    # prune over 2 ranks equals one process, video by video (features, kept tubelets)
    reference = tmp_path / "pruned_one.h5"
    assert prune(videos, reference, out, static_clips=1, dtype="float32", workers=0,
                 progress=False).exit_code == 0
    merged = tmp_path / "pruned_ddp.h5"
    proc = torchrun("prune", str(videos), "--pruner", str(out), "--out", str(merged), "--static-clips", "1",
                    "--dtype", "float32", "--workers", "0", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with FeatureStore(merged) as m, FeatureStore(reference) as r:
        assert m.videos() == r.videos() and len(m.videos()) == 14
        for key in r.videos():
            a, b = m.read_video(key), r.read_video(key)
            np.testing.assert_allclose(a.clip_features, b.clip_features, atol=1e-4)
            assert sorted(a.extras) == sorted(b.extras)
            for name, value in b.extras.items():
                if name.startswith("pruning/kept"):
                    np.testing.assert_array_equal(a.extras[name], value)
