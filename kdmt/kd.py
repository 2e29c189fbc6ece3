"""The arithmetic of knowledge distillation: the teachers' distributions (online and averaged, routed per
language pair, stored top-k) and the distillation losses (word-level KL, hidden-state MSE).

Tensors and models in, tensors out: nothing here reads data, batches a corpus or runs a job, so that the
trainer's objectives (kdmt.objectives) and the soft-target job (kdmt.soft_targets) share one copy of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmt.errors import KdmtError
from kdmt.model import Hidden
from kdmt.vocab import PAD


# --- the teachers' distributions ---------------------------------------------------------------------
def teacher_distribution(logits: list[Tensor], weights: list[float], temperature: float) -> Tensor:
    """The teachers' soft targets: the weighted average of softmax(logits / T), (B, T, V), float32."""
    total = sum(weights)
    return sum(w / total * F.softmax(x.float() / temperature, dim=-1) for w, x in zip(weights, logits))


def top_k(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """A distribution cut to its k most probable tokens, renormalised, and their ids (B, T, k) each."""
    probs, index = probs.topk(k, dim=-1)
    return probs / probs.sum(-1, keepdim=True), index


def stored_distribution(logprobs: Tensor, temperature: float) -> Tensor:
    """Stored top-k log-probabilities (at T = 1) as the soft targets at temperature T, renormalised over the k."""
    return F.softmax(logprobs.float() / temperature, dim=-1)


def routed_logits(
    teachers: Sequence[nn.Module], src: Tensor, tgt_in: Tensor, pair_of: Tensor, rows: Tensor | None = None
) -> Tensor:
    """Each sentence's logits from its own pair's teacher (teacher i is pair i's), each teacher run on its
    pair's sentences alone; with `rows`, on those sentences alone, zeros elsewhere. At least one sentence
    must be taken."""
    out = torch.zeros(0)
    for p, teacher in enumerate(teachers):
        mine = pair_of == p if rows is None else (pair_of == p) & rows
        if mine.any():
            logits = teacher(src[mine], tgt_in[mine])
            if out.dim() == 1:
                out = logits.new_zeros(*tgt_in.shape, logits.size(-1))
            out[mine] = logits
    return out


class Teachers:
    """A student's teachers, frozen: run in eval mode without gradients, and kept in a plain list, so that
    they are neither trained nor saved with the student. Their soft targets are the average of their
    distributions weighted with `weights`; `routed` (several language pairs: teacher i is pair i's), each
    sentence's are its own pair's teacher's alone."""

    def __init__(self, models: Sequence[nn.Module], weights: list[float] | None = None, routed: bool = False):
        self.weights = weights or [1.0] * len(models)
        if len(self.weights) != len(models) or models and sum(self.weights) <= 0:
            raise KdmtError("give one weight per teacher, not all 0")
        self.models, self.routed = list(models), routed
        for t in self.models:
            t.eval().requires_grad_(False)

    @torch.no_grad()
    def logits(
        self,
        src: Tensor,
        tgt_in: Tensor,
        hidden: Hidden | None = None,
        pair_of: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> list[Tensor]:
        """Each teacher's logits, the first teacher's layer outputs into `hidden`; routed, one tensor: each
        sentence's from the teacher of its pair (`pair_of`), of the sentences `rows` alone (routed_logits)."""
        if self.routed:
            return [routed_logits(self.models, src, tgt_in, pair_of, rows)]
        return [t(src, tgt_in, hidden if i == 0 else None) for i, t in enumerate(self.models)]

    def distribution(
        self, logits: list[Tensor], temperature: float, k: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The soft targets at temperature T of their `logits`, and with `k` cut to the top k (top_k) with
        their ids (None: over the whole vocabulary)."""
        probs = teacher_distribution(logits, [1.0] if self.routed else self.weights, temperature)
        return top_k(probs, k) if k else (probs, None)


class StoredTargets(Protocol):
    """Soft targets computed beforehand (kdmt.soft_targets.SoftTargetStore): each target token's top-k."""

    def lookup(self, sentences: Tensor, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Top-k ids and log-probabilities (at T = 1) of a batch's sentences, (B, width, k)."""
        ...


# --- the losses ----------------------------------------------------------------------------------------
def word_kd_loss(
    student_logits: Tensor, target: Tensor, temperature: float, teacher_probs: Tensor, index: Tensor | None = None
) -> Tensor:
    """KL(p_teacher(T) ‖ p_student(T)) summed over non-PAD target positions.

    `teacher_probs` is the teacher's distribution at temperature T: over the whole vocabulary
    (B, T, V), or over the top-k tokens named by `index` (B, T, k), renormalised.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if index is not None:
        student = student.gather(-1, index)
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * student).sum(-1)
    return kl[target != PAD].sum()


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per position (over the width), summed over the positions where mask is True."""
    return F.mse_loss(student.float(), teacher.float(), reduction="none").mean(-1)[mask].sum()
