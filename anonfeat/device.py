"""Choosing the compute device and precision in one place."""

from __future__ import annotations

import torch

from anonfeat.errors import AnonfeatError


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" picks the first GPU when there is one, else the CPU; "cuda:N"/"cpu" are checked."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise AnonfeatError(f"--device {spec!r} is not a device; use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AnonfeatError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AnonfeatError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def rank_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of a rank. One process: `spec` as usual. Under a launcher, `auto` and `cuda[:N]`
    both mean "this rank's GPU", cuda:LOCAL_RANK (one GPU per rank); `cpu` stays on the CPU.
    With `functools.partial(rank_device, spec)`, the device picker of `anonfeat.comm.init_from_env`."""
    if world_size <= 1:
        return resolve_device(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AnonfeatError(f"--device {spec}: no CUDA GPU is visible to rank {local_rank}; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise AnonfeatError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                                "start at most one rank per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    return resolve_device(spec)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the encoders are trained in mixed precision); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def use_compile(spec: bool | None, device: torch.device) -> bool:
    """--compile default (None): on for CUDA, where it pays (videomae-b on an H200: 1.5x encode
    throughput, ~30 s of compiling once), off on the CPU (long compiles, little gain)."""
    return device.type == "cuda" if spec is None else spec


class CompiledForward:
    """`model`'s forward through torch.compile, falling back to eager once (with a warning) where
    compiling is impossible (no Triton or C++ compiler, an unsupported operator)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.compiled = torch.compile(model, dynamic=False)  # one batch shape: extract pads the last batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds; eager still works
                import warnings

                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                warnings.warn(f"torch.compile failed ({first}); running the model eagerly (--no-compile)",
                              RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.model(x)
