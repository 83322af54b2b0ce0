"""The audit on synthetic stores whose leakage is known by construction."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from anonfeat.audit import AuditOptions, audit_figure, audit_stores, plot, render_table, report_json, write_json
from anonfeat.encoders.config import EncoderConfig
from anonfeat.errors import AnonfeatError
from anonfeat.store import FeatureStore, StoreHeader, VideoRecord

DIM, N_VIDEOS, N_ACTIONS, ATTRIBUTES = 24, 160, 4, ("face", "gender", "skin")
FAST = dict(seeds=2, epochs=30, device="cpu")


def make_store(path, attributes, actions, clip_leak=1.5, static_leak=1.5, static=True, action_signal=None,
               seed=0, flipped=None, **header_fields):
    """Store whose features are noise + signed attribute directions (+ action directions).

    flipped: videos whose attribute directions are negated and whose action direction is the next
    action's: a model fit on them predicts the others wrong. header_fields: e.g. features="sanitized"."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].T
    attr_dirs, action_dirs = directions[:attributes.shape[1]], directions[8:8 + N_ACTIONS]
    signal = np.ones(len(actions)) if action_signal is None else action_signal
    flipped = np.zeros(len(actions), dtype=bool) if flipped is None else flipped
    header = StoreHeader(encoder="test", encoder_config=EncoderConfig(name="test", embed_dim=DIM),
                         checkpoint_sha256="0" * 64, sampling={}, dim=DIM, dtype="float32", **header_fields)
    with FeatureStore(path, "a") as store:
        store.initialize(header)
        for i, (y, a) in enumerate(zip(attributes, actions)):
            sign = -1 if flipped[i] else 1
            private = sign * (2 * y - 1) @ attr_dirs
            a_dir = action_dirs[(a + int(flipped[i])) % N_ACTIONS]
            clips = rng.standard_normal((3, DIM)) + clip_leak * private + 2.5 * signal[i] * a_dir
            record = VideoRecord(key=f"c{a}/v{i:03d}.avi", clip_features=clips,
                                 clip_ranges=np.array([[0, 15], [16, 31], [32, 47]]))
            if static:
                record.static_features = rng.standard_normal((2, DIM)) + static_leak * private
                record.static_frames = np.array([0, 40])
            store.write_video(record)
    return path


def write_labels(path, attributes, actions, split=None, extra=None):
    split = split if split is not None else ["train" if i % 2 else "test" for i in range(len(actions))]
    header = ["video", "split", "action", *ATTRIBUTES, *(extra or {})]
    lines = [",".join(header)]
    for i, (y, a) in enumerate(zip(attributes, actions)):
        cells = [f"c{a}/v{i:03d}.avi", split[i], f"act{a}", *map(str, y), *(v[i] for v in (extra or {}).values())]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    attributes = rng.integers(0, 2, (N_VIDEOS, len(ATTRIBUTES)))
    actions = rng.integers(0, N_ACTIONS, N_VIDEOS)
    return {
        "root": root,
        "attributes": attributes,
        "actions": actions,
        "labels": write_labels(root / "labels.csv", attributes, actions),
        "raw": make_store(root / "raw.h5", attributes, actions),
        # static clips scrambled, clip features still leaking: the clip attacker must expose it
        "anon": make_store(root / "anon.h5", attributes, actions, clip_leak=0.6, static_leak=0.0, seed=1),
        "nostatic": make_store(root / "nostatic.h5", attributes, actions, static=False, seed=2),
    }


@pytest.fixture(scope="module")
def report(data):
    return audit_stores([data["anon"], data["nostatic"]], data["labels"], baseline=data["raw"], **FAST)


def test_leaking_store_is_exposed_by_both_attackers(report, data):
    raw = report.stores[0]
    assert raw.is_baseline and raw.path == str(data["raw"])
    assert raw.static.cmap > 0.9 and raw.clip.cmap > 0.9
    assert raw.headline.cmap == max(raw.static.cmap, raw.clip.cmap)
    assert raw.utility["action"]["top1"] > 0.8
    assert abs(raw.headline.chance_cmap - data["attributes"][::2].mean()) < 1e-9  # test = even rows


