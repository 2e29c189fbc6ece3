"""The objectives pinned against formulas computed here independently (T², the temperature on both sides,
α mixing, label smoothing), their composition from parts, the KD math importing no job runner, gradient
accumulation, the default layer maps, a student's exact resume, patience."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from toy import make_batch_from, toy_pairs, toy_setup, train_toy

from kdmt.batching import make_batch
from kdmt.checkpoint import load_checkpoint
from kdmt.data import TokenizedCorpus
from kdmt.kd import word_kd_loss
from kdmt.model import Transformer, make_config
from kdmt.objectives import CrossEntropy, Distillation, Objective, Part, Reference, SelectiveKD, label_smoothed_nll
from kdmt.run_dir import LAST
from kdmt.student import layer_map, parse_layers
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.vocab import PAD

V = 11  # vocabulary size of the hand-made cases
CPU = torch.device("cpu")


class Fixed(torch.nn.Module):
    """A 'model' whose logits are given: the objective's arithmetic alone, nothing learned in between."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, src, tgt_in, hidden=None):
        return self.logits


def case(seed: int = 0):
    """Student and teacher logits of clearly different shapes (scale 3), and a batch with PAD targets."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(4, V, (3, 5), generator=g)
    target[0, 3:] = PAD
    target[2, 4:] = PAD
    student, teacher = 3 * torch.randn(3, 5, V, generator=g), 3 * torch.randn(3, 5, V, generator=g)
    return student, teacher, make_batch_from(target)


def kl(teacher_probs: torch.Tensor, student_logprobs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over non-PAD positions of Σ_v p·(log p − log q), written out."""
    per_position = (teacher_probs * (teacher_probs.log() - student_logprobs)).sum(-1)
    return per_position[target != PAD].sum()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    logits, target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
    return F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=epsilon, reduction="sum")


# --- the formulas ------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [0.5, 2.0, 4.0])
def test_word_kd_is_t_squared_times_the_kl_of_softened_distributions(T):
    s, t, batch = case()
    loss, figures = Distillation(Fixed(s), [Fixed(t)], alpha=1.0, temperature=T)(Fixed(s), batch)
    mask = batch.tgt_out != PAD
    kl_by_torch = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none")
    expected = kl_by_torch.sum(-1)[mask].sum()
    torch.testing.assert_close(loss, T**2 * expected)
    assert figures["word_kd"] == pytest.approx(float(expected), rel=1e-5)  # logged without the T²


def test_the_temperature_softens_both_the_teacher_and_the_student():
    s, t, batch = case(1)
    T, y = 3.0, batch.tgt_out
    both = kl(F.softmax(t / T, -1), F.log_softmax(s / T, -1), y)
    teacher_only = kl(F.softmax(t / T, -1), F.log_softmax(s, -1), y)
    student_only = kl(F.softmax(t, -1), F.log_softmax(s / T, -1), y)
    assert min(abs(both - teacher_only), abs(both - student_only)) > 0.1 * both  # the case tells them apart
    loss, _ = Distillation(Fixed(s), [Fixed(t)], alpha=1.0, temperature=T)(Fixed(s), batch)
    torch.testing.assert_close(loss / T**2, both)
    # word_kd_loss alone: the student is softened inside, the teacher's distribution comes softened
    torch.testing.assert_close(word_kd_loss(s, y, T, F.softmax(t / T, -1)), both)


