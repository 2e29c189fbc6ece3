"""Choosing the device and the autocast precision."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from kdmt.errors import KdmtError


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given (cpu, cuda, cuda:1), else CUDA when present, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdmtError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdmtError("--device cuda was asked for, but no CUDA device is available")
    return device


def autocast(device: torch.device, bf16: bool = True) -> AbstractContextManager:
    """bf16 autocast on CUDA (when `bf16`), full precision elsewhere."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
