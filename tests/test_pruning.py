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
from tests.conftest import forked_cli, moving_frames

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


def _decoded_clips(path: Path, rows: np.ndarray, cfg, resize: str = "short") -> torch.Tensor:
    """Normalized clips (n, 3, T, s, s) of the source frames `rows` (n, T), through extraction's own
    decoding and normalization (`FrameReader`, `to_clips`)."""
    from anonfeat.video.reader import FrameReader
    from anonfeat.video.stream import to_clips

    reader = FrameReader(path, cfg.img_size, resize)
    try:
        frames, index = reader.frames(rows)
    finally:
        reader.close()
    return to_clips(torch.from_numpy(frames), torch.from_numpy(index), cfg.img_size, torch.tensor(cfg.mean),
                    torch.tensor(cfg.std))


def test_prune_store_layout_counts_and_keep_one_parity(tmp_path: Path, trained: Path) -> None:
    from anonfeat.extract import ExtractOptions, extract
    from anonfeat.pruning.run import prune
    from anonfeat.store import FeatureStore
    from anonfeat.video.sampling import clip_frame_indices

    videos = _square_videos(tmp_path / "videos")
    result = prune(videos, tmp_path / "p.h5", trained, static_clips=2, frame_stride=1, progress=False, workers=0)
    assert sorted(result.written) == ["square.mp4", "wide.mp4"] and not result.failed
    loaded = load_pruner(trained)
    counts = loaded.config.kept_counts()
    with FeatureStore(tmp_path / "p.h5") as store:
        header = store.header
        assert header.features == "pruned" and header.extra["pruner"]["kept_counts"] == counts
        assert header.extra["pruner"]["features"] == "masked" and header.encoder == DEMO
        n = len(store.clip_features("square.mp4"))
        assert store.static_features("square.mp4").shape == (2, 128)
        for block, count in zip(loaded.config.prune_blocks, counts):
            assert store.dataset("square.mp4", f"pruning/kept_{block}").shape == (n, count)
            assert store.dataset("square.mp4", f"pruning/scores_{block}").shape == (n, 128)
        with pytest.raises(KeyError):  # the pruner's own representation is not part of a masked store
            store.dataset("square.mp4", "pooled_features")
    # keep 1.0 masks nothing: the masked store is extract's store of the source encoder
    full = prune(videos, tmp_path / "full.h5", trained, keep_ratio=1.0, frame_stride=1, dtype="float32",
                 progress=False, workers=0)
    raw = extract(videos, tmp_path / "raw.h5", ExtractOptions(encoder=DEMO, frame_stride=1, dtype="float32",
                                                              progress=False, workers=0))
    assert not full.failed and not raw.failed
    with FeatureStore(tmp_path / "full.h5") as pruned, FeatureStore(tmp_path / "raw.h5") as extracted:
        assert pruned.header.sampling == extracted.header.sampling
        assert pruned.header.checkpoint_sha256 == extracted.header.checkpoint_sha256
        for key in ("square.mp4", "wide.mp4"):
            np.testing.assert_allclose(pruned.clip_features(key), extracted.clip_features(key), atol=1e-4)
    # the pruner's action CLS at keep 1.0 is the unpruned model's
    cls = prune(videos, tmp_path / "cls.h5", trained, keep_ratio=1.0, frame_stride=1, dtype="float32",
                features="action-cls", progress=False, workers=0)
    assert not cls.failed
    enc = loaded.config.encoder
    clips = _decoded_clips(videos / "wide.mp4", clip_frame_indices(13, Sampling(clip_len=enc.clip_len, frame_stride=1)),
                           enc)
    with torch.no_grad():
        expected = _unpruned_reference(loaded.model, clips)[:, 0].numpy()
    with FeatureStore(tmp_path / "cls.h5") as store:
        np.testing.assert_allclose(store.clip_features("wide.mp4"), expected, atol=2e-4)
        assert store.header.extra["pruner"]["features"] == "action-cls"
        assert store.dataset("wide.mp4", "pooled_features").shape == (len(expected), 128)
    with pytest.raises(AnonfeatError, match="keep"):  # resuming with another keep ratio is refused
        prune(videos, tmp_path / "full.h5", trained, keep_ratio=0.5, frame_stride=1, dtype="float32", progress=False)
    again = prune(videos, tmp_path / "p.h5", trained, static_clips=2, frame_stride=1, progress=False, workers=0)
    assert sorted(item.key for item in again.skipped) == ["square.mp4", "wide.mp4"] and not again.written


