"""Encoders: checkpoint loading in every layout users bring, parity with the reference
implementations (Hugging Face transformers, the official VideoMAE forward, timm), architecture
inference and the errors a user sees.

Parity is checked on tiny random models whose every parameter (q/v biases and LayerNorm
affine parameters included) is randomized, so a dropped or misplaced tensor shows up.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anonfeat.encoders import build_encoder, get_config, load_encoder, parameter_count
from anonfeat.encoders.checkpoints import infer_config
from anonfeat.encoders.vit import VideoViT
from anonfeat.errors import AnonfeatError

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

TOL = 1e-4

# A tiny model whose shape facts come from config.json (4 heads cannot be guessed from shapes).
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8, num_frames=4, tubelet_size=2)
# A small model whose architecture is inferable from tensor shapes alone: heads = dim / 64 and
# the default 16 x 224^2 clip; non-default patch 32, tubelet 4 and mlp ratio 2.5 so each
# inferred shape fact is checked.
INFERABLE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=320,
                 image_size=224, patch_size=32, num_frames=16, tubelet_size=4)


# ---------------------------------------------------------------- helpers


def _hf_config(arch: dict, **kw):
    return transformers.VideoMAEConfig(**arch, qkv_bias=True, hidden_act="gelu", **kw)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random at a scale that keeps activations O(1) and attention peaked."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif "layernorm" in name or "norm" in name.split(".")[-2]:
            p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
        else:  # biases, q_bias and v_bias included
            p.copy_(0.2 * noise)
    return model.eval()


def _hf_model(arch: dict, seed: int = 0, classification: bool = False, **kw):
    torch.manual_seed(seed)
    if classification:
        model = transformers.VideoMAEForVideoClassification(_hf_config(arch, num_labels=5, **kw))
    else:
        cfg = _hf_config(arch, **kw)
        model = transformers.VideoMAEModel(cfg)
    return _randomize(model, seed)


def _clip(arch: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """anonfeat input (B, 3, T, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    size = arch["image_size"]
    return torch.randn(batch, 3, arch["num_frames"], size, size, generator=gen)


@torch.no_grad()
def _hf_tokens(model, x: torch.Tensor) -> torch.Tensor:
    base = model.videomae if hasattr(model, "videomae") else model
    return base(pixel_values=x.transpose(1, 2)).last_hidden_state  # HF wants (B, T, C, H, W)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _hf_state(model) -> dict[str, torch.Tensor]:
    """The VideoMAEModel part's state dict with HF names (no "videomae." prefix)."""
    base = model.videomae if hasattr(model, "videomae") else model
    return {k: v.detach().clone() for k, v in base.state_dict().items()}


def hf_to_official(model) -> dict[str, torch.Tensor]:
    """Official VideoMAE key layout from HF weights: qkv rows q, k, v stacked; q_bias, v_bias."""
    sd = _hf_state(model)

    def bias(prefix: str, part: str) -> torch.Tensor:  # saved files say q_bias, transformers 5 query.bias
        short = {"query": "q_bias", "value": "v_bias"}[part]
        return sd[f"{prefix}{short}"] if f"{prefix}{short}" in sd else sd[f"{prefix}{part}.bias"]

    out = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"]}
    depth = model.config.num_hidden_layers
    for i in range(depth):
        hf, b = f"encoder.layer.{i}.", f"blocks.{i}."
        att = hf + "attention.attention."
        out[b + "attn.qkv.weight"] = torch.cat([sd[att + f"{p}.weight"] for p in ("query", "key", "value")])
        out[b + "attn.q_bias"] = bias(att, "query")
        out[b + "attn.v_bias"] = bias(att, "value")
        for hf_name, name in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                              ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                              ("output.dense", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{b}{name}.{kind}"] = sd[f"{hf}{hf_name}.{kind}"]
    if "layernorm.weight" in sd:  # VideoMAEModel without mean pooling: token norm
        out["norm.weight"], out["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    if getattr(model, "fc_norm", None) is not None:  # classification: fc_norm + head
        out["fc_norm.weight"] = model.fc_norm.weight.detach().clone()
        out["fc_norm.bias"] = model.fc_norm.bias.detach().clone()
        out["head.weight"] = model.classifier.weight.detach().clone()
        out["head.bias"] = model.classifier.bias.detach().clone()
    return out


@torch.no_grad()
def official_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, eps: float = 1e-6):
    """The official VideoMAE encoder forward written out from its state dict (final tokens)."""
    w = sd["patch_embed.proj.weight"]
    tokens = F.conv3d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    b, n, d = tokens.shape
    tokens = tokens + transformers.models.videomae.modeling_videomae.get_sinusoid_encoding_table(n, d)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))

    def ln(t, name):
        return F.layer_norm(t, (d,), sd[name + ".weight"], sd[name + ".bias"], eps)

    for i in range(depth):
        p = f"blocks.{i}."
        qkv_bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(d), sd[p + "attn.v_bias"]])
        qkv = F.linear(ln(tokens, p + "norm1"), sd[p + "attn.qkv.weight"], qkv_bias)
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"],
                       sd[p + "attn.proj.bias"])
        tokens = tokens + sd.get(p + "gamma_1", 1.0) * out
        hidden = F.gelu(F.linear(ln(tokens, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        out = F.linear(hidden, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        tokens = tokens + sd.get(p + "gamma_2", 1.0) * out
    return ln(tokens, "norm") if "norm.weight" in sd else tokens


def _encode(encoder, x):
    with torch.no_grad():
        return encoder.forward_tokens(x), encoder(x)


# ---------------------------------------------------------------- Hugging Face layout


@pytest.fixture(scope="module", params=[True, False], ids=["mean_pooling", "token_norm"])
def hf_tiny(request, tmp_path_factory):
    """A tiny random VideoMAEModel saved with save_pretrained, and its reference tokens."""
    model = _hf_model(TINY, use_mean_pooling=request.param)
    if request.param:
        assert model.layernorm is None
    else:
        assert model.layernorm is not None
    out = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(out)
    x = _clip(TINY)
    return out, x, _hf_tokens(model, x), model


@pytest.mark.parametrize("where", ["directory", "safetensors_file"])
def test_hf_videomae_checkpoint_matches_transformers_tokens(hf_tiny, where):
    out, x, expected, _ = hf_tiny
    path = out if where == "directory" else out / "model.safetensors"
    encoder = load_encoder(checkpoint=path)
    tokens, pooled = _encode(encoder, x)
    assert _max_diff(tokens, expected) < TOL
    assert _max_diff(pooled, expected.mean(dim=1)) < TOL  # VideoMAEModel has no fc_norm
    cfg = encoder.config
    assert (cfg.clip_len, cfg.input_size, cfg.tubelet) == (4, (32, 32), (2, 8, 8))
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden) == (64, 2, 4, 128)
    assert encoder.blocks[0].norm1.eps == 1e-12  # from config.json
    assert encoder.checkpoint_sha256 == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_hf_model_changed_weights_change_tokens(hf_tiny, tmp_path):
    """Guard for the parity test itself: a perturbed q_bias must move the tokens past TOL."""
    out, x, expected, model = hf_tiny
    model = _hf_model(TINY, use_mean_pooling=model.layernorm is None)
    with torch.no_grad():
        sd = _hf_state(model)
        key = next(k for k in sd if k.endswith("0.attention.attention.q_bias") or
                   k.endswith("0.attention.attention.query.bias"))
        sd[key] = sd[key] + 0.5
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((out / "config.json").read_text())
    tokens, _ = _encode(load_encoder(checkpoint=tmp_path), x)
    assert _max_diff(tokens, expected) > 1e-2


@pytest.fixture(scope="module", params=[True, False], ids=["mean_pooling", "token_norm"])
def hf_inferable(request, tmp_path_factory):
    """A bare model.safetensors (no config.json) of a model inferable from its shapes."""
    model = _hf_model(INFERABLE, seed=3, use_mean_pooling=request.param)
    out = tmp_path_factory.mktemp("hf_bare")
    model.save_pretrained(out)
    (out / "config.json").unlink()
    x = _clip(INFERABLE, batch=1)
    return out / "model.safetensors", x, _hf_tokens(model, x), model


def test_bare_hf_safetensors_without_config_infers_architecture_and_matches(hf_inferable):
    path, x, expected, model = hf_inferable
    encoder = load_encoder(checkpoint=path)
    cfg = encoder.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden) == (128, 2, 2, 320)
    assert (cfg.patch_size, cfg.tubelet_size, cfg.clip_len, cfg.input_size) == (32, 4, 16, (224, 224))
    assert cfg.final_norm == ("none" if model.layernorm is None else "norm")
    assert encoder.blocks[0].norm1.eps == 1e-12  # Hugging Face default when config.json is absent
    tokens, pooled = _encode(encoder, x)
    assert _max_diff(tokens, expected) < TOL
    assert _max_diff(pooled, expected.mean(dim=1)) < TOL


def test_hf_in_memory_state_dict_names_load(tmp_path):
    """transformers 5 names the q/v biases query.bias/value.bias in memory; a plain state dict
    saved from model.state_dict() must load too (and a non-zero key bias is refused)."""
    model = _hf_model(TINY, seed=5)
    sd = _hf_state(model)
    save_file(sd, str(tmp_path / "weights.safetensors"))
    model.config.to_json_file(tmp_path / "config.json")
    x = _clip(TINY)
    tokens, _ = _encode(load_encoder(checkpoint=tmp_path / "weights.safetensors"), x)
    assert _max_diff(tokens, _hf_tokens(model, x)) < TOL

    sd["encoder.layer.0.attention.attention.key.bias"] = torch.ones(64)
    save_file(sd, str(tmp_path / "weights.safetensors"))
    with pytest.raises(AnonfeatError, match="key.bias|k_linear_bias"):
        load_encoder(checkpoint=tmp_path / "weights.safetensors")


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    model = _hf_model(TINY, seed=7, classification=True, use_mean_pooling=True)
    out = tmp_path_factory.mktemp("hf_cls")
    model.save_pretrained(out)
    return out, model


def test_hf_classification_layout_pooled_equals_fc_norm_of_mean(hf_classifier):
    out, model = hf_classifier
    x = _clip(TINY)
    encoder = load_encoder(checkpoint=out)
    tokens, pooled = _encode(encoder, x)
    expected_tokens = _hf_tokens(model, x)
    with torch.no_grad():
        expected_pooled = model.fc_norm(expected_tokens.mean(dim=1))
        logits = model(pixel_values=x.transpose(1, 2)).logits
    assert _max_diff(tokens, expected_tokens) < TOL
    assert _max_diff(pooled, expected_pooled) < TOL
    assert _max_diff(model.classifier(pooled), logits) < TOL
    # Known, negligible gap: transformers builds this fc_norm as nn.LayerNorm(hidden) (eps 1e-5, not
    # config.layer_norm_eps); anonfeat uses the config's 1e-12. Here that moves pooled values ~7e-6.


# ---------------------------------------------------------------- official .pth layout


@pytest.fixture(scope="module")
def official_models():
    """HF models with the official eps (1e-6), for conversion to the official key layout:
    a fine-tuned one (fc_norm + head) and a pretraining encoder (token norm)."""
    finetuned = _hf_model(INFERABLE, seed=11, classification=True, use_mean_pooling=True,
                          layer_norm_eps=1e-6)
    with torch.no_grad():
        finetuned.fc_norm.eps = 1e-6  # the official fc_norm is LayerNorm(eps=1e-6) too
    pretrained = _hf_model(INFERABLE, seed=12, use_mean_pooling=False, layer_norm_eps=1e-6)
    x = _clip(INFERABLE, batch=1)
    return {"finetuned": (finetuned, hf_to_official(finetuned)),
            "pretrained": (pretrained, hf_to_official(pretrained)), "x": x}


def _official_file(kind: str, official: dict, path: Path) -> Path:
    if kind == "model":
        obj = {"model": official, "epoch": torch.tensor(3)}
    elif kind == "module_encoder_decoder":
        obj = {"module": {**{f"encoder.{k}": v for k, v in official.items()},
                          "decoder.blocks.0.mlp.fc1.weight": torch.randn(8, 4),
                          "decoder.norm.weight": torch.ones(4), "decoder.head.weight": torch.randn(6, 4),
                          "encoder_to_decoder.weight": torch.randn(4, 128),
                          "mask_token": torch.zeros(1, 1, 4)}}
    elif kind == "backbone":
        obj = {f"backbone.{k}": v for k, v in official.items()}
    else:
        raise ValueError(kind)
    torch.save(obj, path)
    return path


def test_official_reference_forward_matches_transformers(official_models):
    """Sanity check of this file's HF -> official conversion and official forward."""
    x = official_models["x"]
    for model, official in (official_models["finetuned"], official_models["pretrained"]):
        assert _max_diff(official_tokens(official, x, heads=2), _hf_tokens(model, x)) < TOL


@pytest.mark.parametrize("variant", ["finetuned", "pretrained"])
@pytest.mark.parametrize("kind", ["model", "module_encoder_decoder", "backbone"])
def test_official_pth_layouts_match_transformers(official_models, variant, kind, tmp_path):
    model, official = official_models[variant]
    x = official_models["x"]
    path = _official_file(kind, official, tmp_path / "checkpoint.pth")
    encoder = load_encoder(checkpoint=path)
    cfg = encoder.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden) == (128, 2, 2, 320)
    assert (cfg.patch_size, cfg.tubelet_size, cfg.clip_len, cfg.input_size) == (32, 4, 16, (224, 224))
    assert cfg.final_norm == ("fc_norm" if variant == "finetuned" else "norm")
    assert encoder.blocks[0].norm1.eps == 1e-6
    tokens, pooled = _encode(encoder, x)
    expected = _hf_tokens(model, x)
    assert _max_diff(tokens, expected) < TOL
    with torch.no_grad():
        expected_pooled = model.fc_norm(expected.mean(1)) if variant == "finetuned" else expected.mean(1)
    assert _max_diff(pooled, expected_pooled) < TOL
    assert encoder.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_official_pth_with_layer_scale_matches_reference_forward(official_models, tmp_path):
    _, official = official_models["pretrained"]
    x = official_models["x"]
    gen = torch.Generator().manual_seed(4)
    scaled = dict(official)
    for i in range(2):
        scaled[f"blocks.{i}.gamma_1"] = 0.5 + 0.3 * torch.randn(128, generator=gen)
        scaled[f"blocks.{i}.gamma_2"] = 0.5 + 0.3 * torch.randn(128, generator=gen)
    torch.save({"model": scaled}, tmp_path / "ls.pth")
    torch.save({"model": official}, tmp_path / "plain.pth")
    tokens, _ = _encode(load_encoder(checkpoint=tmp_path / "ls.pth"), x)
    plain, _ = _encode(load_encoder(checkpoint=tmp_path / "plain.pth"), x)
    assert _max_diff(tokens, official_tokens(scaled, x, heads=2)) < TOL
    assert _max_diff(tokens, plain) > 1e-2  # the gammas are used, not dropped


def test_official_pth_loads_with_explicit_registry_name(tmp_path):
    """A registry-sized official checkpoint loads by name and by inference, to the same weights."""
    cfg = get_config("videomae-tiny")
    source = build_encoder(cfg, seed=9)
    torch.save({"model": source.state_dict()}, tmp_path / "tiny.pth")
    named = load_encoder("videomae-tiny", checkpoint=tmp_path / "tiny.pth")
    inferred = load_encoder(checkpoint=tmp_path / "tiny.pth")
    assert inferred.config.name == "videomae-tiny"
    assert inferred.config == named.config == cfg
    named_state, source_state = named.state_dict(), source.state_dict()
    assert all(torch.equal(named_state[k], source_state[k]) for k in source_state)
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        assert _max_diff(inferred(x), source(x)) == 0


# ---------------------------------------------------------------- architecture inference


@pytest.mark.parametrize("name", ["videomae-h", "videomaev2-g"])
def test_shape_inference_uses_registry_heads_where_dim_over_64_is_wrong(name):
    """ViT-H (1280/16 heads) and ViT-g (1408/16 heads, patch 14, mlp 48/11) from shapes only."""
    expected = get_config(name)
    with torch.device("meta"):
        state = VideoViT(expected).state_dict()
    cfg = infer_config(state, None, "official")
    assert cfg.name == name
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.tubelet_size, cfg.mlp_hidden) == \
        (expected.embed_dim, expected.depth, expected.num_heads, expected.patch_size,
         expected.tubelet_size, expected.mlp_hidden)
    assert expected.num_heads != expected.embed_dim // 64


