"""The command line as a pipeline tool: results alone on stdout, progress on stderr, one meaning of
--json, flags declared once (defaults, help, choices), and sampling by time (--sample-fps)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from anonfeat.cli import app
from anonfeat.cli.options import flag_fields, from_cli
from anonfeat.options import flag_of
from anonfeat.store import FeatureStore
from anonfeat.synth import write_video
from anonfeat.video.reader import FrameReader
from anonfeat.video.sampling import Sampling, clip_frame_indices

TINY = ["--encoder", "videomae-tiny", "--random-init", "--device", "cpu", "--workers", "0"]


def invoke(*args: str):
    """Run the CLI in-process with stdout and stderr apart (stderr is not a terminal here)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code in (0, 3), (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def commands() -> dict:
    return get_command(app).commands


def choices_of(param) -> list[str]:
    """The values a parameter accepts (click types in older typer versions, an Enum annotation in newer)."""
    if hasattr(getattr(param, "type", None), "choices"):
        return list(param.type.choices)
    return [member.value for member in param.type_descriptor.annotation]


# -- flags declared once --------------------------------------------------------------------------
def test_every_flag_has_help_and_the_common_flags():
    for name, cmd in commands().items():
        names = {opt for param in cmd.params for opt in param.opts}
        assert {"--json", "--quiet", "-q", "--verbose", "-v"} <= names, name
        for param in cmd.params:
            assert (getattr(param, "help", None) or "").strip(), f"{name} {param.opts} has no help"


def test_choices_are_enums_listed_in_help():
    listed = {("extract", "--dtype"): {"float16", "float32"}, ("extract", "--resize"): {"short", "full"},
              ("extract", "--compression"): {"gzip", "lzf"}, ("prune", "--dtype"): {"float16", "float32"},
              ("train-adapter", "--privacy-loss"): {"ntxent", "attributes", "both"},
              ("train-adapter", "--attr-loss"): {"decorrelate", "grl", "adversary"}, ("train-adapter", "--pairs"): {"static", "all"},
              ("train-pruner", "--privacy-loss"): {"auto", "attributes", "ntxent"},
              ("train-pruner", "--resize"): {"short", "full"}, ("audit", "--attacker"): {"mlp", "linear"},
              ("sanitize", "--compression"): {"gzip", "lzf"}, ("train-adapter", "--method"): {"aam", "leace"},
              ("prune", "--features"): {"masked", "action-cls"}, ("prune", "--fill"): {"black", "blur", "pixelate"},
              **{(command, "--decoder"): {"auto", "cpu", "gpu"}
                 for command in ("extract", "prune", "train-pruner", "bench")}}
    for (command, flag), choices in listed.items():
        param = next(p for p in commands()[command].params if flag in p.opts)
        assert set(choices_of(param)) == choices, (command, flag)
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"}).stdout
        assert "|".join(choices_of(param)) in text, (command, flag)
    # a value that is not a choice is refused before anything runs
    bad = CliRunner().invoke(app, ["extract", "v", "-o", "x.h5", "--dtype", "int8"])
    assert bad.exit_code == 2 and "float16" in bad.stderr


def test_cli_defaults_are_the_dataclass_defaults():
    """Every generated flag's default, read back from the click parameter, is its dataclass field's default;
    every flag field of the options class is a flag of the command."""
    checked = 0
    for name, cmd in commands().items():
        cls = getattr(cmd.callback, "options_class", None)
        if cls is None:
            continue
        params = {p.name: p for p in cmd.params}
        instance = cls()
        for field in flag_fields(cls, cmd.callback.options_exclude):
            assert field.name in params, (name, field.name)
            param = params[field.name]
            default = param.default() if callable(param.default) else param.default
            assert from_cli(field, default) == getattr(instance, field.name), (name, field.name)
            checked += 1
    assert checked > 100
    workers = next(p for p in commands()["train-pruner"].params if p.name == "workers")
    assert workers.default == 2  # the documented PrunerTrainOptions default (the CLI said 1)


def test_same_short_options_everywhere():
    shorts: dict[str, set] = {}
    for name, cmd in commands().items():
        for param in cmd.params:
            longs = [o for o in param.opts if o.startswith("--")]
            short = {o for o in param.opts + param.secondary_opts if not o.startswith("--")}
            for long in longs:
                shorts.setdefault(long, set()).add(frozenset(short))
    inconsistent = {long: s for long, s in shorts.items() if len(s) > 1}
    assert not inconsistent, inconsistent
    assert shorts["--labels"] == {frozenset({"-l"})} and shorts["--out"] == {frozenset({"-o"})}
    assert shorts["--device"] == {frozenset({"-d"})} and shorts["--batch-size"] == {frozenset({"-b"})}
    for name in ("train-adapter", "train-pruner", "audit"):
        assert any("-l" in p.opts for p in commands()[name].params), name
        assert any("--split-seed" in p.opts for p in commands()[name].params), name
    assert shorts["--checkpoint"] == {frozenset({"-c"})}  # prune's source-encoder weights spelt as extract's


def test_validation_lives_in_the_options():
    from anonfeat.options import ExtractOptions
    from anonfeat.errors import AnonfeatError

    with pytest.raises(AnonfeatError, match="--frame-stride 2 and --sample-fps 5 exclude each other"):
        ExtractOptions(frame_stride=2, sample_fps=5).validate()
    with pytest.raises(AnonfeatError, match="--dtype 'int8'"):
        ExtractOptions(dtype="int8").validate()
    with pytest.raises(AnonfeatError, match="--batch-size 0: give at least 1"):
        ExtractOptions(batch_size=0).validate()
    from anonfeat.pruning.options import PruneOptions, PrunerTrainOptions

    with pytest.raises(AnonfeatError, match="not available with --sample-fps"):
        PruneOptions(sample_fps=5, save_videos="anonymized").validate()
    with pytest.raises(AnonfeatError, match="--privacy-loss 'x': choose auto, attributes or ntxent"):
        PrunerTrainOptions(privacy_loss="x").validate()


# -- a tiny end-to-end chain, every command with --json - ---------------------------------------
@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    result = invoke("synth", root / "bench", "--videos", "12", "--frames", "16", "--size", "48", "--json", "-")
    assert json.loads(result.stdout)["videos"] == 12
    return root


def _json_alone(result) -> dict:
    """stdout holds the JSON document and nothing else."""
    return json.loads(result.stdout)


@pytest.mark.integration  # all ten commands end to end, from extract to bench
def test_every_command_writes_json_alone_on_stdout(bench_dir, monkeypatch):
    root = bench_dir
    videos, labels = root / "bench" / "videos", root / "bench" / "labels.csv"
    raw = root / "raw.h5"
    doc = _json_alone(invoke("extract", videos, "-o", raw, *TINY, "--static-clips", "2", "--json", "-"))
    assert doc["store"] == str(raw) and len(doc["written"]) == 12 and doc["exit_code"] == 0 and doc["clips"] > 0
    doc = _json_alone(invoke("inspect", raw, "--json", "-"))
    assert len(doc["videos"]) == 12 and doc["sampling"]["frame_stride"] == 4
    assert _json_alone(invoke("inspect", raw, "--verify", "--json", "-"))["ok"] is True
    assert "videomae-tiny" in _json_alone(invoke("encoders", "--json", "-"))
    adapter = root / "adapter.safetensors"
    doc = _json_alone(invoke("train-adapter", raw, "-l", labels, "-o", adapter, "--epochs", "2", "--warmup-epochs",
                             "1", "--batch-size", "2", "--depth", "1", "--heads", "2", "-d", "cpu", "--json", "-"))
    assert doc["adapter"] == str(adapter) and "train_top1" in doc["metrics"]
    sanitized = root / "sanitized.h5"
    doc = _json_alone(invoke("sanitize", raw, "-a", adapter, "-o", sanitized, "-d", "cpu", "--json", "-"))
    assert doc["store"] == str(sanitized) and len(doc["written"]) == 12
    doc = _json_alone(invoke("audit", sanitized, "-l", labels, "--baseline", raw, "--seeds", "1", "--epochs", "3",
                             "-d", "cpu", "--attacker", "linear", "--json", "-"))
    assert set(doc["stores"]) == {str(raw), str(sanitized)}
    pruner = root / "pruner.safetensors"
    doc = _json_alone(invoke("train-pruner", videos, "-l", labels, "-o", pruner, *TINY, "--epochs", "1",
                             "--warmup-epochs", "0", "--batch-size", "2", "--sample-fps", "12", "--json", "-"))
    assert doc["pruner"] == str(pruner) and doc["train_videos"] > 0
    pruned = root / "pruned.h5"
    doc = _json_alone(invoke("prune", videos, "-p", pruner, "-o", pruned, "-d", "cpu", "-w", "0", "--json", "-"))
    assert len(doc["written"]) == 12
    with FeatureStore(pruned) as store:  # prune samples as extract does (not as the pruner was trained)
        assert store.header.sampling["frame_stride"] == 4 and "sample_fps" not in store.header.sampling
    doc = _json_alone(invoke("bench", "-d", "cpu", "-n", "1", "--frames", "20", "--size", "64x48", "--repeats", "1",
                             "--naive-videos", "1", "-b", "2", "-w", "0", "--skip-memory", "--cache-dir",
                             root / "cache", "--json", "-"))
    assert doc["e2e_cps"] > 0 and doc["rss_long_mb"] is None  # strict JSON: not measured is null
    # --json PATH writes the file, and stdout keeps the human result
    path = root / "out" / "inspect.json"
    result = invoke("inspect", raw, "--json", path)
    assert json.loads(path.read_text())["videos"].keys() == doc_keys(raw) and "videomae-tiny" in result.stdout


def doc_keys(store: Path) -> set:
    with FeatureStore(store) as fs:
        return set(fs.videos())


def test_stdout_is_the_result_and_stderr_plain_progress(bench_dir, monkeypatch):
    import anonfeat.progress

    monkeypatch.setattr(anonfeat.progress, "PLAIN_INTERVAL_S", 0.0)  # a line per step
    videos = bench_dir / "bench" / "videos"
    out = bench_dir / "progress.h5"
    result = invoke("extract", videos, "-o", out, *TINY, "--frame-stride", "2")
    assert result.stdout.strip().splitlines()[0].startswith(f"{out}: 12 written, 0 already done, 0 failed")
    assert len(result.stdout.strip().splitlines()) == 1 and "extract:" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("extract: ")]
    assert lines[0].startswith("extract: 0/12 (0%)") and lines[-1].startswith("extract: 12/12 (100%)")
    assert len(lines) == 13 and "\x1b" not in result.stderr and "━" not in result.stderr  # no bar, no escapes
    # -q: only the result
    again = invoke("extract", videos, "-o", bench_dir / "quiet.h5", *TINY, "-q")
    assert again.stderr == "" and "12 written" in again.stdout
    # -v: per-video lines and timings on stderr
    verbose = invoke("extract", videos, "-o", bench_dir / "verbose.h5", *TINY, "-v", "--no-progress")
    assert "written jump/" in verbose.stderr or "written walk" in verbose.stderr
    assert "waited" in verbose.stderr and "options: ExtractOptions(" in verbose.stderr
    assert "written" not in verbose.stdout.replace("12 written", "")


