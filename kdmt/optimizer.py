"""The optimizer and its learning-rate schedule: AdamW with inverse-square-root warmup."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kdmt.train import TrainConfig


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `parameters` with --lr, --adam-betas and --weight-decay (the rate is set each step)."""
    return torch.optim.AdamW(parameters, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step = max(step, 1)
    return peak * min(step / max(warmup, 1), math.sqrt(max(warmup, 1) / step))


def set_lr(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> float:
    """Set the learning rate of optimizer step `step` (from 1) by the schedule; the rate."""
    lr = inverse_sqrt_lr(step, config.lr, config.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
