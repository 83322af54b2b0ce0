"""The Anonymizing Adapter: identity at init, batch independence, losses, training, sanitizing."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from anonfeat.adapter.io import load_adapter, save_adapter
from anonfeat.adapter.model import AnonymizingAdapter, sanitize_features
from anonfeat.adapter.sanitize import adapter_transform, sanitize_store
from anonfeat.adapter.train import AdapterTrainOptions, train_adapter
from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.nn.losses import attribute_correlation, grl_weight, nt_xent, reverse_gradient
from anonfeat.store import FeatureStore
from anonfeat.synth import make_benchmark


def randomized(adapter: AnonymizingAdapter) -> AnonymizingAdapter:
    torch.manual_seed(1)
    for block in adapter.blocks:
        for p in block.parameters():
            p.data.normal_(0, 0.2)
    return adapter


def test_adapter_is_exactly_identity_at_init():
    adapter = AnonymizingAdapter(64, depth=3, num_heads=8)
    adapter.set_statistics(torch.full((64,), 0.5), torch.full((64,), 2.0))
    x = torch.randn(3, 7, 64) * 5
    assert torch.equal(sanitize_features(adapter, x), x)


def test_video_alone_equals_video_in_a_padded_batch():
    adapter = randomized(AnonymizingAdapter(32, depth=2, num_heads=4))
    video = torch.randn(5, 32)
    others = [torch.randn(9, 32), torch.randn(1, 32)]
    alone = sanitize_features(adapter, video)
    for batch in ([others[0], video, others[1]], [video, others[1]]):
        inside = sanitize_features(adapter, batch)[[id(b) for b in batch].index(id(video))]
        torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, video)  # the randomized adapter really changes features


def test_static_clips_are_sanitized_each_alone():
    adapter = randomized(AnonymizingAdapter(16, depth=1, num_heads=2))
    statics = torch.randn(4, 16)
    together = sanitize_features(adapter, statics, static=True)
    for i in range(4):
        torch.testing.assert_close(together[i], sanitize_features(adapter, statics[i:i + 1])[0], atol=1e-6, rtol=0)


def test_nt_xent_is_low_for_recognizable_pairs_and_reverse_gradient_flips():
    a = torch.randn(16, 8)
    assert nt_xent(a, a + 0.01 * torch.randn_like(a)) < nt_xent(a, torch.randn(16, 8)) - 1
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    assert grl_weight(0.0) == 0.0 and 0.99 < grl_weight(1.0) < 1.0


def test_attribute_correlation_sees_linear_leakage_only():
    torch.manual_seed(0)
    y = (torch.rand(2000, 2) > 0.5).float()
    noise = torch.randn(2000, 16)
    leaky = noise.clone()
    leaky[:, 3] = y[:, 0] * 2 + 0.1 * noise[:, 3]  # one dimension carries attribute 0
    assert attribute_correlation(leaky, y) > 0.45  # ~1 for attribute 0, ~0 for attribute 1, averaged
    assert attribute_correlation(noise, y) < 0.02  # ~D/n for independent features
    # scale-free: shrinking the features does not lower it
    torch.testing.assert_close(attribute_correlation(leaky * 0.1, y), attribute_correlation(leaky, y), rtol=1e-4, atol=1e-5)
    # an attribute with one value among the rows contributes nothing
    constant = torch.cat([y[:, :1], torch.ones(2000, 1)], dim=1)
    torch.testing.assert_close(attribute_correlation(leaky, constant), attribute_correlation(leaky, y[:, :1]) / 2)
    # descending it removes the leaking direction
    z = leaky.clone()
    for _ in range(20):
        z.requires_grad_(True)
        grad, = torch.autograd.grad(attribute_correlation(z, y), z)
        z = (z - 0.02 * grad / grad.norm() * z.norm()).detach()
    assert attribute_correlation(z, y) < 0.5 * attribute_correlation(leaky, y)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A small synth benchmark extracted for real: raw store with static clips, and its labels."""
    root = tmp_path_factory.mktemp("adapter")
    labels = make_benchmark(root / "bench", n_videos=20, size=(64, 64), n_frames=24, seed=3)
    opts = ExtractOptions(encoder="videomae-tiny", random_init=True, frame_stride=1, clip_stride=4, static_clips=2,
                          workers=0, device="cpu", dtype="float32", progress=False, batch_size=16)
    raw = root / "raw.h5"
    assert extract(root / "bench" / "videos", raw, opts).exit_code == 0
    return root, labels, raw, opts


