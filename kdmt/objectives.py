"""Training objectives: what a training step minimises, plugged into the one trainer.

An objective (Objective) is a sum of parts, each one term with its own options, as fairseq's criteria: the
reference's label-smoothed cross-entropy (Reference), word-level KD (WordKD), hidden-state KD
(HiddenStateKD). A part's forward takes the Step (the batch, the student's output and the teachers' run,
shared by the parts) and returns its loss, summed over the batch's target tokens, and figures (sums) to
log; its own modules (e.g. projections) are trained and saved with the model. A new objective is one new
part. The KD arithmetic itself, and the teachers' distributions, are kdmt.kd's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmt.batching import Batch
from kdmt.errors import KdmtError
from kdmt.kd import StoredTargets, Teachers, hidden_mse, stored_distribution, word_kd_loss
from kdmt.languages import PairRows, bleu_key
from kdmt.model import Hidden, Transformer
from kdmt.vocab import PAD


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, each summed over non-PAD targets (fairseq's form)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    mask = target != PAD
    nll = -lprobs.gather(-1, target[..., None]).squeeze(-1)[mask]
    smooth = -lprobs.mean(-1)[mask]
    return ((1 - epsilon) * nll + epsilon * smooth).sum(), nll.sum()


@dataclass
class Step:
    """What the parts of an objective share on one batch: the student's logits (and layer outputs, where a
    part uses them), the sentences word-KD applies to, and the teachers, run at most once."""

    batch: Batch
    logits: Tensor
    hidden: Hidden | None
    teachers: Teachers
    teacher_hidden: Hidden | None  # filled by the first teacher's run, where a part uses layer outputs
    pair_of: Tensor | None = None  # several language pairs: the pair of each sentence
    rows: Tensor | None = None  # which sentences word-KD applies to (B,); None: all of them
    _teacher_logits: list[Tensor] | None = None

    @property
    def distilled_target(self) -> Tensor:
        """The targets of the sentences word-KD applies to; PAD elsewhere."""
        return self.batch.tgt_out if self.rows is None else self.batch.tgt_out.masked_fill(~self.rows[:, None], PAD)

    def teacher_logits(self) -> list[Tensor]:
        """The teachers' logits on the batch (Teachers.logits), computed on the first call."""
        if self._teacher_logits is None:
            b = self.batch
            self._teacher_logits = self.teachers.logits(b.src, b.tgt_in, self.teacher_hidden, self.pair_of, self.rows)
        return self._teacher_logits


class Part(nn.Module):
    """One term of an objective: forward(step) returns its loss and the figures to log. `uses_hidden`: it
    reads the student's and the first teacher's layer outputs (step.hidden, step.teacher_hidden)."""

    uses_hidden = False

    def forward(self, step: Step) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


class Reference(Part):
    """weight·(label-smoothed cross-entropy against the reference); the sentences without word-KD (see
    SelectiveKD) learn from the reference alone, at weight 1. Logs the plain NLL of every sentence."""

    def __init__(self, label_smoothing: float = 0.1, weight: float = 1.0):
        super().__init__()
        self.label_smoothing, self.weight = label_smoothing, weight

    def forward(self, step: Step) -> tuple[Tensor, dict[str, float]]:
        ce, nll = label_smoothed_nll(step.logits, step.distilled_target, self.label_smoothing)
        if step.rows is None:
            return self.weight * ce, {"nll": float(nll.detach())}
        rest_target = step.batch.tgt_out.masked_fill(step.rows[:, None], PAD)
        rest, rest_nll = label_smoothed_nll(step.logits, rest_target, self.label_smoothing)
        return self.weight * ce + rest, {"nll": float((nll + rest_nll).detach())}


class WordKD(Part):
    """α·T²·KL(p_teacher(T) ‖ p_student(T)) over the sentences word-KD applies to. The soft targets come from
    the online teachers, optionally cut to their top-k, or from `stored` ones (offline word-KD). Logs the KL
    without α·T²."""

    def __init__(
        self, alpha: float, temperature: float = 1.0, topk: int | None = None, stored: StoredTargets | None = None
    ):
        super().__init__()
        self.alpha, self.temperature, self.topk, self.stored = alpha, temperature, topk, stored

    def forward(self, step: Step) -> tuple[Tensor, dict[str, float]]:
        if step.rows is not None and not bool(step.rows.any()):  # off for every sentence: no teacher runs
            return torch.zeros((), device=step.logits.device), {"word_kd": 0.0}
        T = self.temperature
        if self.stored is not None:
            index, logprobs = self.stored.lookup(step.batch.indices, step.batch.tgt_out.size(1), step.logits.device)
            probs: Tensor = stored_distribution(logprobs, T)
        else:
            probs, index = step.teachers.distribution(step.teacher_logits(), T, self.topk)
        kl = word_kd_loss(step.logits, step.distilled_target, T, probs, index)
        return self.alpha * T**2 * kl, {"word_kd": float(kl.detach())}