def test_clip_attacker_catches_leak_hidden_from_static_clips(report):
    anon = report.stores[1]
    assert abs(anon.static.cmap - anon.static.chance_cmap) < 0.1
    assert anon.clip.cmap > anon.static.cmap + 0.1
    assert anon.headline is anon.clip
    assert report_json(report)["stores"][anon.path]["privacy"]["cmap"] == anon.clip.cmap


def test_comparison_with_baseline_follows_the_formulas(report):
    base, anon = report.stores[0], report.stores[1]
    b, c, chance = base.headline.cmap, anon.headline.cmap, base.headline.chance_cmap
    assert anon.leakage_reduction == pytest.approx((b - c) / b)
    assert anon.leakage_removed == pytest.approx((b - c) / (b - chance))
    assert 0 < anon.leakage_removed < 1
    assert anon.utility_drop == pytest.approx(base.utility["action"]["top1"] - anon.utility["action"]["top1"])
    assert base.leakage_reduction is None and base.leakage_removed is None and base.utility_drop is None


def test_store_without_static_features(report):
    nostatic = report.stores[2]
    assert nostatic.static is None and nostatic.headline is nostatic.clip
    entry = report_json(report)["stores"][nostatic.path]
    assert entry["privacy"]["static"] is None and entry["privacy"]["cmap"] == nostatic.clip.cmap