def quick(**kw) -> AdapterTrainOptions:
    base = dict(epochs=3, warmup_epochs=1, batch_size=4, device="cpu", progress=False, heads=4, depth=2)
    base.update(kw)
    return AdapterTrainOptions(**base)


@pytest.fixture(scope="module")
def quick_adapter(bench):
    """One adapter trained with `quick()` on the bench, shared by the tests that only read or apply it."""
    root, labels, raw, _ = bench
    return train_adapter(raw, labels, root / "a.safetensors", quick())


def test_train_adapter_writes_a_self_describing_file(bench, quick_adapter):
    root, labels, raw, _ = bench
    report = quick_adapter
    n_train = sum(line.split(",")[1] == "train" for line in labels.read_text().splitlines()[1:])
    assert report.train_videos + report.val_videos == n_train < 20  # the train split only
    assert report.val_videos >= 2
    loaded = load_adapter(report.adapter)
    cfg = loaded.config
    assert cfg["encoder"]["name"] == "videomae-tiny" and cfg["dim"] == 192
    assert cfg["training"]["w_lc"] == 1.0 and cfg["training"]["privacy_loss"] == "ntxent"
    assert set(cfg["metrics"]) >= {"train_top1", "val_top1", "privacy_probe"}
    assert set(report.history[-1]) >= {"lc", "task", "ntxent"}
    # the adapter moved away from the identity
    x = torch.randn(3, 192)
    assert not torch.allclose(sanitize_features(loaded.model, x), x)


def test_train_adapter_needs_no_attribute_columns_for_the_self_supervised_loss(bench, tmp_path):
    root, labels, raw, _ = bench
    plain = tmp_path / "labels.csv"
    plain.write_text("".join(",".join(line.split(",")[:3]) + "\n" for line in labels.read_text().splitlines()))
    report = train_adapter(raw, plain, tmp_path / "a.safetensors", quick(epochs=1))
    assert report.train_videos > 0 and report.val_videos > 0
    assert report.metrics["privacy_probe"] == {}  # no attribute columns: nothing for the probe to attack
    assert set(report.history[-1]) >= {"lc", "task", "ntxent"}  # trained with the self-supervised loss
    with pytest.raises(AnonfeatError, match="no private attribute"):
        train_adapter(raw, plain, tmp_path / "b.safetensors", quick(epochs=1, privacy_loss="attributes"))


def test_training_is_deterministic_for_a_seed(bench):
    root, labels, raw, _ = bench
    a = load_adapter(train_adapter(raw, labels, root / "s1.safetensors", quick(seed=5)).adapter).model.state_dict()
    b = load_adapter(train_adapter(raw, labels, root / "s2.safetensors", quick(seed=5)).adapter).model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_supervised_privacy_loss_runs(bench):
    root, labels, raw, _ = bench
    report = train_adapter(raw, labels, root / "attr.safetensors", quick(privacy_loss="both", attr_loss="grl"))
    assert "attr" in report.history[-1]
    report = train_adapter(raw, labels, root / "dec.safetensors", quick(privacy_loss="attributes",
                                                                          attr_loss="decorrelate"))
    assert "attr" in report.history[-1] and "ntxent" in report.history[-1]
    assert load_adapter(report.adapter).config["training"]["attr_loss"] == "decorrelate"
    with pytest.raises(AnonfeatError, match="--attr-loss"):
        AdapterTrainOptions(attr_loss="nope").validate()


