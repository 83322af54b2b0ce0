"""The pruner file: one .safetensors with the weights and, in its metadata, the PrunerConfig plus
training facts (backbone source, flags, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.encoders.checkpoints import file_sha256
from anonfeat.errors import AnonfeatError
from anonfeat.modelfile import load_checked_state, read_model_file, save_model_file
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


def load_pruner(path: str | Path, device: str | torch.device = "cpu") -> LoadedPruner:
    path = Path(path)
    state, meta = read_model_file(path, METADATA_KEY, "pruner", "anonfeat train-pruner")
    if meta.get("format") != FORMAT or "pruner" not in meta:
        raise AnonfeatError(f"{path}: pruner format {meta.get('format')!r} is not {FORMAT}; "
                            "re-train it with this version's `anonfeat train-pruner`")
    model = TubeletPruner(PrunerConfig.from_dict(meta["pruner"]))
    load_checked_state(model, state, path, "pruner")
    info = {k: v for k, v in meta.items() if k not in ("format", "pruner")}
    return LoadedPruner(model.to(device).eval(), info, file_sha256(path), path)