class HiddenStateKD(Part):
    """β·Σ MSE between the student's layer outputs and the first teacher's; `layers` maps a side
    ("encoder"/"decoder") to the teacher layer of each student layer. Where the widths differ, through
    learned projections (the part's own parameters, trained with the student). Logs the MSE without β."""

    uses_hidden = True

    def __init__(self, beta: float, layers: dict[str, list[int]], student_width: int, teacher_width: int):
        super().__init__()
        self.beta, self.layers = beta, layers
        self.projections = nn.ModuleDict()
        if student_width != teacher_width:
            for side, teacher_layers in layers.items():
                for i in range(len(teacher_layers)):
                    self.projections[f"{side}{i}"] = nn.Linear(student_width, teacher_width)

    def project(self, side: str, i: int, x: Tensor) -> Tensor:
        key = f"{side}{i}"
        return self.projections[key](x) if key in self.projections else x

    def forward(self, step: Step) -> tuple[Tensor, dict[str, float]]:
        step.teacher_logits()  # the first teacher's run fills step.teacher_hidden
        student, teacher = step.hidden, step.teacher_hidden
        masks = {"encoder": step.batch.src != PAD, "decoder": step.batch.tgt_out != PAD}
        mse = sum(
            hidden_mse(self.project(side, i, getattr(student, side)[i]), getattr(teacher, side)[j], masks[side])
            for side, pairs in self.layers.items()
            for i, j in enumerate(pairs)
        )
        return self.beta * mse, {"hidden_mse": float(mse.detach())}


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


class Objective(nn.Module):
    """The sum of `parts` on each batch, in their order. `teachers` are what the parts learn from; `routes`
    (several language pairs, the rows of each in the training corpus) gives each sentence its pair, for
    routed teachers and `selective` distillation, whose sentences without word-KD learn from the reference
    alone, their teacher not run.

    The objective's state (trained, and saved with the training state) is its modules: `selective`'s
    switches, then each part's own modules under their own names (projections.encoder0.weight, ...)."""

    def __init__(
        self,
        parts: list[Part],
        teachers: Teachers | None = None,
        routes: PairRows | None = None,
        selective: SelectiveKD | None = None,
    ):
        super().__init__()
        self.teachers, self.routes, self.selective = teachers or Teachers([]), routes, selective
        self.parts = parts  # a plain list: their modules are registered below, under their own names
        for part in parts:
            for name, module in part.named_children():
                if hasattr(self, name):
                    raise ValueError(f"two parts of an objective hold a module named {name}")
                self.add_module(name, module)
        self.uses_hidden = any(part.uses_hidden for part in parts)

    def distilled_rows(self, batch: Batch, pair_of: Tensor | None) -> Tensor | None:
        """Which sentences of the batch word-KD applies to (B,), or None for all of them."""
        if self.selective is None:
            return None
        on = self.selective.on.to(batch.tgt_out.device)
        return on[pair_of] if pair_of is not None else on[0].expand(batch.tgt_out.size(0))

    def forward(self, model: Transformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        hidden = Hidden() if self.uses_hidden else None
        logits = model(batch.src, batch.tgt_in, hidden)
        pair_of = self.routes.pair_of(batch.indices).to(logits.device) if self.routes is not None else None
        teacher_hidden = Hidden() if self.uses_hidden else None
        step = Step(batch, logits, hidden, self.teachers, teacher_hidden, pair_of, self.distilled_rows(batch, pair_of))
        losses, figures = [], {}
        for part in self.parts:
            loss, logged = part(step)
            losses.append(loss)
            figures |= logged
        return sum(losses[1:], losses[0]), figures

    def validated(self, figures: dict[str, float]) -> dict[str, float]:
        """After a validation: selective distillation switches word-KD per pair (the switches, to log)."""
        return self.selective.update(figures) if self.selective is not None else {}


class CrossEntropy(Objective):
    """Label-smoothed cross-entropy against the reference: the teacher's (and a baseline student's) objective."""

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__([Reference(label_smoothing)])


class Distillation(Objective):
    """train-student's objective: (1−α)·CE(reference, label-smoothed) + α·T²·KL(p_teacher(T) ‖ p_student(T))
    + β·hidden-state MSE, the parts its options ask for (Reference, WordKD with α > 0, HiddenStateKD with
    β > 0), checked against each other.

    Several teachers are averaged with `teacher_weights`; `soft_targets`, stored beforehand, stand for the
    online teachers in word-KD. Hidden-state KD matches the student's layer outputs with the first
    teacher's (`hidden_pairs`: HiddenStateKD's layers). Several language pairs (`routes`): teacher i is pair
    i's, and each sentence takes its soft targets from its own pair's teacher alone; with `selective`, word-KD
    is switched per pair (SelectiveKD)."""

    def __init__(
        self,
        student: Transformer,
        teachers: list[Transformer],
        teacher_weights: list[float] | None = None,
        alpha: float = 0.5,
        temperature: float = 1.0,
        label_smoothing: float = 0.1,
        topk: int | None = None,
        soft_targets: StoredTargets | None = None,
        hidden_beta: float = 0.0,
        hidden_pairs: dict[str, list[int]] | None = None,
        routes: PairRows | None = None,
        selective: SelectiveKD | None = None,
    ):
        if (alpha > 0 and soft_targets is None or hidden_beta > 0) and not teachers:
            raise KdmtError("word-level or hidden-state KD needs a teacher")
        frozen = Teachers(teachers, teacher_weights, routed=routes is not None)
        if routes is not None and (len(teachers) != len(routes.names) or hidden_beta > 0):
            raise KdmtError("several pairs take one teacher each, and no hidden-state KD")
        if selective is not None and alpha == 0:
            raise KdmtError("selective distillation switches word-level KD: give --alpha")
        parts: list[Part] = [Reference(label_smoothing, 1 - alpha)]
        if alpha > 0:
            parts.append(WordKD(alpha, temperature, topk, soft_targets))
        if hidden_beta > 0 and hidden_pairs:
            width = student.config.d_model, teachers[0].config.d_model
            parts.append(HiddenStateKD(hidden_beta, hidden_pairs, *width))
        super().__init__(parts, frozen, routes, selective)
