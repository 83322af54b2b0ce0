"""The adapter file: one .safetensors with the weights and a JSON config in its metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.adapter.leace import KIND as LEACE, LinearEraser
from anonfeat.adapter.model import AnonymizingAdapter
from anonfeat.encoders.checkpoints import file_sha256
from anonfeat.errors import AnonfeatError
from anonfeat.modelfile import load_checked_state, read_model_file, save_model_file
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
        enc = self.config["encoder"]
        theirs = {"encoder": header.encoder, "checkpoint_sha256": header.checkpoint_sha256, "dim": header.dim}
        ours = {"encoder": enc["name"], "checkpoint_sha256": enc["checkpoint_sha256"], "dim": self.config["dim"]}
        wrong = [k for k in ours if ours[k] != theirs[k]]
        if wrong:
            detail = ", ".join(f"{k} {theirs[k]} (adapter: {ours[k]})" for k in wrong)
            raise AnonfeatError(f"{source}: features do not fit adapter {self.path.name}: {detail}; "
                                "train an adapter on features of this encoder with `anonfeat train-adapter`")
        if header.features != "raw":
            raise AnonfeatError(f"{source}: features are already {header.features}; sanitize raw features only")


def save_adapter(model: AnonymizingAdapter | LinearEraser, path: str | Path, config: dict) -> Path:
    return save_model_file(model.state_dict(), path, METADATA_KEY, {"format": FORMAT, **model.architecture(), **config})


def _build(config: dict, path: Path) -> AnonymizingAdapter | LinearEraser:
    """The empty model a config describes; its tensors are then checked against it."""
    kind = config.get("kind", AAM)
    if kind not in KINDS:
        raise AnonfeatError(f"{path}: adapter kind {kind!r} is not one this anonfeat knows ({', '.join(KINDS)}); "
                            "upgrade anonfeat or re-train with `anonfeat train-adapter`")
    if kind == LEACE:
        return LinearEraser(config["dim"], config["rank"])
    return AnonymizingAdapter(config["dim"], config["depth"], config["num_heads"], config["mlp_ratio"])


def load_adapter(path: str | Path, device: str | torch.device = "cpu") -> LoadedAdapter:
    """Read an adapter file; wrong shapes or a foreign file are refused naming the tensors."""
    path = Path(path)
    state, config = read_model_file(path, METADATA_KEY, "adapter", "anonfeat train-adapter")
    try:
        model = _build(config, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnonfeatError(f"{path}: adapter config is incomplete or malformed ({type(exc).__name__}: {exc}); "
                            "re-create it with `anonfeat train-adapter`") from None
    load_checked_state(model, state, path, "adapter")
    return LoadedAdapter(model.to(device).eval(), config, file_sha256(path), path)
