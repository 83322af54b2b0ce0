"""Checkpoints by name and from the layouts users bring (issue 17), and encoder families (issue 19).

Hub ids resolve from a Hugging Face cache folder built inside each test (the real layout:
models--org--name/{blobs, refs/main, snapshots/<commit>}), with HF_HOME pointing at it and
HF_HUB_OFFLINE=1: no network. transformers and mmaction2 layouts are checked for token parity on
tiny random models; timm weights load through timm, and timm models see frames exactly as
timm's own eval transform makes them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from safetensors.torch import save_file

from anonfeat.encoders import build_encoder, frame_resize, get_config, load_encoder, parameter_count
from anonfeat.encoders.base import Backbone, CheckpointIdentity, Encoder
from anonfeat.encoders.families import FAMILIES, family_of
from anonfeat.encoders.hub import HubId, parse_hub_id
from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, extract
from anonfeat.store import FeatureStore
from anonfeat.synth import write_video
from anonfeat.video.discover import VideoItem
from anonfeat.video.resize import PilResize
from conftest import forked_cli, moving_frames

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
# A tiny VideoMAE (4 heads: only config.json can tell).
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8, num_frames=4, tubelet_size=2)


# ---------------------------------------------------------------- helpers
def hub_cache(home: Path, repo: str, files: dict[str, Path], revision: str = "main") -> Path:
    """Put `files` into a Hugging Face cache under HF_HOME=`home` as huggingface_hub lays it out:
    content-addressed blobs, a ref naming the commit, a snapshot folder of links to the blobs."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (root / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME with the Hub switched off; returns HF_HOME."""
    home = tmp_path / "hf-home"
    home.mkdir()
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter moved off its init (non-zero biases, norms not exactly 1), so a key mapped
    to the wrong place changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def hf_videomae(kind: str, seed: int = 0) -> torch.nn.Module:
    cfg = transformers.VideoMAEConfig(**TINY, qkv_bias=True, hidden_act="gelu", num_labels=3,
                                      use_mean_pooling=kind != "VideoMAEForPreTraining",
                                      decoder_num_hidden_layers=1, decoder_hidden_size=32,
                                      decoder_num_attention_heads=2, decoder_intermediate_size=64)
    torch.manual_seed(seed)
    return perturb(getattr(transformers, kind)(cfg), seed)


@torch.no_grad()
def hf_last_hidden_state(model, x: torch.Tensor) -> torch.Tensor:
    base = getattr(model, "videomae", model)
    return base(pixel_values=x.transpose(1, 2)).last_hidden_state  # HF takes (B, T, C, H, W)


def clip(batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, TINY["num_frames"], TINY["image_size"], TINY["image_size"], generator=gen)