def test_json_keys_and_rates(report, data, tmp_path):
    doc = json.loads(write_json(report, tmp_path / "out" / "audit.json").read_text())
    assert set(doc) == {"stores", "baseline", "split"} and doc["baseline"] == report.baseline
    assert doc["split"] == {"derived": False, "split_seed": None, "stratified_on": None,
                            "counts": {"train": N_VIDEOS // 2, "attacker": 0, "test": N_VIDEOS // 2}}
    attack_keys = {"cmap", "cmap_std", "f1", "per_attribute"}
    results = {store.path: store for store in report.stores}
    for path, entry in doc["stores"].items():
        assert set(entry) == {"privacy", "utility", "leakage_reduction", "leakage_removed", "utility_drop", "bias",
                              "attacker_split", "optimistic", "test_seen_by_anonymizer"}
        # two-valued labels: fit on train; raw stores have no anonymizer, so nothing is optimistic or seen
        assert entry["attacker_split"] == "train" and entry["optimistic"] is False
        assert entry["test_seen_by_anonymizer"] == 0
        privacy, result = entry["privacy"], results[path]
        assert set(privacy) == {"cmap", "cmap_std", "f1", "chance_cmap", "static", "clip"}
        assert privacy["cmap"] == result.headline.cmap and privacy["f1"] == result.headline.f1
        for attack, attacker in ((privacy["static"], result.static), (privacy["clip"], result.clip)):
            if attack is None:
                assert attacker is None
                continue
            assert set(attack) == attack_keys
            assert set(attack["per_attribute"]) == set(ATTRIBUTES)
            for values in attack["per_attribute"].values():
                assert set(values) == {"ap", "f1", "chance_ap"}
                assert 0 < values["chance_ap"] < 1
            # every attribute has both classes in the test split: cMAP is the mean of their APs
            assert attack["cmap"] == pytest.approx(np.mean([v["ap"] for v in attack["per_attribute"].values()]))
            assert attack["cmap"] == attacker.cmap and attack["f1"] == attacker.f1
        assert set(entry["utility"]) == {"action"}
        assert set(entry["utility"]["action"]) == {"top1", "top1_std"}
        assert entry["utility"]["action"]["top1"] == result.utility["action"]["top1"]
        # the test split is the even rows for every store: chance is their positive rate
        assert privacy["chance_cmap"] == pytest.approx(data["attributes"][::2].mean())
        assert entry["bias"] is None


def test_table_and_plot(report, tmp_path):
    from rich.console import Console

    console = Console(width=220, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert "(baseline)" in text and "raw.h5" in text and "anon.h5" in text
    png = plot(report, tmp_path / "audit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_plot_marks_each_attributes_chance_level(report, data):
    """The per-attribute bars carry one dashed mark per (store, attribute) at the attribute's positive
    rate among the test videos (the AP of a constant score)."""
    import matplotlib.pyplot as plt

    positive_rate = data["attributes"][::2].mean(axis=0)  # test = even rows, as every store matches all videos
    for result in report.stores:
        for j, name in enumerate(ATTRIBUTES):
            assert result.headline.per_attribute[name]["chance_ap"] == pytest.approx(positive_rate[j])
    fig = audit_figure(report)
    try:
        bars = fig.axes[1]
        marks = [c for c in bars.collections if c.get_gid() == "chance"]
        assert len(marks) == 1 and marks[0].get_label() == "chance (positive rate)"
        segments = marks[0].get_segments()
        assert len(segments) == len(report.stores) * len(ATTRIBUTES)
        heights = sorted(round(float(seg[0][1]), 9) for seg in segments)
        expected = sorted(round(float(v), 9) for v in np.tile(positive_rate, len(report.stores)))
        assert heights == expected and all(seg[0][1] == seg[1][1] for seg in segments)  # flat marks
        bar_centres = sorted(round(p.get_x() + p.get_width() / 2, 9) for p in bars.patches)
        assert sorted(round(float(seg[:, 0].mean()), 9) for seg in segments) == bar_centres  # one over each bar
    finally:
        plt.close(fig)


def test_shuffled_labels_give_chance(data, tmp_path):
    rng = np.random.default_rng(5)
    shuffled = data["attributes"][rng.permutation(N_VIDEOS)]
    labels = write_labels(tmp_path / "shuffled.csv", shuffled, data["actions"])
    result = audit_stores([data["raw"]], labels, **FAST).stores[0]
    for attack in (result.static, result.clip):
        assert abs(attack.cmap - attack.chance_cmap) < 0.1, (attack.cmap, attack.chance_cmap)


def test_seeded_runs_repeat(data):
    options = AuditOptions(seeds=1, epochs=10, device="cpu", attacker="linear")
    first = report_json(audit_stores([data["anon"]], data["labels"], options=options))
    again = report_json(audit_stores([data["anon"]], data["labels"], options=options))
    assert first == again


def test_bias_gap(data, tmp_path):
    """Actions are visible in the features of group "a" only: its accuracy is high, group "b"'s near chance."""
    group = np.where(np.arange(N_VIDEOS) % 4 < 2, "a", "b")
    store = make_store(tmp_path / "bias.h5", data["attributes"], data["actions"],
                       action_signal=(group == "a").astype(float), seed=3)
    labels = write_labels(tmp_path / "bias.csv", data["attributes"], data["actions"], extra={"group": group})
    result = audit_stores([store], labels, bias_attribute="group", seeds=1, epochs=40, device="cpu").stores[0]
    bias = result.bias
    assert bias["attribute"] == "group" and bias["task"] == "action" and set(bias["groups"]) == {"a", "b"}
    assert bias["groups"]["a"]["n"] == bias["groups"]["b"]["n"] == N_VIDEOS // 4
    assert bias["gap"] == pytest.approx(bias["groups"]["a"]["top1"] - bias["groups"]["b"]["top1"])
    assert bias["gap"] > 0.3


def test_user_errors(data, tmp_path):
    with pytest.raises(AnonfeatError, match="nudity"):
        audit_stores([data["raw"]], data["labels"], attributes=["nudity"], seeds=1, epochs=1, device="cpu")
    other = tmp_path / "other.csv"
    other.write_text("video,split,action,face\nzz/a.avi,train,run,1\nzz/b.avi,test,run,0\n")
    with pytest.raises(AnonfeatError, match="none of its .* videos matches"):
        audit_stores([data["raw"]], other, seeds=1, epochs=1, device="cpu")
    with pytest.raises(AnonfeatError, match="--attacker"):
        audit_stores([data["raw"]], data["labels"], attacker="svm")


# -- CLI --------------------------------------------------------------------------------------
def test_class_name_columns_are_named_not_silently_dropped(data, tmp_path):
    """A column of words (say a gender column never binarized) is no default attribute, and the audit
    says so instead of reporting the other attributes as if it had looked at it."""
    words = ["dark" if a else "light" for a in data["attributes"][:, 0]]
    labels = write_labels(tmp_path / "l.csv", data["attributes"], data["actions"], extra={"skin_tone": words})
    report = audit_stores([], labels, baseline=data["raw"], seeds=1, epochs=5, device="cpu")
    assert report.labels.class_columns == ["skin_tone"] and "skin_tone" not in report.attributes
    assert report.attributes == list(ATTRIBUTES)
    assert any("skin_tone" in note and "--task" in note for note in report.warnings)
    named = audit_stores([], labels, baseline=data["raw"], seeds=1, epochs=5, device="cpu",
                         attributes=list(ATTRIBUTES))  # attributes chosen by name: nothing to say
    assert not any("skin_tone" in note for note in named.warnings)


def test_cli_audit(data, tmp_path):
    from typer.testing import CliRunner

    from anonfeat.cli import app

    out_json, out_png = tmp_path / "a.json", tmp_path / "a.png"
    result = CliRunner().invoke(app, [
        "audit", str(data["anon"]), "--labels", str(data["labels"]), "--baseline", str(data["raw"]),
        "--json", str(out_json), "--plot", str(out_png), "--attacker", "linear", "--seeds", "1",
        "--epochs", "5", "--device", "cpu", "--attributes", "face,gender", "--task", "action",
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "videos matched" in result.output and "(baseline)" in result.output
    doc = json.loads(out_json.read_text())
    assert set(doc["stores"]) == {str(data["raw"]), str(data["anon"])}
    assert set(doc["stores"][str(data["anon"])]["privacy"]["clip"]["per_attribute"]) == {"face", "gender"}
    assert out_png.stat().st_size > 0


def test_cli_user_error_is_one_line(data, monkeypatch, capsys):
    from anonfeat.cli.app import main

    monkeypatch.setattr(sys, "argv", ["anonfeat", "audit", str(data["raw"]), "--labels", str(data["labels"]),
                                      "--attributes", "nudity", "--device", "cpu"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nudity" in err and "labels.csv" in err and len(err.splitlines()) <= 2


def test_single_class_attribute_is_reported_and_left_out(data, tmp_path):
    always = np.ones((N_VIDEOS, 1), dtype=int)
    always[1::2] = np.arange(N_VIDEOS // 2)[:, None] % 2  # both classes in train, one (1) in test
    labels = tmp_path / "one.csv"
    text = write_labels(tmp_path / "base.csv", data["attributes"], data["actions"]).read_text().splitlines()
    labels.write_text("\n".join([text[0] + ",constant", *(f"{line},{v[0]}" for line, v in zip(text[1:], always))]))
    report = audit_stores([data["raw"]], labels, seeds=1, epochs=5, device="cpu")
    clip = report.stores[0].clip
    assert clip.excluded == ["constant"] and clip.per_attribute["constant"] == {"ap": None, "f1": None, "chance_ap": None}
    assert any("constant" in note for note in report.warnings)
    assert clip.chance_cmap == pytest.approx(data["attributes"][::2].mean())  # the mean leaves it out


def test_vp_pickle_labels_match_store_by_path_without_extension(data, tmp_path):
    import pickle

    rng = np.random.default_rng(1)
    five = np.concatenate([data["attributes"], rng.integers(0, 2, (N_VIDEOS, 2))], axis=1)
    vp = {f"c{a}/v{i:03d}.mp4": five[i][None].astype(np.int64) for i, a in enumerate(data["actions"])}
    path = tmp_path / "vp_labels.pkl"
    path.write_bytes(pickle.dumps(vp))
    report = audit_stores([data["raw"]], path, seeds=1, epochs=20, device="cpu")
    result = report.stores[0]
    assert len(result.match.pairs) == N_VIDEOS and result.match.unmatched_store == 0
    assert report.labels.split_generated and report.attributes[:3] == ["face", "skin_color", "gender"]
    assert result.clip.per_attribute["face"]["ap"] > 0.9  # first store attribute leaks as "face"


# -- the three-way protocol: who fits the attackers, who saw what ---------------------------------
def three_way(n: int) -> list[str]:
    return [("train", "train", "attacker", "test")[i % 4] for i in range(n)]


def video_ids(actions, rows, suffix=".avi") -> list[str]:
    return [f"c{actions[i]}/v{i:03d}{suffix}" for i in rows]


def test_attackers_and_probes_fit_on_the_attacker_split(data, tmp_path):
    """The train rows of this store carry every signal reversed: fit there, attackers and probes fail
    on test; fit on the attacker rows, they succeed. So the figures show which rows they were fit on."""
    split = three_way(N_VIDEOS)
    on_train = np.array([s == "train" for s in split])
    store = make_store(tmp_path / "flip.h5", data["attributes"], data["actions"], flipped=on_train, seed=4)
    three = write_labels(tmp_path / "three.csv", data["attributes"], data["actions"], split=split)
    report = audit_stores([store], three, **FAST)
    honest = report.stores[0]
    assert honest.attacker_split == "attacker" and not honest.optimistic
    assert honest.clip.cmap > 0.9 and honest.static.cmap > 0.9 and honest.utility["action"]["top1"] > 0.8
    entry = report_json(report)["stores"][str(store)]
    assert entry["attacker_split"] == "attacker" and entry["optimistic"] is False
    assert report_json(report)["split"]["counts"] == {"train": 80, "attacker": 40, "test": 40}
    # the same rows with the attacker videos labelled train (an old two-valued file): fit on train
    two = write_labels(tmp_path / "two.csv", data["attributes"], data["actions"],
                       split=["train" if s == "attacker" else s for s in split])
    fallback = audit_stores([store], two, **FAST).stores[0]
    assert fallback.attacker_split == "train"
    assert fallback.clip.cmap < honest.clip.cmap - 0.3
    assert fallback.utility["action"]["top1"] < honest.utility["action"]["top1"] - 0.3


def test_anonymized_store_fit_on_train_is_marked_optimistic(data, tmp_path):
    train_ids = video_ids(data["actions"], range(1, N_VIDEOS, 2))  # the two-valued labels' train rows
    store = make_store(tmp_path / "san.h5", data["attributes"], data["actions"], seed=5, features="sanitized",
                       anonymizer_videos=tuple(train_ids))
    old = make_store(tmp_path / "old.h5", data["attributes"], data["actions"], seed=6, features="sanitized")
    report = audit_stores([store, old], data["labels"], baseline=data["raw"], seeds=1, epochs=5, device="cpu")
    raw, result, unknown = report.stores
    assert result.attacker_split == "train" and result.optimistic and not raw.optimistic
    assert result.test_seen_by_anonymizer == 0 and unknown.test_seen_by_anonymizer is None
    doc = report_json(report)["stores"]
    assert doc[str(store)]["optimistic"] is True and doc[str(data["raw"])]["optimistic"] is False
    assert doc[str(old)]["test_seen_by_anonymizer"] is None  # made before anonymizers recorded their videos
    assert any(str(store) in note and "optimistic" in note for note in report.warnings)
    assert any(str(old) in note and "unknown" in note for note in report.warnings)
    from rich.console import Console

    console = Console(width=260, record=True)
    console.print(render_table(report))
    assert "train (optimistic)" in console.export_text()


def test_audit_refuses_a_store_whose_anonymizer_saw_test_videos(data, tmp_path, monkeypatch, capsys):
    from anonfeat.audit import runner
    from anonfeat.cli.app import main

    seen = video_ids(data["actions"], range(N_VIDEOS), suffix=".mp4")  # every video, under another extension
    store = make_store(tmp_path / "seen.h5", data["attributes"], data["actions"], seed=7, features="sanitized",
                       anonymizer_videos=tuple(seen))
    n_test = N_VIDEOS // 2

    def no_attack(*args, **kwargs):
        raise AssertionError("an attacker ran before the refusal")

    monkeypatch.setattr(runner, "audit_store", no_attack)
    args = ["anonfeat", "audit", str(store), "--labels", str(data["labels"]), "--device", "cpu", "--seeds", "1",
            "--epochs", "5", "-q"]  # -q: stderr holds errors only (no split summary line)
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(store) in err.replace("\n", "")
    assert f"{n_test} of the {n_test} test videos" in err and "re-train" in err and "--allow-seen" in err
    monkeypatch.undo()
    out = tmp_path / "seen.json"
    monkeypatch.setattr(sys, "argv", [*args[:-1], "--allow-seen", "--json", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    entry = json.loads(out.read_text())["stores"][str(store)]
    assert entry["test_seen_by_anonymizer"] == n_test and entry["attacker_split"] == "train"
    assert "flatter" in capsys.readouterr().err  # notes go to stderr with the status lines
    # the API refuses the same way, and a record of train videos only passes
    with pytest.raises(AnonfeatError, match="--allow-seen"):
        audit_stores([store], data["labels"], seeds=1, epochs=1, device="cpu")
