"""The adapter file: one .safetensors with the weights and a JSON config in its metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.adapter.leace import KIND as LEACE, LinearEraser
from anonfeat.adapter.model import AnonymizingAdapter
from anonfeat.encoders.checkpoints import file_sha256
from anonfeat.errors import AnonfeatError
from anonfeat.modelfile import build_checked, read_model_file, save_model_file
from anonfeat.store import StoreHeader

METADATA_KEY = "anonfeat_adapter"
FORMAT = "anonfeat-adapter/1"
AAM = "aam"
KINDS = (AAM, LEACE)  # config "kind"; files without one are AAM adapters


@dataclass
class LoadedAdapter:
    model: AnonymizingAdapter | LinearEraser
    config: dict  # kind, architecture, encoder identity, training flags and videos, metrics
    sha256: str
    path: Path

    @property
    def training_videos(self) -> tuple[str, ...] | None:
        """Label ids of the videos it was trained on (None: a file written before they were recorded)."""
        videos = self.config.get("training_videos")
        return None if videos is None else tuple(str(v) for v in videos)

    def check_store(self, header: StoreHeader, source: str | Path) -> None:
        """Refuse features from another encoder, checkpoint or dim than the adapter was trained on."""
        enc = self.config.get("encoder", {})
        theirs = {"encoder": header.encoder, "checkpoint_sha256": header.checkpoint_sha256, "dim": header.dim}
        ours = {"encoder": enc.get("name"), "checkpoint_sha256": enc.get("checkpoint_sha256"),
                "dim": self.config["dim"]}
        wrong = [k for k in ours if ours[k] != theirs[k]]
        if wrong:
            detail = ", ".join(f"{k} {theirs[k]} (adapter: {ours[k]})" for k in wrong)
            raise AnonfeatError(f"{source}: features do not fit adapter {self.path.name}: {detail}; "
                                "train an adapter on features of this encoder with `anonfeat train-adapter`")
        if header.features != "raw":
            raise AnonfeatError(f"{source}: features are already {header.features}; sanitize raw features only")


def _check_config(config: dict, path: Path) -> None:
    """The adapter metadata's kind, keys and types (the shapes are checked against the tensors next)."""
    def fail(detail: str) -> None:
        raise AnonfeatError(f"{path}: its adapter metadata {detail}; re-create it with `anonfeat train-adapter`")

    kind = config.get("kind", AAM)
    if kind not in KINDS:
        raise AnonfeatError(f"{path}: adapter kind {kind!r} is not one this anonfeat knows ({', '.join(KINDS)}); "
                            "upgrade anonfeat or re-train with `anonfeat train-adapter`")
    for key in ("dim", "rank") if kind == LEACE else ("dim", "depth", "num_heads"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"has {key}={value!r}, not a positive integer")
    if kind == AAM:
        ratio = config.get("mlp_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1e3:
            fail(f"has mlp_ratio={ratio!r}, not a positive number")
        if config["dim"] % config["num_heads"]:
            fail(f"has dim {config['dim']} not divisible by num_heads {config['num_heads']}")
    encoder = config.get("encoder", {})
    identity = ("name", "checkpoint_sha256")
    if not isinstance(encoder, dict) or not all(isinstance(encoder.get(k, ""), str) for k in identity):
        fail(f"has encoder={encoder!r}, not {{name, checkpoint_sha256}}")
    videos = config.get("training_videos")
    if videos is not None and not (isinstance(videos, list) and all(isinstance(v, (str, int)) for v in videos)):
        fail("has training_videos that are not a list of video ids")


def save_adapter(model: AnonymizingAdapter | LinearEraser, path: str | Path, config: dict) -> Path:
    return save_model_file(model.state_dict(), path, METADATA_KEY, {"format": FORMAT, **model.architecture(), **config})


def _build(config: dict) -> AnonymizingAdapter | LinearEraser:
    """The empty model a checked config describes; its tensors are then checked against it."""
    if config.get("kind", AAM) == LEACE:
        return LinearEraser(config["dim"], config["rank"])
    return AnonymizingAdapter(config["dim"], config["depth"], config["num_heads"], config["mlp_ratio"])


def load_adapter(path: str | Path, device: str | torch.device = "cpu") -> LoadedAdapter:
    """Read an adapter file; wrong shapes or a foreign file are refused naming the tensors."""
    path = Path(path)
    state, config = read_model_file(path, METADATA_KEY, "adapter", "anonfeat train-adapter")
    _check_config(config, path)
    model = build_checked(lambda: _build(config), state, path, "adapter", "anonfeat train-adapter")
    return LoadedAdapter(model.to(device).eval(), config, file_sha256(path), path)
