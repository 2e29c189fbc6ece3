"""Training objectives: what a training step minimises, plugged into the one trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from kdmt.model import Transformer
from kdmt.vocab import PAD


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids, EOS-terminated, PAD-padded
    tgt_in: Tensor  # (B, T) BOS + target
    tgt_out: Tensor  # (B, T) target + EOS
    ntokens: int  # target tokens (not PAD)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.ntokens)


class Objective(Protocol):
    def __call__(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """The loss summed over the batch's target tokens, and figures (sums) to log."""
        ...


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, each summed over non-PAD targets (fairseq's form)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    mask = target != PAD
    nll = -lprobs.gather(-1, target[..., None]).squeeze(-1)[mask]
    smooth = -lprobs.mean(-1)[mask]
    return ((1 - epsilon) * nll + epsilon * smooth).sum(), nll.sum()


class CrossEntropy:
    """Label-smoothed cross-entropy against the reference: the teacher's (and a baseline student's) objective."""

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = label_smoothing

    def __call__(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss, nll = label_smoothed_nll(model(batch.src, batch.tgt_in), batch.tgt_out, self.label_smoothing)
        return loss, {"nll": float(nll.detach())}
