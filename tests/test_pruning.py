"""Tubelet pruning: scoring math, the dual-CLS model, inflation, the pruner file, training, and
`prune` on real decoded video (stores, anonymized videos, heatmaps)."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from anonfeat.errors import AnonfeatError
from anonfeat.pruning.backbone import build_pruner, inflate_timm_vit
from anonfeat.pruning.io import load_pruner, save_pruner
from anonfeat.pruning.model import PrunerConfig, TubeletPruner
from anonfeat.pruning.render import frame_grids, pixel_cells, pixel_mask
from anonfeat.pruning.scoring import (default_prune_blocks, fuse_pruned, keep_count, select_tubelets,
                                      tubelet_scores)
from anonfeat.synth import make_benchmark, write_video
from anonfeat.video.sampling import Sampling
from tests.conftest import moving_frames

DEMO = "videomae-demo"


# -- scoring: pure functions --------------------------------------------------------------------
def test_keep_count_is_ceil_and_guards_float_noise() -> None:
    assert keep_count(1568, 0.9) == 1412
    assert keep_count(10, 0.9) == 9  # 0.9 * 10 = 9.000000000000002 in floating point
    assert keep_count(128, 0.9) == 116
    assert keep_count(5, 1.0) == 5
    assert keep_count(3, 0.01) == 1


def test_default_schedule_is_3_6_9_for_12_blocks() -> None:
    assert default_prune_blocks(12) == (3, 6, 9)
    assert default_prune_blocks(4) == (1, 2, 3)
    assert default_prune_blocks(24) == (6, 12, 18)


def test_scores_average_heads_drop_cls_columns_and_renormalize() -> None:
    # 1 clip, 2 heads, 2 CLS query rows, L = 2 CLS + 3 tubelets + 1 fused token
    attn = torch.zeros(1, 2, 2, 6)
    attn[0, 0, 0] = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1, 0.0])
    attn[0, 1, 0] = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2, 0.0])
    attn[0, :, 1] = torch.tensor([0.0, 0.2, 0.0, 0.0, 0.4, 0.4])
    scores, a_act, a_priv = tubelet_scores(attn, n_tubelets=3, lam=0.5)
    expected_act = torch.tensor([0.15, 0.2, 0.15]) / 0.5
    assert torch.allclose(a_act[0], expected_act)
    assert torch.allclose(a_priv[0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(scores[0], expected_act - 0.5 * torch.tensor([0.0, 0.0, 1.0]))


def test_select_keeps_top_k_in_token_order() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, -0.2]])
    keep, drop = select_tubelets(scores, 3)
    assert keep.tolist() == [[1, 2, 3]]
    assert sorted(drop.tolist()[0]) == [0, 4]
    tokens = torch.arange(5.0)[None, :, None].repeat(1, 1, 2)
    a_act = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.25]])
    fused = fuse_pruned(tokens, a_act, drop)
    assert torch.allclose(fused, torch.tensor([[[1.0, 1.0]]]))  # 0.5 * 0 + 0.25 * 4


# -- the model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_pruner() -> TubeletPruner:
    torch.manual_seed(0)
    pruner, _ = build_pruner(DEMO, None, False, actions=("a", "b", "c"), attributes=("x", "y"))
    return pruner.eval()


def _clips(n: int, cfg) -> torch.Tensor:
    generator = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=generator)


def _unpruned_reference(pruner: TubeletPruner, clips: torch.Tensor) -> torch.Tensor:
    tokens = torch.cat([pruner.cls_tokens.expand(len(clips), -1, -1), pruner.embed(clips)], dim=1)
    for block in pruner.blocks:
        tokens = block(tokens)
    return pruner.norm(tokens)


@torch.no_grad()
def test_keep_one_gives_exactly_the_unpruned_features(demo_pruner) -> None:
    clips = _clips(3, demo_pruner.config.encoder)
    out = demo_pruner(clips, keep_ratio=1.0)
    reference = _unpruned_reference(demo_pruner, clips)
    assert torch.equal(out.action, reference[:, 0])
    assert torch.equal(out.pooled, reference[:, 2:].mean(dim=1))
    assert all(k.shape[1] == demo_pruner.config.encoder.num_tokens for k in out.kept)
    pruned = demo_pruner(clips)
    assert not torch.allclose(pruned.action, out.action, atol=1e-4)


@torch.no_grad()
def test_kept_counts_follow_the_schedule_and_scores_track_pruned_tubelets(demo_pruner) -> None:
    cfg = demo_pruner.config
    out = demo_pruner(_clips(2, cfg.encoder))
    assert [k.shape[1] for k in out.kept] == cfg.kept_counts() == [116, 105, 95]
    previous = torch.arange(cfg.encoder.num_tokens).expand(2, -1)
    for kept, scores in zip(out.kept, out.scores):
        for row in range(2):
            assert torch.equal(kept[row], kept[row].sort().values)  # grid order
            assert set(kept[row].tolist()) <= set(previous[row].tolist())  # never revives a tubelet
            alive = torch.zeros(cfg.encoder.num_tokens, dtype=torch.bool)
            alive[previous[row]] = True
            assert torch.equal(~scores[row].isnan(), alive)  # scored exactly the candidates
        previous = kept
    assert [k.shape[1] for k in demo_pruner(_clips(1, cfg.encoder), keep_ratio=0.5).kept] == [64, 32, 16]


@torch.no_grad()
def test_a_clip_is_pruned_the_same_alone_or_in_a_batch(demo_pruner) -> None:
    clips = _clips(4, demo_pruner.config.encoder)
    together = demo_pruner(clips)
    alone = demo_pruner(clips[2:3])
    assert torch.allclose(together.action[2], alone.action[0], atol=1e-5)
    assert all(torch.equal(a[2], b[0]) for a, b in zip(together.kept, alone.kept))


def test_config_refuses_bad_schedules() -> None:
    from anonfeat.encoders import get_config

    enc = get_config(DEMO)
    with pytest.raises(AnonfeatError, match="between 1 and 4"):
        PrunerConfig(encoder=enc, prune_blocks=(2, 9))
    with pytest.raises(AnonfeatError, match="one per pruning block"):
        PrunerConfig(encoder=enc, prune_blocks=(1, 2), keep_rates=(0.9, 0.8, 0.7))
    with pytest.raises(AnonfeatError, match=r"\(0, 1\]"):
        PrunerConfig(encoder=enc, keep_rates=(1.5,))
    assert PrunerConfig(encoder=enc, prune_blocks=(2, 4), keep_rates=(0.5,)).keep_rates == (0.5, 0.5)


# -- inflating a timm image ViT -----------------------------------------------------------------
def test_inflated_timm_vit_embeds_static_clips_like_frames_and_keeps_its_blocks() -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=0).eval()
    with torch.no_grad():  # non-zero biases so dropping the key bias is really exercised
        for block in vit.blocks:
            block.attn.qkv.bias.normal_()
    cfg, state = inflate_timm_vit(vit, "tiny-vit", num_frames=4, tubelet_size=2)
    pruner = TubeletPruner(PrunerConfig(encoder=cfg, prune_blocks=(1,), actions=("a",), attributes=("x",)))
    pruner.load_state_dict(state, strict=False)
    pruner.eval()
    frame = torch.randn(1, 3, 32, 32)
    static = frame[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        video_tokens = pruner.patch_embed(static)  # (1, 2 * 4, D)
        image_tokens = vit.patch_embed(frame)  # (1, 4, D)
        assert torch.allclose(video_tokens, image_tokens.repeat(1, 2, 1), atol=1e-5)
        assert torch.equal(pruner.pos_embed[0, :4], vit.pos_embed[0, 1:])
        assert torch.equal(pruner.pos_embed[0, 4:], vit.pos_embed[0, 1:])
        x = torch.randn(2, 7, 48)
        for ours, theirs in zip(pruner.blocks, vit.blocks):
            assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_timm_registry_names_inflate_through_build_pruner() -> None:
    pruner, source = build_pruner("timm:vit_tiny_patch16_224", None, True, actions=("a", "b"), attributes=("x",))
    cfg = pruner.config
    assert cfg.encoder.grid == (8, 14, 14) and cfg.prune_blocks == (3, 6, 9)
    assert source["encoder"] == "timm:vit_tiny_patch16_224"


def test_cnn_backbones_are_refused_with_a_clear_error() -> None:
    with pytest.raises(AnonfeatError, match="VisionTransformer"):
        build_pruner("timm:resnet18", None, True, actions=("a",), attributes=())


# -- the pruner file ----------------------------------------------------------------------------
def test_pruner_file_round_trips_and_refuses_foreign_files(tmp_path: Path, demo_pruner) -> None:
    path = save_pruner(demo_pruner, tmp_path / "p.safetensors", {"sampling": {"frame_stride": 2}})
    loaded = load_pruner(path)
    assert loaded.config == demo_pruner.config and loaded.info["sampling"]["frame_stride"] == 2
    for name, tensor in demo_pruner.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name])
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in demo_pruner.state_dict().items()}
    state["action_head.weight"] = torch.zeros(7, 128)
    import json

    meta = {"anonfeat_pruner": json.dumps({"format": "anonfeat-pruner/1", "pruner": demo_pruner.config.to_dict()})}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(AnonfeatError, match=r"action_head.weight \(7, 128\) vs \(3, 128\)"):
        load_pruner(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AnonfeatError, match="train-pruner"):
        load_pruner(tmp_path / "plain.safetensors")


# -- training on decoded clips ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prune_bench")
    return make_benchmark(root / "bench", n_videos=16, size=(64, 64), n_frames=24, seed=5)


def _train(bench: Path, out: Path, **kw):
    from anonfeat.pruning.train import train_pruner

    options = dict(encoder=DEMO, epochs=2, warmup_epochs=1, batch_size=4, frame_stride=1, workers=0, progress=False,
                   val_fraction=0.25)
    options.update(kw)
    return train_pruner(bench.parent / "videos", bench, out, **options)


def test_privacy_gradient_is_reversed_for_the_backbone_only(demo_pruner) -> None:
    """Shared weights and the action CLS get dCE - w dP; the privacy head and privacy CLS get + dP."""
    from anonfeat.pruning.train import add_branch_gradients, set_trainable

    pruner = TubeletPruner(demo_pruner.config)
    pruner.load_state_dict(demo_pruner.state_dict())
    params = set_trainable(pruner, 1)
    out = pruner(_clips(2, pruner.config.encoder))
    ce = pruner.action_head(out.action).pow(2).mean()
    privacy = pruner.privacy_head(out.privacy).pow(2).mean()
    d_ce = dict(zip(map(id, params), torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)))
    d_p = dict(zip(map(id, params), torch.autograd.grad(privacy, params, retain_graph=True, allow_unused=True)))
    branch = [*pruner.privacy_head.parameters(), pruner.cls_tokens]
    branch_grads = torch.autograd.grad(privacy, branch, retain_graph=True)
    (ce - 0.5 * privacy).backward()
    add_branch_gradients(pruner, branch, branch_grads, weight=0.5)
    head = pruner.privacy_head.weight
    assert torch.allclose(head.grad, d_p[id(head)], atol=1e-6)
    block_weight = pruner.blocks[-1].mlp.fc1.weight
    assert torch.allclose(block_weight.grad, d_ce[id(block_weight)] - 0.5 * d_p[id(block_weight)], atol=1e-6)
    cls = pruner.cls_tokens
    expected_action = d_ce[id(cls)][0, 0] - 0.5 * d_p[id(cls)][0, 0]
    expected_privacy = d_ce[id(cls)][0, 1] + d_p[id(cls)][0, 1]
    assert torch.allclose(cls.grad[0, 0], expected_action, atol=1e-6)
    assert torch.allclose(cls.grad[0, 1], expected_privacy, atol=1e-6)
    assert pruner.blocks[0].mlp.fc1.weight.grad is None  # frozen: not in the trainable set


def test_train_pruner_is_deterministic_and_writes_a_loadable_file(tmp_path: Path, bench: Path) -> None:
    first = _train(bench, tmp_path / "a.safetensors", seed=3)
    second = _train(bench, tmp_path / "b.safetensors", seed=3)
    n_train = sum(row["split"] == "train" for row in csv.DictReader(bench.open()))
    assert first.train_videos + first.val_videos == n_train and first.val_videos >= 2
    assert first.history[-1]["action"] == second.history[-1]["action"]
    a, b = load_pruner(first.pruner), load_pruner(second.pruner)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert a.config.privacy_loss == "attributes" and len(a.config.attributes) == 4
    assert set(a.info["metrics"]["val"]) == {"top1", "privacy_head_cmap"}
    reference, _ = build_pruner(DEMO, None, False, actions=a.config.actions, attributes=a.config.attributes)
    assert torch.equal(a.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)  # frozen block
    assert not torch.equal(a.model.blocks[-1].attn.qkv.weight, reference.blocks[-1].attn.qkv.weight)


def test_train_pruner_without_attributes_uses_static_clip_ntxent(tmp_path: Path, bench: Path) -> None:
    """Labels with neither attributes nor a split column: NT-Xent on static clips, trained on the
    derived train rows only (recorded in the file), never on a test video."""
    from anonfeat.labels import load_labels

    rows = list(csv.DictReader(bench.open()))
    plain = tmp_path / "labels.csv"
    with plain.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["video", "action"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("video", "action")} for r in rows)
    from anonfeat.pruning.train import train_pruner

    report = train_pruner(bench.parent / "videos", plain, tmp_path / "n.safetensors", encoder=DEMO, epochs=1,
                          warmup_epochs=0, batch_size=4, frame_stride=1, workers=0, progress=False, split_seed=2)
    loaded = load_pruner(report.pruner)
    derived = load_labels(plain, split_seed=2, require_attributes=False)
    train_ids = {v for v, s in zip(derived.videos, derived.split) if s == "train"}
    assert set(loaded.training_videos) == train_ids and report.train_videos + report.val_videos == len(train_ids)
    assert not train_ids & {v for v, s in zip(derived.videos, derived.split) if s == "test"}
    assert loaded.info["training"]["split_seed"] == 2 and loaded.info["training"]["seed"] == 0
    assert loaded.config.privacy_loss == "ntxent" and loaded.config.attributes == ()
    assert np.isfinite(report.history[-1]["privacy"])
    with pytest.raises(AnonfeatError, match="needs attribute columns"):
        train_pruner(bench.parent / "videos", plain, tmp_path / "m.safetensors", encoder=DEMO, epochs=1, warmup_epochs=0,
                     privacy_loss="attributes", progress=False)


# -- prune: stores, videos, heatmaps ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, bench) -> Path:
    return _train(bench, tmp_path_factory.mktemp("pruner") / "pruner.safetensors").pruner


def _square_videos(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_video(root / "square.mp4", moving_frames(20, 64, 64, seed=11), fps=20)
    write_video(root / "wide.mp4", moving_frames(13, 48, 80, seed=12), fps=20)
    return root


def test_prune_store_layout_counts_and_keep_one_parity(tmp_path: Path, trained: Path) -> None:
    from anonfeat.pruning.run import prune
    from anonfeat.store import FeatureStore
    from anonfeat.video.reader import FrameReader
    from anonfeat.video.sampling import clip_frame_indices
    from anonfeat.video.stream import to_clips

    videos = _square_videos(tmp_path / "videos")
    result = prune(videos, tmp_path / "p.h5", trained, static_clips=2, frame_stride=1, progress=False, workers=0)
    assert sorted(result.written) == ["square.mp4", "wide.mp4"] and not result.failed
    loaded = load_pruner(trained)
    counts = loaded.config.kept_counts()
    with FeatureStore(tmp_path / "p.h5") as store:
        header = store.header
        assert header.features == "pruned" and header.extra["pruner"]["kept_counts"] == counts
        n = len(store.clip_features("square.mp4"))
        assert store.static_features("square.mp4").shape == (2, 128)
        for block, count in zip(loaded.config.prune_blocks, counts):
            assert store.dataset("square.mp4", f"pruning/kept_{block}").shape == (n, count)
            assert store.dataset("square.mp4", f"pruning/scores_{block}").shape == (n, 128)
        assert store.dataset("square.mp4", "pooled_features").shape == (n, 128)
    full = prune(videos, tmp_path / "full.h5", trained, keep_ratio=1.0, frame_stride=1, dtype="float32",
                 progress=False, workers=0)
    assert not full.failed
    enc = loaded.config.encoder
    reader = FrameReader(videos / "wide.mp4", enc.img_size)
    indices = clip_frame_indices(reader.info.n_frames, Sampling(clip_len=enc.clip_len, frame_stride=1))
    frames, index = reader.frames(indices)
    clips = to_clips(torch.from_numpy(frames), torch.from_numpy(index), enc.img_size, torch.tensor(enc.mean),
                     torch.tensor(enc.std))
    with torch.no_grad():
        expected = _unpruned_reference(loaded.model, clips)[:, 0].numpy()
    with FeatureStore(tmp_path / "full.h5") as store:
        np.testing.assert_allclose(store.clip_features("wide.mp4"), expected, atol=2e-4)
    with pytest.raises(AnonfeatError, match="keep"):  # resuming with another keep ratio is refused
        prune(videos, tmp_path / "full.h5", trained, keep_ratio=0.5, frame_stride=1, dtype="float32", progress=False)
    again = prune(videos, tmp_path / "p.h5", trained, static_clips=2, frame_stride=1, progress=False, workers=0)
    assert sorted(item.key for item in again.skipped) == ["square.mp4", "wide.mp4"] and not again.written


def test_anonymized_video_is_black_exactly_where_tubelets_were_dropped(tmp_path: Path, trained: Path) -> None:
    from anonfeat.pruning.run import prune
    from anonfeat.store import FeatureStore
    from anonfeat.video.writer import read_frames

    videos = _square_videos(tmp_path / "videos")
    result = prune(videos, tmp_path / "p.h5", trained, frame_stride=1, save_videos=tmp_path / "anon",
                   save_heatmaps=tmp_path / "heat", keep_ratio=0.8, progress=False, workers=0)
    assert not result.failed
    loaded = load_pruner(trained)
    enc, last = loaded.config.encoder, loaded.config.prune_blocks[-1]
    for name in ("square.mp4", "wide.mp4"):
        original = np.stack(list(read_frames(videos / name))).astype(int)
        anonymized = np.stack(list(read_frames(tmp_path / "anon" / name))).astype(int)
        assert anonymized.shape == original.shape
        with FeatureStore(tmp_path / "p.h5") as store:
            kept = store.dataset(name, f"pruning/kept_{last}")
        sampling = Sampling(clip_len=enc.clip_len, frame_stride=1)
        grids = frame_grids(len(original), sampling, kept, enc)
        rows, cols = pixel_cells(original.shape[1], original.shape[2], enc, "short")
        masks = np.stack([pixel_mask(g, rows, cols) for g in grids])
        assert 0.1 < masks.mean() < 0.8  # 0.8 ** 3 of the tubelets; wide frames also lose their sides
        assert np.abs(anonymized[~masks]).max() == 0  # black exactly where dropped
        assert np.abs(anonymized[masks] - original[masks]).max() <= 3  # lossless up to YUV rounding
        assert len(list((tmp_path / "heat" / Path(name).stem).glob("clip_*.png"))) >= 1


def test_pruned_store_is_audited_like_any_store(tmp_path: Path, bench: Path, trained: Path) -> None:
    from anonfeat.audit.runner import audit_stores
    from anonfeat.pruning.run import prune

    from anonfeat.store import FeatureStore

    prune(bench.parent / "videos", tmp_path / "p.h5", trained, static_clips=2, frame_stride=1, progress=False,
          workers=0)
    with FeatureStore(tmp_path / "p.h5") as store:  # the pruner's record of its training videos, copied
        assert store.header.anonymizer_videos == load_pruner(trained).training_videos
        assert {r["video"] for r in csv.DictReader(bench.open()) if r["split"] == "train"} == \
            set(store.header.anonymizer_videos)
    report = audit_stores([tmp_path / "p.h5"], bench, seeds=1, epochs=5)
    result = report.stores[0]
    assert 0.0 <= result.headline.cmap <= 1.0
    assert 0.0 <= result.utility["action"]["top1"] <= 1.0
    assert result.attacker_split == "attacker" and result.test_seen_by_anonymizer == 0 and not result.optimistic


def test_prune_cli_records_bad_videos_and_refuses_bad_flags(tmp_path: Path, trained: Path, bad_video_dir: Path) -> None:
    run = [sys.executable, "-m", "anonfeat"]
    done = subprocess.run([*run, "prune", str(bad_video_dir), "--pruner", str(trained), "--out",
                           str(tmp_path / "p.h5"), "--no-progress", "--workers", "0"], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert "zero.mp4" in done.stdout and "Traceback" not in done.stdout + done.stderr
    with h5py.File(tmp_path / "p.h5") as f:
        assert "zero.mp4" in f["failures"] and "a.mp4" in f["videos"]
    bad = subprocess.run([*run, "prune", str(bad_video_dir), "--pruner", str(trained), "--out",
                          str(tmp_path / "q.h5"), "--keep-ratio", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--keep-ratio 1.5" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr + bad.stdout
    missing = subprocess.run([*run, "prune", str(bad_video_dir), "--pruner", str(tmp_path / "none.safetensors"),
                              "--out", str(tmp_path / "q.h5")], capture_output=True, text=True)
    assert missing.returncode == 2 and "train-pruner" in missing.stderr + missing.stdout
