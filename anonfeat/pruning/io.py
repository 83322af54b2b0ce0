"""The pruner file: one .safetensors with the weights and, in its metadata, the PrunerConfig plus
training facts (backbone source, flags, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.encoders.checkpoints import file_sha256
from anonfeat.errors import AnonfeatError
from anonfeat.modelfile import build_checked, read_model_file, save_model_file
from anonfeat.pruning.model import PrunerConfig, TubeletPruner

METADATA_KEY = "anonfeat_pruner"
FORMAT = "anonfeat-pruner/1"


@dataclass
class LoadedPruner:
    model: TubeletPruner
    info: dict  # training flags, sampling, metrics, backbone source
    sha256: str
    path: Path

    @property
    def config(self) -> PrunerConfig:
        return self.model.config

    @property
    def training_videos(self) -> tuple[str, ...] | None:
        """Label ids of the videos it was trained on (None: a file written before they were recorded)."""
        videos = self.info.get("training_videos")
        return None if videos is None else tuple(str(v) for v in videos)


def save_pruner(model: TubeletPruner, path: str | Path, info: dict) -> Path:
    meta = {"format": FORMAT, "pruner": model.config.to_dict(), **info}
    return save_model_file(model.state_dict(), path, METADATA_KEY, meta)


def _check_info(info: dict, path: Path) -> None:
    """The training facts later steps read (sampling, source encoder, training videos): their types."""
    def fail(detail: str) -> None:
        raise AnonfeatError(f"{path}: its pruner metadata {detail}; re-train it with `anonfeat train-pruner`")

    if not isinstance(info.get("sampling", {}), dict):
        fail(f"has sampling={info['sampling']!r}, not an object")
    backbone = info.get("backbone", {})
    source = ("name", "encoder", "checkpoint", "checkpoint_sha256")
    if not isinstance(backbone, dict) or not all(isinstance(backbone.get(k), (str, type(None))) for k in source):
        fail(f"has backbone={backbone!r}, not {{name, encoder, checkpoint, checkpoint_sha256}} strings")
    videos = info.get("training_videos")
    if videos is not None and not (isinstance(videos, list) and all(isinstance(v, (str, int)) for v in videos)):
        fail("has training_videos that are not a list of video ids")


def load_pruner(path: str | Path, device: str | torch.device = "cpu") -> LoadedPruner:
    path = Path(path)
    state, meta = read_model_file(path, METADATA_KEY, "pruner", "anonfeat train-pruner")
    if meta.get("format") != FORMAT or not isinstance(meta.get("pruner"), dict):
        raise AnonfeatError(f"{path}: pruner format {meta.get('format')!r} is not {FORMAT}; "
                            "re-train it with this version's `anonfeat train-pruner`")
    model = build_checked(lambda: TubeletPruner(PrunerConfig.from_dict(meta["pruner"])), state, path, "pruner",
                          "anonfeat train-pruner")
    info = {k: v for k, v in meta.items() if k not in ("format", "pruner")}
    _check_info(info, path)
    return LoadedPruner(model.to(device).eval(), info, file_sha256(path), path)