# ---------------------------------------------------------------- errors


def _tiny_official(model=None) -> dict[str, torch.Tensor]:
    return hf_to_official(model or _hf_model(INFERABLE, seed=13, use_mean_pooling=False))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    official = _tiny_official()
    del official["blocks.1.mlp.fc2.bias"]
    official["blocks.0.attn.relative_position_bias_table"] = torch.zeros(3, 2)
    torch.save({"model": official}, tmp_path / "bad.pth")
    with pytest.raises(AnonfeatError) as info:
        load_encoder(checkpoint=tmp_path / "bad.pth")
    message = str(info.value)
    assert "missing" in message and "blocks.1.mlp.fc2.bias" in message
    assert "unexpected" in message and "blocks.0.attn.relative_position_bias_table" in message
    assert "bad.pth" in message


def test_wrong_shapes_are_named(tmp_path):
    official = _tiny_official()
    official["blocks.1.norm2.weight"] = torch.ones(127)
    torch.save(official, tmp_path / "bad.pth")
    with pytest.raises(AnonfeatError, match=r"wrong shapes.*blocks\.1\.norm2\.weight"):
        load_encoder(checkpoint=tmp_path / "bad.pth")


def test_checkpoint_not_fitting_named_encoder_is_refused(hf_classifier):
    out, _ = hf_classifier
    with pytest.raises(AnonfeatError) as info:
        load_encoder("videomae-tiny", checkpoint=out)
    message = str(info.value)
    assert "missing keys" in message and "blocks.2.attn.proj.bias" in message  # tiny has 4 blocks, this 2
    assert "wrong shapes" in message and "blocks.0.attn.qkv.weight (192, 64) vs (576, 192)" in message