def test_audit_stdout_and_stderr(bench_dir):
    labels = bench_dir / "bench" / "labels.csv"
    raw = bench_dir / "audit_raw.h5"
    invoke("extract", bench_dir / "bench" / "videos", "-o", raw, *TINY, "--static-clips", "1", "-q")
    result = invoke("audit", raw, "-l", labels, "--seeds", "1", "--epochs", "2", "-d", "cpu", "--attacker", "linear")
    assert "auditing" in result.stderr and "auditing" not in result.stdout
    assert "videos matched" in result.stdout and "cMAP" in result.stdout
    quiet = invoke("audit", raw, "-l", labels, "--seeds", "1", "--epochs", "2", "-d", "cpu", "-q", "--json", "-")
    assert quiet.stderr == "" and json.loads(quiet.stdout)["stores"]


def test_old_bare_json_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from anonfeat.cli.app import main

    for argv in (["inspect", "x.h5", "--json"], ["inspect", "x.h5", "--json", "--verify"]):
        monkeypatch.setattr(sys, "argv", ["anonfeat", *argv])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err
        assert info.value.code == 2 and "--json -" in err and len(err.strip().splitlines()) == 1, err


def test_json_never_overwrites_a_store(bench_dir):
    raw = bench_dir / "raw.h5"
    if not raw.is_file():
        invoke("extract", bench_dir / "bench" / "videos", "-o", raw, *TINY, "-q")
    before = raw.read_bytes()
    result = CliRunner().invoke(app, ["inspect", str(raw), "--json", str(raw)])
    assert result.exit_code != 0 and "HDF5 file" in str(result.exception)
    assert raw.read_bytes() == before


