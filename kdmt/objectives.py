"""Training objectives: what a training step minimises, plugged into the one trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmt.batching import Batch
from kdmt.errors import KdmtError
from kdmt.model import Hidden, Transformer
from kdmt.soft_targets import SoftTargetStore, teacher_distribution
from kdmt.vocab import PAD


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, each summed over non-PAD targets (fairseq's form)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    mask = target != PAD
    nll = -lprobs.gather(-1, target[..., None]).squeeze(-1)[mask]
    smooth = -lprobs.mean(-1)[mask]
    return ((1 - epsilon) * nll + epsilon * smooth).sum(), nll.sum()


class CrossEntropy(nn.Module):
    """Label-smoothed cross-entropy against the reference: the teacher's (and a baseline student's) objective.

    An objective is a module whose forward(model, batch) returns the loss summed over the batch's
    target tokens and figures (sums) to log; its own parameters, if any, are trained with the model.
    """

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss, nll = label_smoothed_nll(model(batch.src, batch.tgt_in), batch.tgt_out, self.label_smoothing)
        return loss, {"nll": float(nll.detach())}


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


class Distillation(nn.Module):
    """(1−α)·CE(reference, label-smoothed) + α·T²·KL(p_teacher(T) ‖ p_student(T)) + β·hidden-state MSE.

    Teachers run in eval mode without gradients; several are averaged with `teacher_weights`. The soft
    targets come from the online teachers, optionally cut to their top-k, or from `soft_targets`, a
    store computed beforehand (offline word-KD). Hidden-state KD matches the student's layer outputs
    with the first teacher's through a
    learned projection where the widths differ; the projections are trained with the student.
    `hidden_pairs` maps a side ("encoder"/"decoder") to the teacher layer of each student layer.
    """

    def __init__(
        self,
        student: Transformer,
        teachers: list[Transformer],
        teacher_weights: list[float] | None = None,
        alpha: float = 0.5,
        temperature: float = 1.0,
        label_smoothing: float = 0.1,
        topk: int | None = None,
        soft_targets: SoftTargetStore | None = None,
        hidden_beta: float = 0.0,
        hidden_pairs: dict[str, list[int]] | None = None,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise KdmtError("α must lie in [0, 1] and the temperature be positive")
        if (alpha > 0 and soft_targets is None or hidden_beta > 0) and not teachers:
            raise KdmtError("word-level or hidden-state KD needs a teacher")
        weights = teacher_weights or [1.0] * len(teachers)
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or teachers and sum(weights) <= 0:
            raise KdmtError("give one non-negative weight per teacher")
        self.teachers = teachers  # a plain list: not submodules, so neither trained nor saved with the student
        for t in teachers:
            t.eval().requires_grad_(False)
        self.weights = weights
        self.alpha, self.temperature, self.label_smoothing, self.topk = alpha, temperature, label_smoothing, topk
        self.soft_targets, self.hidden_beta = soft_targets, hidden_beta
        self.pairs = hidden_pairs or {} if hidden_beta > 0 else {}
        self.projections = nn.ModuleDict()
        if self.pairs and student.config.d_model != teachers[0].config.d_model:
            for side, layers in self.pairs.items():
                for i in range(len(layers)):
                    self.projections[f"{side}{i}"] = nn.Linear(student.config.d_model, teachers[0].config.d_model)

    def project(self, side: str, i: int, x: Tensor) -> Tensor:
        key = f"{side}{i}"
        return self.projections[key](x) if key in self.projections else x

    def forward(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        hidden = Hidden() if self.hidden_beta > 0 else None
        logits = model(batch.src, batch.tgt_in, hidden)
        ce, nll = label_smoothed_nll(logits, batch.tgt_out, self.label_smoothing)
        loss, figures = (1 - self.alpha) * ce, {"nll": float(nll.detach())}
        online = self.alpha > 0 and self.soft_targets is None
        if online or self.hidden_beta > 0:
            teacher_hidden = Hidden() if self.hidden_beta > 0 else None
            with torch.no_grad():
                teacher_logits = [
                    t(batch.src, batch.tgt_in, teacher_hidden if i == 0 else None) for i, t in enumerate(self.teachers)
                ]
        if self.alpha > 0:
            T = self.temperature
            if self.soft_targets is not None:  # stored top-k log-probabilities at T = 1
                index, logprobs = self.soft_targets.lookup(batch.indices, batch.tgt_out.size(1), logits.device)
                kl = word_kd_loss(logits, batch.tgt_out, T, F.softmax(logprobs.float() / T, dim=-1), index)
            else:
                probs = teacher_distribution(teacher_logits, self.weights, T)
                index = None
                if self.topk:
                    probs, index = probs.topk(self.topk, dim=-1)
                    probs = probs / probs.sum(-1, keepdim=True)
                kl = word_kd_loss(logits, batch.tgt_out, T, probs, index)
            loss = loss + self.alpha * T**2 * kl
            figures["word_kd"] = float(kl.detach())
        if self.hidden_beta > 0:
            masks = {"encoder": batch.src != PAD, "decoder": batch.tgt_out != PAD}
            mse = sum(
                hidden_mse(
                    self.project(side, i, getattr(hidden, side)[i]), getattr(teacher_hidden, side)[j], masks[side]
                )
                for side, pairs in self.pairs.items()
                for i, j in enumerate(pairs)
            )
            loss = loss + self.hidden_beta * mse
            figures["hidden_mse"] = float(mse.detach())
        return loss, figures