def test_non_videomae_checkpoint_without_name_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(AnonfeatError, match="VideoMAE"):
        load_encoder(checkpoint=tmp_path / "other.pth")


class _Payload:
    """Unpickling this creates a marker file: stands in for arbitrary code in a .pth."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("form", ["zip", "legacy", "raw_pickle"])
def test_pth_whose_pickle_runs_code_is_refused_and_code_does_not_run(tmp_path, form):
    def write(marker: Path, path: Path) -> Path:
        obj = {"model": {"patch_embed.proj.weight": torch.zeros(1)}, "args": _Payload(marker)}
        if form == "raw_pickle":
            path.write_bytes(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path, _use_new_zipfile_serialization=form == "zip")
        return path

    # The payload is live: a plain unpickling runs it.
    probe_marker = tmp_path / "probe-ran"
    probe = write(probe_marker, tmp_path / "probe.pth")
    if form == "raw_pickle":
        pickle.loads(probe.read_bytes())["args"].close()
    else:
        torch.load(probe, weights_only=False)["args"].close()
    assert probe_marker.exists()

    marker = tmp_path / "payload-ran"
    path = write(marker, tmp_path / "evil.pth")
    with pytest.raises(AnonfeatError, match="refused"):
        load_encoder(checkpoint=path)
    assert not marker.exists()
    with pytest.raises(AnonfeatError):
        load_encoder("timm:test_vit", checkpoint=path)
    assert not marker.exists()


def test_corrupt_and_missing_files_give_clear_errors(tmp_path, hf_classifier):
    good = tmp_path / "good.pth"
    torch.save({"model": _tiny_official()}, good)
    cases = {
        "garbage.pth": b"this is not a checkpoint at all" * 10,
        "truncated.pth": good.read_bytes()[: len(good.read_bytes()) // 2],
        "empty.pth": b"",
        "garbage.safetensors": b"\xff" * 64,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AnonfeatError, match=name.replace(".", r"\.")):
            load_encoder(checkpoint=tmp_path / name)
    with pytest.raises(AnonfeatError, match="no such"):
        load_encoder(checkpoint=tmp_path / "absent.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(AnonfeatError, match="model.safetensors"):
        load_encoder(checkpoint=tmp_path / "empty_dir")
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "model.safetensors").write_bytes((hf_classifier[0] / "model.safetensors").read_bytes())
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(AnonfeatError, match="config.json"):
        load_encoder(checkpoint=bad_config)
    torch.save({"model": {"a": 1}}, tmp_path / "not_tensors.pth")
    with pytest.raises(AnonfeatError, match="state dict"):
        load_encoder(checkpoint=tmp_path / "not_tensors.pth")


def test_no_checkpoint_without_random_init_is_an_error():
    with pytest.raises(AnonfeatError, match="checkpoint"):
        load_encoder("videomae-tiny")
    with pytest.raises(AnonfeatError):
        load_encoder()
    with pytest.raises(AnonfeatError, match="encoder"):
        load_encoder(random_init=True)  # random weights of what?


@pytest.mark.parametrize("name", ["videomae-xxl", "vit_base", "timm:no_such_model_xyz"])
def test_unknown_encoder_name_is_an_error(name):
    with pytest.raises(AnonfeatError, match="no_such_model_xyz|unknown encoder"):
        load_encoder(name, random_init=True)


# ---------------------------------------------------------------- random init, registry


def test_random_init_is_deterministic_and_shapes_are_documented():
    a = load_encoder("videomae-tiny", random_init=True)
    b = load_encoder("videomae-tiny", random_init=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = build_encoder(get_config("videomae-tiny"), seed=1).state_dict()
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    cfg = a.config
    assert (cfg.clip_len, cfg.input_size, cfg.tubelet) == (16, (112, 112), (2, 16, 16))
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert isinstance(a.checkpoint_sha256, str) and a.checkpoint_sha256
    x = torch.randn(2, 3, 16, 112, 112)
    tokens, pooled = _encode(a, x)
    assert tokens.shape == (2, 392, 192)
    assert pooled.shape == (2, 192)
    assert _max_diff(pooled, a.fc_norm(tokens.mean(dim=1))) == 0  # registry encoders: fc_norm pooling
    assert torch.isfinite(pooled).all()


def _analytic_parameter_count(cfg) -> int:
    d, h = cfg.embed_dim, cfg.mlp_hidden
    t, p, _ = cfg.tubelet
    block = (3 * d * d + 2 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d  # attn, mlp, 2 norms
    return 3 * t * p * p * d + d + cfg.depth * block + 2 * d  # tubelet conv, blocks, fc_norm


def test_parameter_count_videomae_b_is_86_2_million():
    names = ("videomae-b", "videomae-l", "videomaev2-g")
    counts = {name: parameter_count(get_config(name)) for name in names}
    assert abs(counts["videomae-b"] - 86.2e6) < 0.1e6
    assert abs(counts["videomaev2-g"] - 1.01e9) < 0.01e9
    for name, n in counts.items():
        assert n == _analytic_parameter_count(get_config(name)), name


# ---------------------------------------------------------------- timm framewise encoders


@pytest.mark.parametrize(("model_name", "batch"), [("vit_tiny_patch16_224", 1), ("test_vit", 2)])
def test_timm_encoder_is_frame_mean_of_timm_pooled_output(model_name, batch):
    encoder = load_encoder(f"timm:{model_name}", random_init=True)
    reference = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
    reference.load_state_dict(encoder.model.state_dict())
    size, dim = encoder.config.img_size, reference.num_features
    x = torch.randn(batch, 3, 2, size, size)
    with torch.no_grad():
        pooled = encoder(x)
        expected = torch.stack([reference(x[:, :, t]) for t in range(x.shape[2])], dim=1).mean(dim=1)
        tokens = encoder.forward_tokens(x[:1])
        frame_tokens = reference.forward_features(x[:1, :, 1])
    assert pooled.shape == (batch, dim)
    assert _max_diff(pooled, expected) < TOL
    n = frame_tokens.shape[1]
    assert tokens.shape == (1, 2 * n, dim)
    assert _max_diff(tokens[:, n:], frame_tokens) < TOL  # frame 1's tokens follow frame 0's
    cfg = encoder.config
    assert cfg.family == "timm" and cfg.embed_dim == dim
    assert cfg.input_size == tuple(reference.pretrained_cfg["input_size"][1:])
    assert cfg.mean == tuple(reference.pretrained_cfg["mean"])
    assert cfg.std == tuple(reference.pretrained_cfg["std"])


def test_timm_vit_tiny_config_describes_its_input():
    cfg = get_config("timm:vit_tiny_patch16_224")  # built on the meta device: no weights, no download
    assert (cfg.family, cfg.timm_model, cfg.embed_dim) == ("timm", "vit_tiny_patch16_224", 192)
    assert (cfg.clip_len, cfg.input_size, cfg.tubelet) == (16, (224, 224), (1, 16, 16))


@pytest.mark.parametrize("model_name", ["test_vit", "test_convnext"])
def test_timm_plain_state_dict_loads_through_checkpoint(model_name, tmp_path):
    """A classifier's state dict (head included) loads; the head is dropped, the rest kept."""
    source = timm.create_model(model_name, pretrained=False, num_classes=10).eval()
    torch.manual_seed(21)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "timm.pth"
    torch.save(source.state_dict(), path)
    encoder = load_encoder(f"timm:{model_name}", checkpoint=path)
    source.reset_classifier(0)
    size = encoder.config.img_size
    x = torch.randn(1, 3, 2, size, size)
    with torch.no_grad():
        expected = (source(x[:, :, 0]) + source(x[:, :, 1])) / 2
        assert _max_diff(encoder(x), expected) < TOL
    assert encoder.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(AnonfeatError, match="VideoMAE"):  # without the name it is no VideoMAE
        load_encoder(checkpoint=path)