# -- sampling by time -----------------------------------------------------------------------------
SECONDS, SAMPLE_FPS = 4.0, 8.0


def square_at(t: np.ndarray, width: int) -> np.ndarray:
    """x of the moving square's left edge at time t (seconds): the same motion whatever the frame rate."""
    return np.round(4 + t * (width - 28) / SECONDS).astype(int)


def write_motion(path: Path, fps: int, size: int = 96) -> None:
    n = int(SECONDS * fps)
    frames = np.full((n, size, size, 3), 20, dtype=np.uint8)
    for i, x in enumerate(square_at(np.arange(n) / fps, size)):
        frames[i, 30:60, x:x + 20] = 230
    write_video(path, frames, fps=fps)


def square_x(frame: np.ndarray) -> float:
    bright = np.flatnonzero(frame[..., 0].max(axis=0) > 120)
    assert len(bright), "the square is not in the frame"
    return float(bright.mean())


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("motion")
    write_motion(root / "fps25.mp4", 25)
    write_motion(root / "fps60.mp4", 60)
    return root


def test_sample_fps_gives_clips_of_the_same_seconds_at_25_and_60_fps(motion_dir, tmp_path):
    out = tmp_path / "timed.h5"
    invoke("extract", motion_dir, "-o", out, *TINY, "--sample-fps", SAMPLE_FPS, "-q")
    with FeatureStore(out) as store:
        assert store.header.sampling["sample_fps"] == SAMPLE_FPS and store.header.sampling["frame_stride"] is None
        times = {key: store.clip_times(key) for key in store.videos()}
        ranges = {key: store.clip_ranges(key) for key in store.videos()}
        fps = {key: store.video_attrs(key)["fps"] for key in store.videos()}
        assert store.verify() == []
    # 4 s at 8 samples/s: two clips of 16 samples, [0, 1.875] s and [2, 3.875] s, at either frame rate
    for key in times:
        np.testing.assert_allclose(times[key], [[0.0, 1.875], [2.0, 3.875]], atol=0.5 / fps[key] + 1e-9)
        np.testing.assert_allclose(times[key], ranges[key] / fps[key])
    np.testing.assert_allclose(times["fps25.mp4"], times["fps60.mp4"], atol=0.5 / 25 + 0.5 / 60)
    # the frames chosen show the same instants of the motion: decode them and find the square
    positions = {}
    for key in times:
        reader = FrameReader(motion_dir / key, 112, "full")
        index = clip_frame_indices(reader.info.n_frames, Sampling(16, sample_fps=SAMPLE_FPS), reader.info.fps)
        assert index[:, 0].tolist() == ranges[key][:, 0].tolist() and index[:, -1].tolist() == ranges[key][:, 1].tolist()
        frames, inverse = reader.frames(index)
        positions[key] = np.array([[square_x(frames[i]) for i in row] for row in inverse])
        reader.close()
        assert np.all(np.diff(index, axis=1) > 0)  # a new frame every sample: 25/8 and 60/8 frames apart
    # the square moves 68 px in 4 s: 2.1 px (2.5 decoded px) per sample; the two agree within a sample
    assert np.all(np.diff(positions["fps60.mp4"].ravel()) > 1.0)
    np.testing.assert_allclose(positions["fps25.mp4"], positions["fps60.mp4"], atol=1.5)
    # sampling by frames instead: the same stride spans 2.4x the seconds at 25 fps as at 60
    framed = tmp_path / "framed.h5"
    invoke("extract", motion_dir, "-o", framed, *TINY, "--frame-stride", "4", "-q")
    with FeatureStore(framed) as store:
        span = {key: np.diff(store.clip_times(key)[0])[0] for key in store.videos()}
        for key in store.videos():  # clip_times also for frame-stride sampling: index / fps
            np.testing.assert_allclose(store.clip_times(key),
                                       store.clip_ranges(key) / store.video_attrs(key)["fps"])
    assert span["fps25.mp4"] == pytest.approx(60 / 25 * span["fps60.mp4"])