def test_sanitize_and_extract_with_adapter_agree_and_leak_no_raw_features(bench, quick_adapter):
    root, labels, raw, opts = bench
    adapter = quick_adapter.adapter
    sanitized = root / "sanitized.h5"
    sanitize_store(raw, adapter, sanitized, progress=False)
    direct = root / "direct.h5"
    assert extract(root / "bench" / "videos", direct, opts, transform=adapter_transform(adapter)).exit_code == 0
    with FeatureStore(raw) as r, FeatureStore(sanitized) as s, FeatureStore(direct) as d:
        assert s.header.features == "sanitized" and s.header.adapter_sha256 == load_adapter(adapter).sha256
        assert d.header.to_attrs() == s.header.to_attrs()
        assert s.videos() == r.videos() == d.videos()
        for key in r.videos():
            np.testing.assert_allclose(s.clip_features(key), d.clip_features(key), atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(s.static_features(key), d.static_features(key), atol=1e-4, rtol=1e-4)
            assert not np.allclose(s.clip_features(key), r.clip_features(key), atol=1e-3)
            assert not np.allclose(s.static_features(key), r.static_features(key), atol=1e-3)
    with h5py.File(sanitized) as f:  # no dataset of the sanitized store equals a raw one
        raw_file = h5py.File(raw)
        def check(name, obj):
            if isinstance(obj, h5py.Dataset) and "features" in name:
                assert not np.array_equal(obj[()], raw_file[name][()]), name
        f.visititems(check)
        raw_file.close()


def test_sanitize_refuses_the_raw_path_and_foreign_stores(bench, quick_adapter, tmp_path):
    root, labels, raw, opts = bench
    adapter = quick_adapter.adapter
    with pytest.raises(AnonfeatError, match="raw store itself"):
        sanitize_store(raw, adapter, raw, progress=False)
    other = tmp_path / "other.h5"  # features of another encoder (different weights)
    from anonfeat.encoders import CheckpointIdentity, get_config
    from anonfeat.encoders.families import family_of

    cfg = get_config("videomae-tiny")
    enc = family_of(cfg).build(cfg, seed=1, checkpoint=CheckpointIdentity("another-checkpoint", "test"))
    extract(root / "bench" / "videos", other, opts, encoder=enc)
    with pytest.raises(AnonfeatError, match="do not fit adapter"):
        sanitize_store(other, adapter, tmp_path / "x.h5", progress=False)
    with pytest.raises(AnonfeatError, match="do not fit adapter"):
        extract(root / "bench" / "videos", tmp_path / "y.h5", opts, encoder=enc, transform=adapter_transform(adapter))


def test_store_without_static_clips_is_refused(bench, tmp_path):
    root, labels, raw, opts = bench
    no_static = tmp_path / "nostatic.h5"
    extract(root / "bench" / "videos", no_static, ExtractOptions(**{**opts.__dict__, "static_clips": 0}))
    with pytest.raises(AnonfeatError, match="--static-clips"):
        train_adapter(no_static, labels, tmp_path / "n.safetensors", quick())


def test_adapter_file_with_wrong_shapes_is_refused(tmp_path):
    from safetensors.torch import save_file

    good = save_adapter(AnonymizingAdapter(16, 1, 2), tmp_path / "good.safetensors", {"encoder": {}})
    meta = {"anonfeat_adapter": json.dumps({"dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0})}
    state = AnonymizingAdapter(16, 1, 2).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"), metadata=meta)
    assert load_adapter(good).config["dim"] == 16
    with pytest.raises(AnonfeatError, match=r"do not fit its config: .*qkv.weight \(48, 16\) vs \(96, 32\)"):
        load_adapter(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AnonfeatError, match="not a readable adapter"):
        load_adapter(tmp_path / "junk.safetensors")


@pytest.mark.integration
def test_cli_train_adapter_and_sanitize(bench, tmp_path):
    root, labels, raw, _ = bench
    adapter = tmp_path / "cli.safetensors"
    run = lambda *a: subprocess.run([sys.executable, "-m", "anonfeat", *a], capture_output=True, text=True, timeout=300)
    proc = run("train-adapter", str(raw), "--labels", str(labels), "--out", str(adapter), "--epochs", "2",
               "--warmup-epochs", "1", "--batch-size", "4", "--heads", "4", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "utility top-1" in proc.stdout and adapter.is_file()
    proc = run("sanitize", str(raw), "--adapter", str(adapter), "--out", str(raw), "--no-progress")
    assert proc.returncode == 2 and "raw store itself" in proc.stderr
    proc = run("sanitize", str(raw), "--adapter", str(adapter), "--out", str(tmp_path / "s.h5"), "--no-progress")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.integration
def test_pipeline_on_decoded_video_ends_in_an_audit(bench, tmp_path):
    """extract -> train-adapter -> sanitize -> audit, on real decoded videos, through the CLI's JSON."""
    root, labels, raw, _ = bench
    adapter = train_adapter(raw, labels, tmp_path / "p.safetensors", quick()).adapter
    sanitized = tmp_path / "p.h5"
    sanitize_store(raw, adapter, sanitized, progress=False)
    out = tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, "-m", "anonfeat", "audit", str(sanitized), "--baseline", str(raw),
                           "--labels", str(labels), "--seeds", "1", "--epochs", "5", "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stores = json.loads(out.read_text())["stores"]
    result = stores[str(sanitized)]
    assert {"privacy", "utility", "leakage_reduction", "leakage_removed", "utility_drop"} <= set(result)
    base = stores[str(raw)]
    b, c, chance = base["privacy"]["cmap"], result["privacy"]["cmap"], base["privacy"]["chance_cmap"]
    assert result["leakage_removed"] == pytest.approx((b - c) / (b - chance))  # the documented formula
    assert result["utility_drop"] == pytest.approx(base["utility"]["action"]["top1"]
                                                   - result["utility"]["action"]["top1"])
    assert c == max(result["privacy"]["static"]["cmap"], result["privacy"]["clip"]["cmap"])  # the worse attacker


@pytest.mark.slow
def test_demo_encoder_leaks_attributes_and_sees_motion(tmp_path):
    """The bundled videomae-demo encoder makes the demo meaningful: above-chance leakage and action."""
    from anonfeat.audit import audit_stores

    labels = make_benchmark(tmp_path / "bench", n_videos=160, size=(128, 128), n_frames=48, seed=7)
    raw = tmp_path / "raw.h5"
    opts = ExtractOptions(encoder="videomae-demo", frame_stride=2, clip_stride=8, static_clips=4, workers=1,
                          device="cpu", progress=False, batch_size=32)
    assert extract(tmp_path / "bench" / "videos", raw, opts).exit_code == 0
    report = audit_stores([raw], labels, seeds=1, device="cpu")
    store = report.stores[0]
    assert store.headline.cmap > store.headline.chance_cmap + 0.05
    assert store.utility["action"]["top1"] > 0.35  # 5 classes: chance is 0.2


# -- the split: train rows only, recorded, checked by the audit ------------------------------------
def without_split_column(labels, path):
    path.write_text("".join(",".join(c for j, c in enumerate(line.split(",")) if j != 1) + "\n"
                            for line in labels.read_text().splitlines()))
    return path


def test_without_split_column_the_adapter_never_trains_on_a_test_video(bench, tmp_path):
    """Labels without a split column: train-adapter reads the derived train rows only and records them;
    sanitize copies the record; the audit, deriving the same split, finds no test video in it, and
    refuses when another --split-seed would test on the adapter's training videos."""
    from anonfeat.audit import audit_stores, report_json
    from anonfeat.labels import load_labels

    root, labels, raw, _ = bench
    plain = without_split_column(labels, tmp_path / "plain.csv")
    derived = load_labels(plain, split_seed=0)
    assert derived.split_generated and set(derived.split) == {"train", "attacker", "test"}
    report = train_adapter(raw, plain, tmp_path / "a.safetensors", quick(epochs=1))
    recorded = load_adapter(report.adapter).config["training_videos"]
    train_ids = [v for v, s in zip(derived.videos, derived.split) if s == "train"]
    assert sorted(recorded) == sorted(train_ids) and report.train_videos + report.val_videos == len(train_ids)
    assert not set(recorded) & {v for v, s in zip(derived.videos, derived.split) if s != "train"}
    sanitized = tmp_path / "s.h5"
    sanitize_store(raw, report.adapter, sanitized, progress=False)
    with FeatureStore(sanitized) as store:
        assert sorted(store.header.anonymizer_videos) == sorted(recorded)
    audit = audit_stores([sanitized], plain, baseline=raw, seeds=1, epochs=3, device="cpu")
    entry = report_json(audit)["stores"][str(sanitized)]
    assert entry["test_seen_by_anonymizer"] == 0 and entry["attacker_split"] == "attacker"
    assert report_json(audit)["stores"][str(raw)]["test_seen_by_anonymizer"] == 0
    other = load_labels(plain, split_seed=1)
    overlap = sum(s == "test" and v in recorded for v, s in zip(other.videos, other.split))
    assert overlap > 0
    with pytest.raises(AnonfeatError, match=f"trained on {overlap} of the .* --allow-seen"):
        audit_stores([sanitized], plain, split_seed=1, seeds=1, epochs=3, device="cpu")


# -- LEACE -----------------------------------------------------------------------------------------
def planted_store(path, labels_path, n_videos=400, dim=32, seed=0):
    """Raw store whose clip and static features carry the attribute 'face' along one direction (the
    attribute 'gender' along another, weaker) and the action along others; labels without a split column."""
    from anonfeat.encoders.config import EncoderConfig
    from anonfeat.store import StoreHeader, VideoRecord

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T
    face, gender, actions = rng.integers(0, 2, n_videos), rng.integers(0, 2, n_videos), rng.integers(0, 3, n_videos)
    header = StoreHeader(encoder="planted", encoder_config=EncoderConfig(name="planted", embed_dim=dim),
                         checkpoint_sha256="1" * 64, sampling={"static_clips": 2}, dim=dim, dtype="float32")
    with FeatureStore(path, "a") as store:
        store.initialize(header)
        for i in range(n_videos):
            private = 1.5 * (2 * face[i] - 1) * basis[0] + 0.8 * (2 * gender[i] - 1) * basis[1]
            clips = rng.standard_normal((3, dim)) + 3.0 + private + 2.5 * basis[4 + actions[i]]
            statics = rng.standard_normal((2, dim)) + 3.0 + private
            store.write_video(VideoRecord(key=f"v{i:04d}.mp4", clip_features=clips,
                                          clip_ranges=np.array([[0, 7], [8, 15], [16, 23]]), static_features=statics,
                                          static_frames=np.array([0, 12]),
                                          attrs={"fps": 24.0, "n_frames": 24, "height": 8, "width": 8, "source": "x"}))
    labels_path.write_text("video,action,face,gender\n" + "".join(
        f"v{i:04d}.mp4,a{actions[i]},{face[i]},{gender[i]}\n" for i in range(n_videos)))
    return path, labels_path


def test_leace_makes_a_linearly_planted_attribute_undetectable(tmp_path):
    from anonfeat.adapter.leace import LinearEraser
    from anonfeat.audit import audit_stores

    raw, labels = planted_store(tmp_path / "raw.h5", tmp_path / "labels.csv")
    report = train_adapter(raw, labels, tmp_path / "leace.safetensors", quick(method="leace", privacy_loss="ntxent"))
    loaded = load_adapter(report.adapter)
    assert isinstance(loaded.model, LinearEraser) and loaded.config["kind"] == "leace"
    assert loaded.model.rank == 2 and report.metrics["leace"]["rows"] == report.train_videos * 5
    assert report.train_videos == 200  # the derived train split, half of 400
    sanitized = tmp_path / "leace.h5"
    sanitize_store(raw, report.adapter, sanitized, progress=False)
    audit = audit_stores([sanitized], labels, baseline=raw, attacker="linear", seeds=1, epochs=30, device="cpu")
    base, erased = audit.stores
    assert erased.attacker_split == "attacker" and erased.test_seen_by_anonymizer == 0
    for attack in (base.clip, base.static):  # a linear probe finds the attribute in raw features
        assert attack.per_attribute["face"]["ap"] > 0.95
    for attack in (erased.clip, erased.static):  # and nothing after LEACE, on videos it was not fit on
        # (AP of a useless score on 100 test videos scatters by a few points around the positive rate)
        assert attack.cmap == pytest.approx(attack.chance_cmap, abs=0.1), (attack.cmap, attack.chance_cmap)
    assert erased.leakage_removed > 0.85
    assert erased.utility["action"]["top1"] > 0.9  # the action, uncorrelated with the attributes, stays


def test_leace_adapter_applies_like_any_adapter_on_decoded_video(bench, tmp_path):
    """train-adapter --method leace (CLI) on real extracted features; sanitize and extract --adapter
    write the same features and the record of its training videos; bad files are refused."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from anonfeat.cli import app

    root, labels, raw, opts = bench
    out = tmp_path / "leace.safetensors"
    result = CliRunner().invoke(app, ["train-adapter", str(raw), "--labels", str(labels), "--out", str(out),
                                      "--method", "leace", "--attributes", "dark_skin,hat", "--device", "cpu",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "LEACE eraser of rank 2" in result.output
    loaded = load_adapter(out)
    n_train = sum(line.split(",")[1] == "train" for line in labels.read_text().splitlines()[1:])
    assert len(loaded.config["training_videos"]) == n_train and loaded.config["training"]["method"] == "leace"
    sanitized, direct = tmp_path / "s.h5", tmp_path / "d.h5"
    sanitize_store(raw, out, sanitized, progress=False)
    assert extract(root / "bench" / "videos", direct, opts, transform=adapter_transform(out)).exit_code == 0
    with FeatureStore(raw) as r, FeatureStore(sanitized) as s, FeatureStore(direct) as d:
        assert s.header.features == d.header.features == "sanitized"
        assert s.header.anonymizer_videos == d.header.anonymizer_videos == tuple(loaded.config["training_videos"])
        for key in r.videos():
            np.testing.assert_allclose(s.clip_features(key), d.clip_features(key), atol=1e-4, rtol=1e-4)
            x = torch.from_numpy(r.clip_features(key))
            np.testing.assert_allclose(s.clip_features(key), loaded.model(x).numpy(), atol=1e-5)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    state["proj_left"] = torch.zeros(192, 3)
    meta = {"anonfeat_adapter": json.dumps(loaded.config)}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(AnonfeatError, match=r"proj_left \(192, 3\) vs \(192, 2\)"):
        load_adapter(tmp_path / "bad.safetensors")


def _planted_store(raw, labels, out, n_videos: int = 96, strength: float = 3.0, seed: int = 0):
    """A store of `n_videos` videos made from the real features of `raw` (cycled, with noise) whose clip and
    static features carry a random binary attribute `hat` along one random direction of the standardized
    features (+-strength standard deviations): a leak every attacker finds. Returns (store, labels CSV)."""
    import csv

    rng = np.random.default_rng(seed)
    actions = {r["video"]: r["action"] for r in csv.DictReader(open(labels))}
    with FeatureStore(raw) as source, FeatureStore(out, "a") as target:
        target.initialize(source.header)
        keys = source.videos()
        std = np.concatenate([source.clip_features(k) for k in keys]).std(0)
        direction = rng.standard_normal(std.shape)
        direction /= np.linalg.norm(direction)
        rows = []
        for i in range(n_videos):
            record = source.read_video(keys[i % len(keys)])
            hat = int(rng.integers(2))
            shift = ((2 * hat - 1) * strength * std * direction).astype(np.float32)
            noise = lambda x: (0.5 * std * rng.standard_normal(x.shape)).astype(np.float32)  # noqa: E731
            record.key = f"planted/{i:04d}.mp4"
            record.clip_features = record.clip_features.astype(np.float32) + noise(record.clip_features) + shift
            record.static_features = record.static_features.astype(np.float32) + noise(record.static_features) + shift
            target.write_video(record)
            action = next(a for video, a in actions.items() if keys[i % len(keys)].endswith(video))
            rows.append(f"{record.key},{'train' if i % 2 else 'test'},{action},{hat}\n")
    planted_labels = out.with_suffix(".csv")
    planted_labels.write_text("video,split,action,hat\n" + "".join(rows))
    return out, planted_labels


@pytest.mark.parametrize("attr_loss, w_attr", [("decorrelate", 10.0), ("adversary", 1.0)])
def test_attribute_labels_lower_the_audited_leakage_of_a_planted_attribute(bench, tmp_path, attr_loss, w_attr):
    """Training with attribute labels must make the audit find less of an attribute planted in the features
    than in the raw (identity-adapter) features: catches a sign error in any supervised privacy loss."""
    from anonfeat.audit import audit_stores

    root, labels, raw, _ = bench
    planted, planted_labels = _planted_store(raw, labels, tmp_path / "planted.h5")
    adapter = train_adapter(planted, planted_labels, tmp_path / "a.safetensors",
                            quick(privacy_loss="attributes", attr_loss=attr_loss, epochs=30, batch_size=48, depth=1,
                                  w_attr=w_attr, val_fraction=0.0)).adapter
    sanitized = sanitize_store(planted, adapter, tmp_path / "sanitized.h5", progress=False).store
    report = audit_stores([sanitized], planted_labels, baseline=planted, seeds=1, epochs=30, device="cpu")
    raw_result, sanitized_result = report.stores
    assert raw_result.headline.cmap > 0.9  # the plant is found in the raw features
    assert sanitized_result.leakage_removed > 0.5, (raw_result.headline.cmap, sanitized_result.headline.cmap)
