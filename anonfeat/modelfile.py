"""Model files (adapters, pruners): one .safetensors holding the weights and a JSON config in its
metadata. Safetensors cannot carry code, so loading a file from someone else runs nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from anonfeat.errors import AnonfeatError


def save_model_file(state: dict[str, torch.Tensor], path: str | Path, metadata_key: str, config: dict) -> Path:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={metadata_key: json.dumps(config, sort_keys=True)})
    tmp.replace(path)
    return path


def read_model_file(path: str | Path, metadata_key: str, what: str, command: str
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of a file written by `save_model_file`; anything else is refused with an error
    naming the file and the command (`command`) that makes the right kind of file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AnonfeatError(f"{path}: no such {what} file; make one with `{command}`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AnonfeatError(f"{path}: not a readable {what} (.safetensors) file ({exc})") from None
    if metadata_key not in meta:
        raise AnonfeatError(f"{path}: a safetensors file without anonfeat {what} metadata; "
                            f"pass a file written by `{command}`")
    try:
        config = json.loads(meta[metadata_key])
    except ValueError:
        raise AnonfeatError(f"{path}: its {what} metadata is not valid JSON; re-create it with `{command}`") from None
    if not isinstance(config, dict):
        raise AnonfeatError(f"{path}: its {what} metadata is a JSON {type(config).__name__}, not an object; "
                            f"re-create it with `{command}`")
    return state, config


def build_checked(factory: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], path: str | Path,
                  what: str, command: str) -> torch.nn.Module:
    """The model `factory` builds from a file's metadata, loaded with the file's tensors, or one line saying
    why not. The metadata is checked against the tensors' shapes on a skeleton on the "meta" device (no
    memory: metadata claiming dim 200000 costs nothing), and every weight must be finite, before the real
    model is built. Metadata of the wrong types or nesting is refused, never a traceback."""
    try:
        with torch.device("meta"):
            skeleton = factory()
    except AnonfeatError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, AssertionError,
            RuntimeError, OverflowError) as exc:
        raise AnonfeatError(f"{path}: its {what} metadata does not describe a model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else 'malformed'}); re-create it with "
                            f"`{command}`") from None
    check_state_shapes(skeleton, state, path, what)
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise AnonfeatError(f"{path}: {what} weights hold NaN or Inf ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}); re-train it with `{command}`")
    model = factory()
    model.load_state_dict(state)
    return model


def check_state_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Refuse `state` unless it holds exactly `model`'s tensors with their shapes; the first few misfits named."""
    expected = model.state_dict()
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        parts = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:4]]
        parts += [f"missing {k}" for k in missing[:4]] + [f"unexpected {k}" for k in unexpected[:4]]
        raise AnonfeatError(f"{path}: {what} tensors do not fit its config: {'; '.join(parts)}")