def test_top_k_and_weighted_teachers():
    s, t1, batch = case(2)
    t2 = case(3)[1]
    T, y = 2.0, batch.tgt_out
    p = 0.75 * F.softmax(t1 / T, -1) + 0.25 * F.softmax(t2 / T, -1)
    distillation = Distillation(Fixed(s), [Fixed(t1), Fixed(t2)], [3.0, 1.0], alpha=1.0, temperature=T)
    torch.testing.assert_close(distillation(Fixed(s), batch)[0], T**2 * kl(p, F.log_softmax(s / T, -1), y))
    # top-k: the teacher's k most probable tokens, renormalised, against the student's (unrenormalised) log-probs
    top, index = p.topk(3, -1)
    top = top / top.sum(-1, keepdim=True)
    expected = (top * (top.log() - F.log_softmax(s / T, -1).gather(-1, index))).sum(-1)[y != PAD].sum()
    distillation = Distillation(Fixed(s), [Fixed(t1), Fixed(t2)], [3.0, 1.0], alpha=1.0, temperature=T, topk=3)
    torch.testing.assert_close(distillation(Fixed(s), batch)[0], T**2 * expected)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_mixes_label_smoothed_cross_entropy_and_t_squared_kl(alpha):
    s, t, batch = case(4)
    T, eps, y = 2.0, 0.1, batch.tgt_out
    loss, figures = Distillation(Fixed(s), [Fixed(t)], alpha=alpha, temperature=T, label_smoothing=eps)(Fixed(s), batch)
    word_kd = kl(F.softmax(t / T, -1), F.log_softmax(s / T, -1), y)
    expected = (1 - alpha) * cross_entropy(s, y, eps) + alpha * T**2 * word_kd
    torch.testing.assert_close(loss, expected)
    assert figures["nll"] == pytest.approx(float(cross_entropy(s, y, 0.0)), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_torch_cross_entropy_with_label_smoothing(eps):
    s, _, batch = case(5)
    y = batch.tgt_out
    loss, nll = label_smoothed_nll(s, y, eps)
    torch.testing.assert_close(loss, cross_entropy(s, y, eps))
    torch.testing.assert_close(nll, cross_entropy(s, y, 0.0))
    objective_loss, figures = CrossEntropy(eps)(Fixed(s), batch)
    torch.testing.assert_close(objective_loss, cross_entropy(s, y, eps))
    assert figures["nll"] == pytest.approx(float(cross_entropy(s, y, 0.0)), rel=1e-5)


# --- composition ----------------------------------------------------------------------------------
class Tokens(Part):
    """A made-up term: half the number of target tokens, logged."""

    def forward(self, step):
        n = (step.batch.tgt_out != PAD).sum().float()
        return 0.5 * n, {"tokens": float(n)}


def test_an_objective_is_the_sum_of_its_parts_and_logs_each_parts_figures():
    s, _, batch = case(6)
    y = batch.tgt_out
    loss, figures = Objective([Reference(0.1), Tokens()])(Fixed(s), batch)
    n = int((y != PAD).sum())
    torch.testing.assert_close(loss, cross_entropy(s, y, 0.1) + 0.5 * n)
    assert figures == {"nll": pytest.approx(float(cross_entropy(s, y, 0.0)), rel=1e-5), "tokens": n}


class Counted(Transformer):
    """A teacher that counts its runs."""

    runs = 0

    def forward(self, src, tgt_in, hidden=None):
        self.runs += 1
        return super().forward(src, tgt_in, hidden)


def test_word_and_hidden_state_kd_share_one_run_of_each_teacher():
    torch.manual_seed(0)
    teachers = [Counted(make_config(V, V, "tiny")), Counted(make_config(V, V, "tiny"))]
    student = Transformer(make_config(V, V, "tiny", d_model=32, d_ff=64))
    _, _, batch = case(7)
    objective = Distillation(student, teachers, alpha=0.5, hidden_beta=1.0, hidden_pairs={"decoder": [0, 1]})
    _, figures = objective(student, batch)
    assert figures["word_kd"] > 0 and figures["hidden_mse"] > 0
    assert [t.runs for t in teachers] == [1, 1]


def test_the_objectives_state_keeps_its_names():
    """The saved training state (and so --resume of a run saved before) names the objective's tensors so."""
    torch.manual_seed(0)
    teacher, student = Transformer(make_config(V, V, "tiny")), Transformer(make_config(V, V, "tiny", d_model=32))
    pairs = {"encoder": [1], "decoder": [0]}
    objective = Distillation(
        student, [teacher], alpha=0.5, hidden_beta=1.0, hidden_pairs=pairs, selective=SelectiveKD([None])
    )
    assert list(objective.state_dict()) == [
        "selective.on",
        "projections.encoder0.weight",
        "projections.encoder0.bias",
        "projections.decoder0.weight",
        "projections.decoder0.bias",
    ]
    assert {id(p) for p in objective.parameters()} == {id(p) for p in objective.projections.parameters()}


def test_the_kd_math_imports_no_job_runner():
    code = "import sys, kdmt.kd; print(' '.join(m for m in sys.modules if m.startswith('kdmt')))"
    root = Path(__file__).resolve().parent.parent  # this checkout's kdmt, first on the path of `python -c`
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    loaded = set(run.stdout.split())
    assert "kdmt.kd" in loaded
    runners = {"kdmt.shards", "kdmt.batching", "kdmt.data", "kdmt.corpus", "kdmt.soft_targets", "kdmt.train"}
    assert not loaded & runners, loaded & runners


# --- layer maps ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "student, teacher, expected",
    [(3, 6, [1, 3, 5]), (1, 6, [5]), (6, 6, [0, 1, 2, 3, 4, 5]), (6, 3, [0, 0, 1, 1, 2, 2]), (2, 1, [0, 0])],
)
def test_layer_map(student, teacher, expected):
    assert layer_map(student, teacher) == expected
    assert parse_layers(None, student, teacher) == expected  # the default of --hidden-kd and --init-from-teacher


