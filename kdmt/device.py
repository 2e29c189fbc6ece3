"""Choosing the device and the autocast precision."""

from __future__ import annotations

import platform
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


def describe_device(device: torch.device) -> str:
    """The hardware in words, for benchmark reports: the GPU's name, or the CPU model and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"