def test_bundled_demo_encoder_loads_without_flags():
    """videomae-demo ships its weights: no --checkpoint and no --random-init needed."""
    from anonfeat.encoders import BUNDLED_WEIGHTS
    from anonfeat.encoders.checkpoints import file_sha256

    enc = load_encoder("videomae-demo")
    assert enc.checkpoint_sha256 == file_sha256(BUNDLED_WEIGHTS["videomae-demo"])
    assert enc.config.img_size == 64 and enc.config.embed_dim == 128
    random = load_encoder("videomae-demo", random_init=True)
    x = torch.randn(2, 3, 16, 64, 64)
    assert enc(x).shape == (2, 128)
    assert not torch.allclose(enc(x), random(x), atol=1e-3)  # the trained weights are really used


def test_tubelet_matmul_path_equals_the_convolution():
    """The CUDA path (tubelets as rows of one matrix product) gives the Conv3d's tokens, in its order."""
    encoder = load_encoder("videomae-tiny", random_init=True, device="cpu")
    embed = encoder.patch_embed
    x = torch.randn(2, 3, 16, 112, 112)
    with torch.no_grad():
        conv = embed(x)  # CPU: the convolution
        torch.testing.assert_close(embed.as_matmul(x), conv, atol=1e-5, rtol=1e-5)
    assert conv.shape == (2, encoder.config.num_tokens, encoder.config.embed_dim)