def test_prune_samples_like_extract_by_default() -> None:
    """Audit compares pruned and extracted stores clip for clip: same flags, same defaults."""
    from anonfeat.extract import ExtractOptions
    from anonfeat.pruning.run import PruneOptions

    for field in dataclasses.fields(ExtractOptions):
        assert getattr(PruneOptions(), field.name) == getattr(ExtractOptions(), field.name), field.name


def test_anonymized_video_is_black_exactly_where_tubelets_were_dropped(tmp_path: Path, trained: Path) -> None:
    import av

    from anonfeat.pruning.run import prune
    from anonfeat.video.writer import read_frames

    videos = _square_videos(tmp_path / "videos")
    result = prune(videos, tmp_path / "p.h5", trained, frame_stride=1, save_videos=tmp_path / "anon",
                   save_heatmaps=tmp_path / "heat", keep_ratio=0.8, lossless=True, progress=False, workers=0)
    assert not result.failed
    for name in ("square.mp4", "wide.mp4"):
        with av.open(str(tmp_path / "anon" / name)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
        original = np.stack(list(read_frames(videos / name))).astype(int)
        anonymized = np.stack(list(read_frames(tmp_path / "anon" / name))).astype(int)
        assert anonymized.shape == original.shape
        shown = ~(anonymized == 0).all(axis=-1)
        # every pixel is either black or the source's (lossless up to YUV rounding); the exact geometry
        # is checked on known tubelets by test_anonymized_video_geometry_on_known_dropped_tubelets
        assert np.abs(anonymized[shown] - original[shown]).max() <= 3
        assert 0.1 < shown.mean() < 0.8  # 0.8 ** 3 of the tubelets; wide frames also lose their sides
        if name == "wide.mp4":  # 48x80: the pruner saw the centre 48x48 square, columns 16..63
            assert not shown[:, :, :16].any() and not shown[:, :, 64:].any()
        assert len(list((tmp_path / "heat" / Path(name).stem).glob("clip_*.png"))) >= 1


@pytest.mark.parametrize("height, width", [(112, 168), (224, 224)])
def test_anonymized_video_geometry_on_known_dropped_tubelets(tmp_path: Path, height: int, width: int) -> None:
    """One 16-frame clip, videomae-tiny's grid (8 temporal x 7 x 7 tubelets of 2 frames and 16 px at
    112 px): two tubelets dropped by hand. The expected mask is written out by slicing, not with
    the rendering helpers: black outside the centre square the model saw, black on the dropped
    tubelets' frames and cells, the source everywhere else."""
    from anonfeat.encoders import load_encoder
    from anonfeat.pruning.render import write_anonymized_video
    from anonfeat.video.writer import read_frames

    cfg = load_encoder("videomae-tiny", random_init=True).config
    assert (cfg.img_size, cfg.grid, cfg.tubelet_size) == (112, (8, 7, 7), 2)
    source = tmp_path / "source.mkv"
    write_video(source, np.maximum(moving_frames(16, height, width, seed=31), 40), fps=25, lossless=True)
    dropped = [(1, 2, 3), (5, 0, 6)]  # (temporal, row, column) tubelets
    kept = np.array([[i for i in range(8 * 7 * 7) if (i // 49, i // 7 % 7, i % 7) not in dropped]])
    out = tmp_path / "anon.mkv"
    # lossless: exact black on the dropped cells (the default yuv420p H.264 bleeds chroma across edges)
    write_anonymized_video(source, out, 16, 25.0, Sampling(clip_len=16, frame_stride=1), kept, cfg, lossless=True)

    side = min(height, width)
    cell, top, left = side // 7, (height - side) // 2, (width - side) // 2
    expected = np.zeros((16, height, width), dtype=bool)
    expected[:, top:top + side, left:left + side] = True
    for t, r, c in dropped:  # temporal tubelet t spans frames 2t and 2t+1 (frame stride 1)
        expected[2 * t:2 * t + 2, top + r * cell:top + (r + 1) * cell, left + c * cell:left + (c + 1) * cell] = False
    original = np.stack(list(read_frames(source))).astype(int)
    anonymized = np.stack(list(read_frames(out))).astype(int)
    assert anonymized.shape == original.shape == (16, height, width, 3)
    assert anonymized[~expected].max() == 0  # black exactly where dropped (and outside the crop) ...
    assert np.abs(anonymized[expected] - original[expected]).max() <= 3  # ... the source elsewhere,
    assert anonymized[expected].min() > 0  # which is never black (>= 40 before encoding)
    assert (~expected).sum() == 16 * height * (width - side) + 2 * 2 * cell * cell  # the hand count


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
    assert result.static is not None and result.n_static_videos == 16  # the pruned store's static clips
    assert result.headline.cmap == max(result.static.cmap, result.clip.cmap)  # the worse attacker
    assert set(result.utility) == {"action"} and result.utility["action"]["top1_std"] == 0.0  # one seed
    assert result.headline.n_test >= 2 and result.clip.n_test == result.headline.n_test
    assert result.attacker_split == "attacker" and result.test_seen_by_anonymizer == 0 and not result.optimistic


@pytest.mark.integration
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


# -- masked-clip stores: the source encoder on what the pruner kept -------------------------------
TINY = "videomae-tiny"
ALIGNED = dict(frame_stride=2, dtype="float32", progress=False, workers=0)


@pytest.fixture(scope="module")
def tiny_pruner(tmp_path_factory) -> Path:
    """An untrained pruner over random-init videomae-tiny, recorded as `train-pruner --random-init` does."""
    torch.manual_seed(0)
    pruner, backbone = build_pruner(TINY, None, True, actions=("a", "b"), attributes=("x",), keep_rates=(0.7,))
    return save_pruner(pruner, tmp_path_factory.mktemp("tiny") / "tiny.safetensors", {"backbone": backbone})


@pytest.fixture(scope="module")
def aligned_videos(tmp_path_factory) -> Path:
    """64 frames each: at frame stride 2 the default sliding windows tile them (two clips, every frame
    in exactly one temporal tubelet), so a saved video's frames line up with the clips of the store."""
    root = tmp_path_factory.mktemp("aligned")
    (root / "sub").mkdir()
    write_video(root / "wide.mp4", moving_frames(64, 112, 150, seed=21), fps=25)
    write_video(root / "sub" / "odd.mkv", moving_frames(64, 121, 113, seed=22), fps=25)  # odd sizes: padded
    return root


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, tiny_pruner: Path, aligned_videos: Path) -> Path:
    from anonfeat.pruning.run import prune

    out = tmp_path_factory.mktemp("masked")
    result = prune(aligned_videos, out / "m.h5", tiny_pruner, static_clips=2, save_videos=out / "anon", **ALIGNED)
    assert sorted(result.written) == ["sub/odd.mkv", "wide.mp4"] and not result.failed
    return out


def _blacked_out(clips: torch.Tensor, kept: np.ndarray, cfg) -> torch.Tensor:
    """The expected masked clips, tubelet by tubelet from the kept grid positions: every other tubelet
    gets the normalized value of a black (0) pixel, as `to_clips` normalizes one."""
    from anonfeat.video.stream import to_clips

    black_frame = torch.zeros((1, cfg.img_size, cfg.img_size, 3), dtype=torch.uint8)
    black = to_clips(black_frame, torch.zeros((1, 1), dtype=torch.long), cfg.img_size, torch.tensor(cfg.mean),
                     torch.tensor(cfg.std))[0, :, 0, 0, 0]
    out = clips.clone()
    ts, p = cfg.tubelet_size, cfg.patch_size
    for i in range(len(clips)):
        for position in sorted(set(range(cfg.num_tokens)) - set(np.asarray(kept[i]).tolist())):
            t, h, w = np.unravel_index(position, cfg.grid)
            out[i, :, t * ts:(t + 1) * ts, h * p:(h + 1) * p, w * p:(w + 1) * p] = black.view(3, 1, 1, 1)
    return out


@torch.no_grad()
def test_masked_store_is_the_source_encoder_on_the_masked_clips(masked_run: Path, tiny_pruner: Path,
                                                                 aligned_videos: Path) -> None:
    """Clip and static features equal the random-init source encoder (rebuilt here from its seed) on
    the decoded clips with every tubelet not kept at the last stage blacked out."""
    from anonfeat.encoders import RANDOM_INIT_SHA, load_encoder
    from anonfeat.store import FeatureStore
    from anonfeat.video.sampling import clip_frame_indices

    loaded = load_pruner(tiny_pruner)
    cfg, last = loaded.config.encoder, loaded.config.prune_blocks[-1]
    encoder = load_encoder(TINY, random_init=True)
    sampling = Sampling(clip_len=cfg.clip_len, frame_stride=2)
    with FeatureStore(masked_run / "m.h5") as store:
        header = store.header
        assert header.encoder == TINY and header.checkpoint_sha256 == RANDOM_INIT_SHA
        assert header.extra["pruner"]["features"] == "masked" and header.sampling["frame_stride"] == 2
        for key in ("wide.mp4", "sub/odd.mkv"):
            n_frames = int(store.video_attrs(key)["n_frames"])
            clips = _decoded_clips(aligned_videos / key, clip_frame_indices(n_frames, sampling), cfg)
            kept = store.dataset(key, f"pruning/kept_{last}")
            assert kept.shape == (len(clips), loaded.config.kept_counts()[-1])
            expected = encoder(_blacked_out(clips, kept, cfg)).numpy()
            np.testing.assert_allclose(store.clip_features(key), expected, atol=1e-4)
            assert not np.allclose(store.clip_features(key), encoder(clips).numpy(), atol=1e-2)  # really masked
            # static clips: the pruner runs on each, its dropped tubelets are black before encoding
            frames = store.dataset(key, "static_frames")
            statics = _decoded_clips(aligned_videos / key, np.repeat(frames[:, None], cfg.clip_len, axis=1), cfg)
            static_kept = loaded.model(statics).kept[-1].numpy()
            expected = encoder(_blacked_out(statics, static_kept, cfg)).numpy()
            np.testing.assert_allclose(store.static_features(key), expected, atol=1e-4)
            assert not np.allclose(store.static_features(key), encoder(statics).numpy(), atol=1e-2)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_saved_videos_re_extract_to_the_masked_store(masked_run: Path, aligned_videos: Path, tmp_path: Path) -> None:
    """`extract` with the source encoder on the saved videos gives the store's features (mean cosine
    >= 0.9 per video, far closer than the unmasked videos' features), and the labels of the sources
    match the saved videos."""
    from anonfeat.extract import ExtractOptions, extract
    from anonfeat.labels import load_labels, match_videos
    from anonfeat.store import FeatureStore

    saved = masked_run / "anon"
    assert sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()) == ["sub/odd.mp4", "wide.mp4"]
    options = ExtractOptions(encoder=TINY, random_init=True, static_clips=2, **ALIGNED)
    assert not extract(saved, tmp_path / "re.h5", options).failed
    assert not extract(aligned_videos, tmp_path / "raw.h5", options).failed
    with FeatureStore(masked_run / "m.h5") as masked, FeatureStore(tmp_path / "re.h5") as again, \
            FeatureStore(tmp_path / "raw.h5") as raw:
        assert again.header.sampling == masked.header.sampling and again.header.encoder == masked.header.encoder
        for key in ("wide.mp4", "sub/odd.mkv"):
            saved_key = str(Path(key).with_suffix(".mp4"))
            close = _cosines(masked.clip_features(key), again.clip_features(saved_key)).mean()
            unmasked = _cosines(raw.clip_features(key), again.clip_features(saved_key)).mean()
            assert close >= 0.9 and close > unmasked + 0.2, (key, close, unmasked)
        labels_csv = tmp_path / "labels.csv"
        labels_csv.write_text("video,split,action\nwide.mp4,train,a\nsub/odd.mkv,test,b\n")
        labels = load_labels(labels_csv, require_attributes=False)
        match = match_videos(labels, again.videos())
        assert len(match.pairs) == 2 and match.unmatched_labels == 0 and match.unmatched_store == 0


def test_saved_videos_are_playable_h264_with_black_dropped_tubelets(masked_run: Path, tiny_pruner: Path,
                                                                    aligned_videos: Path) -> None:
    """Default output: H.264 yuv420p at even sizes (odd frames padded black at the bottom/right, the
    content at the top-left), no audio; kept pixels near the source (CRF 18), dropped ones black."""
    import av
    from scipy.ndimage import binary_erosion

    from anonfeat.store import FeatureStore
    from anonfeat.video.writer import read_frames

    loaded = load_pruner(tiny_pruner)
    cfg, last = loaded.config.encoder, loaded.config.prune_blocks[-1]
    for key, size in (("wide.mp4", (112, 150)), ("sub/odd.mkv", (122, 114))):
        path = masked_run / "anon" / Path(key).with_suffix(".mp4")
        with av.open(str(path)) as container:
            assert len(container.streams.audio) == 0
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.codec_context.height, stream.codec_context.width) == size
        original = np.stack(list(read_frames(aligned_videos / key))).astype(int)
        decoded = np.stack(list(read_frames(path))).astype(int)
        height, width = original.shape[1:3]
        assert decoded.shape == (len(original), *size, 3)
        padding = np.concatenate([decoded[:, height:].reshape(-1), decoded[:, :, width:].reshape(-1)])
        # black up to the chroma yuv420p shares with the content's last column, and CRF 18 ringing
        assert padding.size == 0 or padding.mean() < 3
        decoded = decoded[:, :height, :width]
        with FeatureStore(masked_run / "m.h5") as store:
            kept = store.dataset(key, f"pruning/kept_{last}")
        grids = frame_grids(len(original), Sampling(clip_len=cfg.clip_len, frame_stride=2), kept, cfg)
        rows, cols = pixel_cells(height, width, cfg, "short")
        masks = np.stack([pixel_mask(g, rows, cols) for g in grids])
        assert 0.2 < masks.mean() < 0.5  # 0.7 ** 3 of the tubelets kept
        inner_kept = binary_erosion(masks, np.ones((1, 5, 5), dtype=bool))  # away from edges CRF smears
        inner_dropped = binary_erosion(~masks, np.ones((1, 5, 5), dtype=bool))
        # luma: yuv420p halves chroma resolution, and the odd source holds full-resolution colour noise
        luma = np.array([0.299, 0.587, 0.114])
        assert np.abs((decoded[inner_kept] - original[inner_kept]) @ luma).mean() < 5
        assert decoded[inner_dropped].mean() < 2 and np.percentile(decoded[inner_dropped], 99) <= 12


@pytest.mark.parametrize("fill", ["blur", "pixelate"])
def test_fill_blurs_or_pixelates_dropped_tubelets_and_never_seen_pixels_stay_black(
        fill: str, masked_run: Path, tiny_pruner: Path, aligned_videos: Path, tmp_path: Path) -> None:
    from anonfeat.pruning.render import write_anonymized_video
    from anonfeat.store import FeatureStore
    from anonfeat.video.writer import read_frames

    loaded = load_pruner(tiny_pruner)
    cfg, last = loaded.config.encoder, loaded.config.prune_blocks[-1]
    sampling = Sampling(clip_len=cfg.clip_len, frame_stride=2)
    with FeatureStore(masked_run / "m.h5") as store:
        kept = store.dataset("wide.mp4", f"pruning/kept_{last}")
    out = tmp_path / "wide.mp4"
    write_anonymized_video(aligned_videos / "wide.mp4", out, 64, 25.0, sampling, kept, cfg, fill=fill, lossless=True)
    original = np.stack(list(read_frames(aligned_videos / "wide.mp4"))).astype(int)
    filled = np.stack(list(read_frames(out))).astype(int)
    rows, cols = pixel_cells(112, 150, cfg, "short")
    masks = np.stack([pixel_mask(g, rows, cols) for g in frame_grids(64, sampling, kept, cfg)])
    seen = np.broadcast_to(((rows[:, None] >= 0) & (cols[None, :] >= 0))[None], masks.shape)
    dropped = seen & ~masks
    assert (~seen).any() and dropped.any()
    assert np.abs(filled[~seen]).max() == 0  # outside the centre crop: the model never saw it
    assert np.abs(filled[masks] - original[masks]).max() <= 3
    assert filled[dropped].mean() > 40  # not black: the background is uniform noise of mean ~127
    assert np.abs(filled[dropped] - original[dropped]).mean() > 20  # the detail is gone
    if fill == "pixelate":  # one colour per dropped tubelet cell
        frame, cell = np.argwhere(dropped)[0][0], (rows == rows[np.argwhere(dropped)[0][1]])
        cell_cols = cols == cols[np.argwhere(dropped)[0][2]]
        block = filled[frame][np.ix_(cell, cell_cols)]
        assert np.abs(block - block.reshape(-1, 3).mean(0)).max() <= 3


def test_heatmap_figure_has_one_colour_scale_and_a_colour_bar() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anonfeat.encoders import get_config
    from anonfeat.pruning.render import heatmap_figure

    cfg = get_config(DEMO)
    t, n = cfg.grid[0], cfg.num_tokens
    rng = np.random.default_rng(0)
    first = rng.uniform(-0.2, 0.1, n)
    second = rng.uniform(0.0, 0.9, n)
    kept_first = np.sort(rng.choice(n, 100, replace=False))
    second[np.setdiff1d(np.arange(n), kept_first)] = np.nan  # pruned before: not scored
    views = rng.integers(0, 255, (t, cfg.img_size, cfg.img_size, 3), dtype=np.uint8)
    fig = heatmap_figure(views, np.arange(t), [first, second], [kept_first, kept_first[:80]], [1, 2], cfg, "v")
    try:
        score_images = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "magma"]
        assert len(score_images) == 2 * t
        low, high = float(first.min()), float(np.nanmax(second))
        assert all(im.get_clim() == pytest.approx((low, high)) for im in score_images)
        bars = {id(im.colorbar) for im in score_images if im.colorbar is not None}
        assert len(bars) == 1 and len(fig.axes) == 3 * t + 1  # the frames, two stages and one colour bar
    finally:
        plt.close(fig)


def test_prune_rebuilds_its_source_from_the_recorded_checkpoint(tmp_path: Path, aligned_videos: Path) -> None:
    """The pruner file records the checkpoint path and sha256; a moved checkpoint is refused in one line
    (exit 2, nothing written) until --checkpoint names it; other weights are refused naming both sha256."""
    from safetensors.torch import save_file

    from anonfeat.encoders import load_encoder
    from anonfeat.pruning.run import prune

    weights = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in load_encoder(TINY, random_init=True).state_dict().items()}, str(weights))
    torch.manual_seed(0)
    pruner, backbone = build_pruner(None, weights, False, actions=("a",), attributes=("x",), keep_rates=(0.7,))
    assert backbone["checkpoint"] == str(weights.resolve()) and backbone["random_init"] is False
    path = save_pruner(pruner, tmp_path / "p.safetensors", {"backbone": backbone})
    one = tmp_path / "one"
    one.mkdir()
    (one / "wide.mp4").write_bytes((aligned_videos / "wide.mp4").read_bytes())
    moved = weights.rename(tmp_path / "moved.safetensors")
    done = forked_cli(["prune", str(one), "--pruner", str(path), "--out", str(tmp_path / "p.h5"), "--no-progress",
                       "--workers", "0"], tmp_path)
    message = done.stderr.strip()
    assert done.returncode == 2 and len(message.splitlines()) == 1 and "Traceback" not in done.stdout + message
    assert str(weights.resolve()) in message and "--checkpoint" in message and not (tmp_path / "p.h5").exists()
    assert not prune(one, tmp_path / "p.h5", path, checkpoint=moved, **ALIGNED).failed
    other = load_encoder(TINY, random_init=True).state_dict()
    other["norm.weight" if "norm.weight" in other else next(iter(other))] += 1.0
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AnonfeatError, match=f"sha256 .* {backbone['checkpoint_sha256']}"):
        prune(one, tmp_path / "q.h5", path, checkpoint=tmp_path / "other.safetensors", **ALIGNED)
