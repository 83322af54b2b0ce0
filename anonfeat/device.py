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


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the encoders are trained in mixed precision); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