def one_line_error(call) -> str:
    with pytest.raises(AnonfeatError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- Hub ids
def test_hub_ids_are_org_name_with_an_optional_revision_and_never_an_existing_path(tmp_path, monkeypatch):
    assert parse_hub_id("MCG-NJU/videomae-base") == HubId("MCG-NJU/videomae-base")
    assert parse_hub_id("org/name.v2@v1.0") == HubId("org/name.v2", "v1.0")
    assert str(parse_hub_id("org/name@refs/pr/1")) == "org/name@refs/pr/1"
    for not_an_id in ("videomae-b", "a/b/c", "ckpts/model.pth", "org/weights.safetensors", "/abs/org", "org/",
                      "../name"):
        assert parse_hub_id(not_an_id) is None, not_an_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_hub_id("org/name") is None  # an existing folder is a path


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    out = tmp_path_factory.mktemp("hf-videomae")
    model = hf_videomae("VideoMAEModel", seed=3)
    model.save_pretrained(out)
    return out, model


def test_hub_id_loads_from_the_cache_offline_bit_identical_to_its_snapshot_folder(hf_saved, offline_hub, video_dir,
                                                                                     tmp_path):
    saved, model = hf_saved
    snapshot = hub_cache(offline_hub, "test-org/tiny-videomae",
                         {"config.json": saved / "config.json", "model.safetensors": saved / "model.safetensors"})
    commit = snapshot.name
    x = clip()
    by_folder = load_encoder(checkpoint=snapshot)
    tokens = by_folder.forward_tokens(x)
    assert torch.allclose(tokens, hf_last_hidden_state(model, x), atol=1e-4)
    for hub_id in ("test-org/tiny-videomae", "test-org/tiny-videomae@main", f"test-org/tiny-videomae@{commit}"):
        by_id = load_encoder(checkpoint=hub_id)
        assert torch.equal(by_id.forward_tokens(x), tokens), hub_id
        assert by_id.checkpoint == CheckpointIdentity(sha256=by_folder.checkpoint_sha256, source=hub_id)
    assert by_folder.checkpoint_sha256 == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()

    # Real decoded video through extract: the same stored features, bit for bit.
    stores = {}
    for name, checkpoint in (("id", "test-org/tiny-videomae"), ("folder", str(snapshot))):
        stores[name] = tmp_path / f"{name}.h5"
        result = extract([VideoItem("a.mp4", video_dir / "a.mp4")], stores[name],
                         ExtractOptions(checkpoint=checkpoint, frame_stride=2, workers=0, dtype="float32",
                                        progress=False))
        assert result.written == ["a.mp4"], result.failed
    with FeatureStore(stores["id"]) as a, FeatureStore(stores["folder"]) as b:
        assert a.header.checkpoint_sha256 == b.header.checkpoint_sha256 == by_folder.checkpoint_sha256
        assert np.array_equal(a.clip_features("a.mp4"), b.clip_features("a.mp4"))
        assert len(a.clip_features("a.mp4")) > 0


def test_hub_id_not_cached_offline_is_one_line_naming_the_id_and_the_fix(offline_hub):
    message = one_line_error(lambda: load_encoder(checkpoint="test-org/absent@v2"))
    assert "test-org/absent@v2" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download test-org/absent --revision v2" in message
    # A path with a file name stays a path: a typo reads as a missing file, not as a Hub lookup.
    assert "no such checkpoint" in one_line_error(lambda: load_encoder(checkpoint="ckpts/model.pth"))


def test_cli_takes_hub_ids_and_reports_a_cache_miss_in_one_line(hf_saved, offline_hub, video_dir, tmp_path):
    saved, _ = hf_saved
    hub_cache(offline_hub, "test-org/tiny-videomae",
              {"config.json": saved / "config.json", "model.safetensors": saved / "model.safetensors"})
    env = {"HF_HOME": str(offline_hub), "HF_HUB_OFFLINE": "1"}
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes((video_dir / "a.mp4").read_bytes())
    out = tmp_path / "cli.h5"
    from typer.testing import CliRunner

    from anonfeat.cli import app

    ok = CliRunner().invoke(app, ["extract", str(videos), "--out", str(out), "--checkpoint", "test-org/tiny-videomae",
                                  "--workers", "0", "--no-progress"], env=env)
    assert ok.exit_code == 0, ok.output
    with FeatureStore(out) as store:
        assert store.header.checkpoint_sha256 == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    missing = forked_cli(["extract", str(videos), "--out", str(tmp_path / "x.h5"), "--checkpoint",
                          "test-org/not-cached", "--no-progress"], tmp_path, setup=lambda: os.environ.update(env))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "test-org/not-cached" in missing.stderr
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------- transformers and mmaction2 layouts
@pytest.mark.parametrize("kind", ["VideoMAEModel", "VideoMAEForVideoClassification", "VideoMAEForPreTraining"])
def test_transformers_layouts_give_the_last_hidden_state(kind, tmp_path):
    model = hf_videomae(kind)
    model.save_pretrained(tmp_path)
    encoder = load_encoder(checkpoint=tmp_path)
    x = clip()
    with torch.no_grad():
        tokens = encoder.forward_tokens(x)
    expected = hf_last_hidden_state(model, x)
    assert tokens.shape == expected.shape == (2, 2 * 4 * 4, TINY["hidden_size"])
    assert (tokens - expected).abs().max().item() < 1e-4
    assert encoder.config.num_heads == 4 and encoder.config.num_frames == 4


# mmaction2's VisionTransformer (mmaction/models/backbones/vit_mae.py) inside a Recognizer3D:
# the backbone's keys under "backbone.", the head under "cls_head.", all under "state_dict".
MMACTION_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                       "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                       "mlp.layers.0.0.weight", "mlp.layers.0.0.bias", "mlp.layers.1.weight", "mlp.layers.1.bias")
ANONFEAT_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                       "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                       "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


@pytest.mark.parametrize("final_norm, layer_scale", [("fc_norm", False), ("norm", True)])
def test_mmaction2_vit_keys_load_with_parity(final_norm, layer_scale, tmp_path):
    cfg = get_config("videomae-tiny").replace(final_norm=final_norm, init_values=0.1 if layer_scale else 0.0)
    source = perturb(build_encoder(cfg, seed=4), seed=4)
    ours = source.state_dict()
    mm = {"backbone.patch_embed.projection.weight": ours["patch_embed.proj.weight"],
          "backbone.patch_embed.projection.bias": ours["patch_embed.proj.bias"],
          "backbone.pos_embed": source.pos_embed.clone()}  # a buffer mmaction2 saves
    for i in range(cfg.depth):
        for mm_key, key in zip(MMACTION_BLOCK_KEYS, ANONFEAT_BLOCK_KEYS):
            mm[f"backbone.blocks.{i}.{mm_key}"] = ours[f"blocks.{i}.{key}"]
        if layer_scale:
            mm[f"backbone.blocks.{i}.gamma_1"] = ours[f"blocks.{i}.ls1.gamma"]
            mm[f"backbone.blocks.{i}.gamma_2"] = ours[f"blocks.{i}.ls2.gamma"]
    mm[f"backbone.{final_norm}.weight"], mm[f"backbone.{final_norm}.bias"] = (
        ours[f"{final_norm}.weight"], ours[f"{final_norm}.bias"])
    mm["cls_head.fc_cls.weight"], mm["cls_head.fc_cls.bias"] = torch.randn(5, cfg.embed_dim), torch.zeros(5)
    mm["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1)
    mm["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1, 1)
    path = tmp_path / "vit-small-p16_videomae-k400-pre_16x4x1_kinetics-400.pth"
    torch.save({"meta": {"epoch": 1, "mmaction_version": "1.2.0"}, "state_dict": mm}, path)

    loaded = load_encoder("videomae-tiny", checkpoint=path)
    inferred = load_encoder(checkpoint=path)  # the architecture from the keys alone
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = source.forward_tokens(x)
        assert torch.allclose(loaded.forward_tokens(x), expected, atol=1e-5)
        assert torch.allclose(inferred.forward_tokens(x), expected, atol=1e-5)
        assert torch.allclose(loaded(x), source(x), atol=1e-5)
    assert inferred.config.final_norm == final_norm and (inferred.config.init_values > 0) == layer_scale


# ---------------------------------------------------------------- timm
def test_timm_checkpoint_file_and_hub_id_load_through_timm(offline_hub, tmp_path):
    source = perturb(timm.create_model("test_vit", pretrained=False), seed=6)  # with its 1000-class head
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    from_file = load_encoder("timm:test_vit", checkpoint=path)
    source.reset_classifier(0)
    frame = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(from_file(frame[:, :, None].repeat(1, 1, 2, 1, 1)), source(frame), atol=1e-5)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert from_file.checkpoint == CheckpointIdentity(sha256=sha, source=str(path))

    hub_cache(offline_hub, "test-org/my-test-vit", {"model.safetensors": path})
    from_hub = load_encoder("timm:test_vit", checkpoint="test-org/my-test-vit")
    assert from_hub.checkpoint_sha256 == sha
    assert all(torch.equal(a, b) for a, b in zip(from_hub.state_dict().values(), from_file.state_dict().values()))


def test_timm_pretrained_is_timms_own_hub_source_through_the_cache(offline_hub, tmp_path):
    """`--checkpoint pretrained` reads pretrained_cfg's hf_hub_id (timm/test_vit.r160_in1k) from the
    Hugging Face cache; offline and not cached it is one line naming the id."""
    message = one_line_error(lambda: load_encoder("timm:test_vit", checkpoint="pretrained"))
    assert "timm/test_vit.r160_in1k" in message and "HF_HUB_OFFLINE" in message

    source = perturb(timm.create_model("test_vit", pretrained=False), seed=7)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    hub_cache(offline_hub, "timm/test_vit.r160_in1k", {"model.safetensors": path})
    encoder = load_encoder("timm:test_vit", checkpoint="pretrained")
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert encoder.model.state_dict().keys() == expected.keys()
    assert all(torch.equal(encoder.model.state_dict()[k], v) for k, v in expected.items())
    assert encoder.checkpoint == CheckpointIdentity(sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                                    source="pretrained")


def test_timm_features_equal_timms_own_transform_on_the_same_frames(tmp_path):
    """Frames resized as timm's data config says (bicubic, crop_pct 0.95 for test_vit), centre-
    cropped and normalized: the stored features equal timm's transform + model on PyAV's frames."""
    import av
    from PIL import Image

    video = tmp_path / "odd.mp4"
    write_video(video, moving_frames(12, 97, 131, seed=7), fps=25)  # odd sizes: rounding is exercised
    encoder = load_encoder("timm:test_vit", random_init=True)
    cfg = encoder.config
    assert (cfg.interpolation, cfg.crop_pct, cfg.mean, cfg.img_size) == ("bicubic", 0.95, (0.5, 0.5, 0.5), 160)
    out = tmp_path / "timm.h5"
    result = extract([VideoItem("odd.mp4", video)], out, ExtractOptions(
        clip_len=2, frame_stride=3, workers=1, dtype="float32", progress=False), encoder=encoder)
    assert result.written == ["odd.mp4"], result.failed
    with FeatureStore(out) as store:
        features, ranges = store.clip_features("odd.mp4"), store.clip_ranges("odd.mp4")
        assert json.loads(store.attrs["encoder_config"])["crop_pct"] == 0.95

    with av.open(str(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    data = timm.data.resolve_model_data_config(encoder.model)
    transform = timm.data.create_transform(**data)
    plain = timm.data.create_transform(**{**data, "interpolation": "bilinear", "crop_pct": 1.0})

    def timm_features(tf) -> np.ndarray:
        with torch.no_grad():
            return np.stack([encoder.model(torch.stack([tf(Image.fromarray(frames[i])) for i in (a, b)])).mean(0)
                             .numpy() for a, b in ranges])

    assert len(features) == 2
    np.testing.assert_allclose(features, timm_features(transform), rtol=0, atol=1e-6)
    assert np.abs(features - timm_features(plain)).max() > 1e-3  # the resize really matters


def test_pil_resize_matches_torchvision_sizes_offsets_and_padding():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    for (h, w), resize in [((97, 131), PilResize(64, 0.875, "bicubic")), ((131, 97), PilResize(64, 0.9, "bilinear")),
                           ((50, 70), PilResize(64, 1.2, "bicubic")), ((97, 131), PilResize(64, 1.0, "bilinear",
                                                                                          squash=True))]:
        frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        size = (resize.scale_size,) * 2 if resize.squash else resize.scale_size
        mode = getattr(transforms.InterpolationMode, resize.interpolation.upper())
        reference = transforms.Compose([transforms.Resize(size, interpolation=mode), transforms.CenterCrop(64)])
        assert np.array_equal(resize(frame), np.asarray(reference(__import__("PIL.Image").Image.fromarray(frame))))


def test_encoders_table_shows_interpolation_and_crop_pct():
    from typer.testing import CliRunner

    import anonfeat.cli.encoders  # noqa: F401  (registers the command)
    from anonfeat.cli import app

    table = CliRunner().invoke(app, ["encoders", "timm:test_vit", "videomae-b"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert re.search(r"timm:test_vit .*bicubic .*0\.95", table.output)
    assert re.search(r"videomae-b .*bilinear .*\b1\b", table.output)
    listing = json.loads(CliRunner().invoke(app, ["encoders", "--json", "-"]).stdout)
    assert (listing["videomae-b"]["interpolation"], listing["videomae-b"]["crop_pct"]) == ("bilinear", 1.0)


# ---------------------------------------------------------------- encoder families
@pytest.mark.parametrize("name", ["videomae-tiny", "timm:test_vit"])
def test_each_family_builds_counts_feeds_and_makes_a_backbone(name):
    cfg = get_config(name)
    family = family_of(cfg)
    assert FAMILIES[cfg.family] is family
    encoder = family.build(cfg)
    assert isinstance(encoder, Encoder) and encoder.config == cfg
    assert encoder.checkpoint == CheckpointIdentity("random-init-seed-0", "random-init")
    assert parameter_count(cfg) == sum(p.numel() for p in encoder.parameters())
    flops = family.flops_per_clip(cfg)
    backbone = family.to_backbone(encoder)
    assert isinstance(backbone, Backbone) and FAMILIES[backbone.config.family].video_vit
    if name == "videomae-tiny":
        assert flops > 0 and frame_resize(cfg) is None and backbone.cls_token is None
        assert backbone.config == cfg and torch.equal(backbone.state["pos_embed"], encoder.pos_embed)
    else:
        assert np.isnan(flops) and backbone.cls_token.shape == (1, 1, cfg.embed_dim)
        assert frame_resize(cfg) == PilResize(160, 0.95, "bicubic")
        assert frame_resize(cfg, "full") == PilResize(160, 0.95, "bicubic", squash=True)


def test_encoder_config_and_checkpoint_identity_are_declared_fields(tmp_path):
    assert {"config", "checkpoint"} <= set(Encoder.__annotations__)
    source = build_encoder(get_config("videomae-tiny"), seed=2)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = load_encoder(checkpoint=path)
    assert "checkpoint" in vars(loaded) and loaded.checkpoint.source == str(path)
    assert loaded.checkpoint_sha256 == loaded.checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _imports(path: Path) -> set[str]:
    """Every anonfeat module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anonfeat"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("anonfeat"))
    return found


def test_encoders_modules_import_each_other_without_cycles():
    package = ROOT / "anonfeat" / "encoders"
    graph = {f"anonfeat.encoders.{p.stem}": {m for m in _imports(p) if m.startswith("anonfeat.encoders.")}
             for p in package.glob("*.py") if p.stem != "__init__"}
    assert graph["anonfeat.encoders.config"] == set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, " -> ".join((*stack, node))
        for nxt in graph.get(node, ()):
            visit(nxt, (*stack, node))

    for module in graph:
        visit(module, ())
    branches = [f"{p.relative_to(ROOT)}" for p in (ROOT / "anonfeat").rglob("*.py")
                if re.search(r"family\s*[!=]=", p.read_text())]
    assert branches == []  # callers ask the family object, not its name


# ---------------------------------------------------------------- dependency floors
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL", "huggingface_hub": "huggingface_hub",
                "concept-erasure": "concept_erasure"}
FLOORED = {"torch", "timm", "av", "numpy", "h5py", "typer", "rich", "huggingface_hub"}


def test_every_declared_dependency_is_imported_and_floors_admit_the_tested_versions():
    declared = [Requirement(line) for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["dependencies"]]
    imported = set()
    for path in (ROOT / "anonfeat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    names = {req.name.lower() for req in declared}
    assert FLOORED <= names and "tqdm" not in names
    for req in declared:
        assert IMPORT_NAMES.get(req.name.lower(), req.name.lower()) in imported, f"{req.name} is declared, never imported"
        if req.name.lower() in FLOORED:
            floors = [s for s in req.specifier if s.operator == ">="]
            assert floors, f"{req.name} has no lower bound"
            assert Version(version(req.name)) in req.specifier, (req.name, version(req.name))