def test_layer_map_stays_within_the_teacher_for_every_shape():
    for s in range(1, 13):
        for t in range(1, 13):
            m = layer_map(s, t)
            assert len(m) == s and all(0 <= j < t for j in m) and m[-1] == t - 1 and m == sorted(m), (s, t, m)
            if s <= t:
                assert len(set(m)) == s, (s, t, m)  # a shallower student never repeats a teacher layer


# --- the trainer -----------------------------------------------------------------------------------
def test_update_freq_2_gives_the_gradients_of_one_batch_of_both(toy_data, tmp_path):
    """train_step([b1, b2]) (--update-freq 2) equals train_step([b12]): the gradient is the mean over
    the step's target tokens, not a mean of per-batch means."""
    vocab, train, valid = toy_setup(toy_data)
    config = TrainConfig(max_tokens=500, max_steps=1, valid_bleu_sents=0, warmup=1, lr=1e-3, clip_norm=0.0)

    def trainer(name):
        torch.manual_seed(0)
        model = Transformer(make_config(len(vocab), len(vocab), "tiny", dropout=0.0))
        t = Trainer(model, vocab, vocab, train, valid, tmp_path / name, config, CPU)
        grads = []
        t.optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in t.parameters()))
        return t, grads

    (split, split_grads), (joint, joint_grads) = trainer("split"), trainer("joint")
    b1, b2 = make_batch(train, torch.arange(0, 5)), make_batch(train, torch.arange(5, 20))
    assert b1.ntokens * 2 < b2.ntokens  # unequal sizes: a mean of per-batch means would differ
    a = split.train_step([b1, b2])
    b = joint.train_step([make_batch(train, torch.arange(0, 20))])
    assert a["ntokens"] == b["ntokens"] == b1.ntokens + b2.ntokens
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["nll"] == pytest.approx(b["nll"], rel=1e-5)
    assert len(split_grads) == len(joint_grads) == len(list(split.parameters()))
    for g, h in zip(split_grads, joint_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)
    # after one Adam step (≈ lr·sign(gradient)); gradients that are zero but for rounding (e.g. the key
    # biases, to which softmax is invariant) have no sign to agree on
    checked = 0
    for p, q, g in zip(split.model.parameters(), joint.model.parameters(), joint_grads):
        sure = g.abs() > 1e-6
        torch.testing.assert_close(p[sure], q[sure], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(p, q, rtol=0, atol=2 * config.lr)
        checked += int(sure.sum())
    assert checked > 0.9 * sum(p.numel() for p in split.model.parameters())


def student_run(data, out, resume=False, **overrides):
    """A student with everything that carries state: an online teacher, word-KD, hidden-state KD through
    projections (the objective's own parameters and optimizer state), dropout; a small corpus, so that
    epochs are short."""
    vocab, _, _ = toy_setup(data)
    train = TokenizedCorpus.encode(*toy_pairs(120, seed=4), vocab, vocab)
    src, ref = toy_pairs(20, seed=6)
    valid = ValidSet(TokenizedCorpus.encode(src, ref, vocab, vocab), src, ref)
    settings = dict(max_tokens=300, lr=2e-3, warmup=5, max_steps=12, valid_interval=4, valid_bleu_sents=0)
    config = TrainConfig(**{**settings, "log_interval": 1, "label_smoothing": 0.1, "seed": 3, **overrides})
    torch.manual_seed(0)
    teacher = Transformer(make_config(len(vocab), len(vocab), "tiny", dropout=0.0))
    student = Transformer(make_config(len(vocab), len(vocab), "tiny", d_model=32, d_ff=64, enc_layers=1))
    pairs = {"encoder": [1], "decoder": [0, 1]}
    objective = Distillation(student, [teacher], alpha=0.5, temperature=2.0, hidden_beta=1.0, hidden_pairs=pairs)
    trainer = Trainer(student, vocab, vocab, train, valid, out, config, CPU, objective)
    return trainer, trainer.run(resume)


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_student_run_equals_the_uninterrupted_run(toy_data, tmp_path):
    full, result = student_run(toy_data, tmp_path / "full")
    student_run(toy_data, tmp_path / "split", max_steps=6)
    split, _ = student_run(toy_data, tmp_path / "split", resume=True)
    assert result["step"] == split.state.step == 12
    steps = {out: {r["step"]: r for r in records(tmp_path / out) if "loss" in r} for out in ("full", "split")}
    assert sorted(steps["split"]) == list(range(1, 13))
    assert steps["full"][12]["epoch"] > steps["full"][6]["epoch"]  # an epoch boundary after the resume
    for step in range(7, 13):
        for key in ("loss", "nll", "word_kd", "hidden_mse"):
            assert steps["split"][step][key] == steps["full"][step][key], (step, key)
    assert full.objective.projections and list(full.objective.state_dict()) == list(split.objective.state_dict())
    for k, v in full.objective.state_dict().items():
        assert torch.equal(v, split.objective.state_dict()[k]), k
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, split.model.state_dict()[k]), k
    saved = [load_checkpoint(tmp_path / out / LAST).model.state_dict() for out in ("full", "split")]
    for k, v in saved[0].items():
        assert torch.equal(v, saved[1][k]), k


def test_patience_stops_after_n_validations_without_improvement(toy_data, tmp_path, monkeypatch):
    """Validation losses 3, 2 (better), 2.5 (worse), 1 (better), 1 (not better), 1.5 (worse): with
    patience 2 the run stops at the sixth validation, whatever --max-steps allows."""
    losses = iter([3.0, 2.0, 2.5, 1.0, 1.0, 1.5] + [0.5] * 100)

    def validate(self):
        x = next(losses)
        return {"valid_loss": x, "valid_nll": x, "valid_ppl": math.exp(x)}

    monkeypatch.setattr(Trainer, "validate", validate)
    trainer, result = train_toy(toy_data, tmp_path, max_tokens=200, valid_interval=1, patience=2, max_steps=40)
    assert result["stop"] == "early stopping" and result["step"] == trainer.state.step == 6
    assert [(r["step"], r["best"]) for r in records(tmp_path) if "valid_loss" in r] == [
        (1, -3.0),
        (2, -2.0),
        (3, -2.0),
        (4, -1.0),
        (5, -1.0),
        (6, -1.0),
    ]