def test_frame_stride_and_sample_fps_together_are_refused(motion_dir, tmp_path, monkeypatch, capsys):
    from anonfeat.cli.app import main

    for command in (["extract", str(motion_dir), "-o", str(tmp_path / "x.h5"), "--random-init", "-e", "videomae-tiny"],
                    ["prune", str(motion_dir), "-p", str(tmp_path / "p.safetensors"), "-o", str(tmp_path / "x.h5")],
                    ["train-pruner", str(motion_dir), "-l", str(tmp_path / "l.csv"), "-o", str(tmp_path / "p.st")]):
        monkeypatch.setattr(sys, "argv", ["anonfeat", *command, "--frame-stride", "2", "--sample-fps", "5"])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1
        assert "--frame-stride 2 and --sample-fps 5 exclude each other" in err
    assert not (tmp_path / "x.h5").exists()


def test_other_sampling_is_refused_on_resume_and_old_stores_stay_readable(motion_dir, tmp_path):
    out = tmp_path / "s.h5"
    invoke("extract", motion_dir, "-o", out, *TINY, "--frame-stride", "4", "-q")
    again = CliRunner().invoke(app, ["extract", str(motion_dir), "-o", str(out), *TINY, "--sample-fps", "8", "-q"])
    assert again.exit_code != 0 and "sample_fps=8.0" in str(again.exception)
    with FeatureStore(out) as store:
        expected = {key: store.clip_times(key) for key in store.videos()}
    with h5py.File(out, "a") as f:  # a store of an earlier version: no clip_times
        for key in expected:
            del f[f"videos/{key}/clip_times"]
    with FeatureStore(out) as store:
        assert store.verify() == []
        for key, times in expected.items():
            np.testing.assert_allclose(store.clip_times(key), times)
            assert store.read_video(key).clip_times is None
    # and resuming it with the same flags works as before
    assert invoke("extract", motion_dir, "-o", out, *TINY, "--frame-stride", "4", "-q").stdout.count("2 already done")
