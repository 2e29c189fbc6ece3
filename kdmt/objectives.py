"""Training objectives: what a training step minimises, plugged into the one trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmt.batching import Batch
from kdmt.errors import KdmtError
from kdmt.languages import PairRows, bleu_key, routed_logits
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


class SelectiveKD(nn.Module):
    """Selective distillation (Tan et al. 2019): per language pair, word-KD is switched off while the
    student's validation BLEU on the pair is at least its teacher's + `margin`, and on again when it falls
    below. The teachers' BLEU is measured once, before training; the switches are a buffer, so that they are
    saved with the training state and a resumed run goes on with them."""

    def __init__(self, pairs: list[str | None], margin: float = 1.0):
        super().__init__()
        self.pairs, self.margin = pairs, margin
        self.teacher_bleu: dict[str, float] = {}  # valid_bleu, or valid_bleu_PAIR: set before training
        self.register_buffer("on", torch.ones(len(pairs), dtype=torch.bool))

    def update(self, figures: dict[str, float]) -> dict[str, float]:
        """Switch each pair from its validation BLEU in `figures` (valid_bleu, or valid_bleu_PAIR); the
        switches as figures to log (word_kd_on, or word_kd_on_PAIR: 1 on, 0 off)."""
        logged = {}
        for i, pair in enumerate(self.pairs):
            key = bleu_key(pair)
            self.on[i] = bool(figures[key] < self.teacher_bleu[key] + self.margin)
            logged["word_kd_on" if pair is None else f"word_kd_on_{pair}"] = float(self.on[i])
        return logged


class Distillation(nn.Module):
    """(1−α)·CE(reference, label-smoothed) + α·T²·KL(p_teacher(T) ‖ p_student(T)) + β·hidden-state MSE.

    Teachers run in eval mode without gradients; several are averaged with `teacher_weights`. The soft
    targets come from the online teachers, optionally cut to their top-k, or from `soft_targets`, a
    store computed beforehand (offline word-KD). Hidden-state KD matches the student's layer outputs
    with the first teacher's through a
    learned projection where the widths differ; the projections are trained with the student.
    `hidden_pairs` maps a side ("encoder"/"decoder") to the teacher layer of each student layer.

    Several language pairs (`routes`, the rows of each pair in the training corpus): teacher i is pair i's,
    and each sentence takes its soft targets from its own pair's teacher alone. With `selective`, the
    sentences of a pair whose word-KD is switched off learn from the reference alone (label-smoothed CE,
    weight 1), and their teacher does not run.
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
        routes: PairRows | None = None,
        selective: SelectiveKD | None = None,
    ):
        super().__init__()
        if (alpha > 0 and soft_targets is None or hidden_beta > 0) and not teachers:
            raise KdmtError("word-level or hidden-state KD needs a teacher")
        weights = teacher_weights or [1.0] * len(teachers)
        if len(weights) != len(teachers) or teachers and sum(weights) <= 0:
            raise KdmtError("give one weight per teacher, not all 0")
        self.teachers = teachers  # a plain list: not submodules, so neither trained nor saved with the student
        for t in teachers:
            t.eval().requires_grad_(False)
        if routes is not None and (len(teachers) != len(routes.names) or hidden_beta > 0):
            raise KdmtError("several pairs take one teacher each, and no hidden-state KD")
        if selective is not None and alpha == 0:
            raise KdmtError("selective distillation switches word-level KD: give --alpha")
        self.weights, self.routes, self.selective = weights, routes, selective
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

    def distilled_rows(self, batch: Batch, pair_of: Tensor | None) -> Tensor | None:
        """Which sentences of the batch word-KD applies to (B,), or None for all of them."""
        if self.selective is None:
            return None
        on = self.selective.on.to(batch.tgt_out.device)
        return on[pair_of] if pair_of is not None else on[0].expand(batch.tgt_out.size(0))

    def forward(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        hidden = Hidden() if self.hidden_beta > 0 else None
        logits = model(batch.src, batch.tgt_in, hidden)
        pair_of = self.routes.pair_of(batch.indices).to(logits.device) if self.routes is not None else None
        rows = self.distilled_rows(batch, pair_of)
        target = batch.tgt_out
        if rows is None:
            ce, nll = label_smoothed_nll(logits, target, self.label_smoothing)
            loss, figures = (1 - self.alpha) * ce, {"nll": float(nll.detach())}
        else:  # the sentences without word-KD learn from the reference alone
            target = batch.tgt_out.masked_fill(~rows[:, None], PAD)
            ce, nll = label_smoothed_nll(logits, target, self.label_smoothing)
            rest, rest_nll = label_smoothed_nll(
                logits, batch.tgt_out.masked_fill(rows[:, None], PAD), self.label_smoothing
            )
            loss, figures = (1 - self.alpha) * ce + rest, {"nll": float((nll + rest_nll).detach())}
        skip = rows is not None and not bool(rows.any())  # word-KD is off for every sentence of the batch
        online = self.alpha > 0 and self.soft_targets is None and not skip
        if online or self.hidden_beta > 0:
            teacher_hidden = Hidden() if self.hidden_beta > 0 else None
            with torch.no_grad():
                if pair_of is not None:
                    teacher_logits = [routed_logits(self.teachers, batch.src, batch.tgt_in, pair_of, rows)]
                else:
                    teacher_logits = [
                        t(batch.src, batch.tgt_in, teacher_hidden if i == 0 else None)
                        for i, t in enumerate(self.teachers)
                    ]
        if self.alpha > 0 and skip:
            figures["word_kd"] = 0.0
        elif self.alpha > 0:
            T = self.temperature
            if self.soft_targets is not None:  # stored top-k log-probabilities at T = 1
                index, logprobs = self.soft_targets.lookup(batch.indices, batch.tgt_out.size(1), logits.device)
                kl = word_kd_loss(logits, target, T, F.softmax(logprobs.float() / T, dim=-1), index)
            else:
                weights = [1.0] if pair_of is not None else self.weights
                probs = teacher_distribution(teacher_logits, weights, T)
                index = None
                if self.topk:
                    probs, index = probs.topk(self.topk, dim=-1)
                    probs = probs / probs.sum(-1, keepdim=True)
                kl = word_kd_loss(logits, target, T, probs, index)
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

    def validated(self, figures: dict[str, float]) -> dict[str, float]:
        """After a validation: selective distillation switches word-KD per pair (the switches, to log)."""
        return self.selective.update(figures) if self.selective is not None else {}
