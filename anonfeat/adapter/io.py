"""The adapter file: one .safetensors with the weights and a JSON config in its metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from anonfeat.adapter.model import AnonymizingAdapter
from anonfeat.encoders.checkpoints import file_sha256
from anonfeat.errors import AnonfeatError
from anonfeat.store import StoreHeader

METADATA_KEY = "anonfeat_adapter"
FORMAT = "anonfeat-adapter/1"


@dataclass
class LoadedAdapter:
    model: AnonymizingAdapter
    config: dict  # architecture, encoder identity, training flags, metrics
    sha256: str
    path: Path

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


def save_adapter(model: AnonymizingAdapter, path: str | Path, config: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **model.architecture(), **config}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    tmp.replace(path)  # never leave a half-written adapter under the final name
    return path


def load_adapter(path: str | Path, device: str | torch.device = "cpu") -> LoadedAdapter:
    """Read an adapter file; wrong shapes or a foreign file are refused naming the tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AnonfeatError(f"{path}: no such adapter file; train one with `anonfeat train-adapter`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AnonfeatError(f"{path}: not a readable adapter (.safetensors) file ({exc})") from None
    if METADATA_KEY not in meta:
        raise AnonfeatError(f"{path}: a safetensors file without anonfeat adapter metadata; "
                            "pass a file written by `anonfeat train-adapter`")
    config = json.loads(meta[METADATA_KEY])
    model = AnonymizingAdapter(config["dim"], config["depth"], config["num_heads"], config["mlp_ratio"])
    expected = model.state_dict()
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        parts = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:4]]
        parts += [f"missing {k}" for k in missing[:4]] + [f"unexpected {k}" for k in unexpected[:4]]
        raise AnonfeatError(f"{path}: adapter tensors do not fit its config: {'; '.join(parts)}")
    model.load_state_dict(state)
    return LoadedAdapter(model.to(device).eval(), config, file_sha256(path), path)
