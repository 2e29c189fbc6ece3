"""train-student: the distillation objectives, teacher initialisation, and the student's corpus."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_fails, kdmt, write
from test_toy_task import exact_match
from toy import LETTERS, make_batch_from, toy_pairs, toy_setup

from kdmt.batching import make_batch
from kdmt.checkpoint import load_checkpoint
from kdmt.data import PreparedData
from kdmt.kd import word_kd_loss
from kdmt.model import Transformer, make_config
from kdmt.objectives import Distillation
from kdmt.shards import WORK_DIR
from kdmt.soft_targets import SoftTargetSettings, compute_soft_targets
from kdmt.student import init_from_teacher, mix_indices, student_corpus
from kdmt.train import TrainConfig, Trainer
from kdmt.translate import SearchOptions, Translator
from kdmt.vocab import PAD


def test_word_kd_equals_cross_entropy_for_a_one_hot_teacher():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(4, 11, (3, 5))
    target[0, 3:] = PAD
    one_hot = F.one_hot(target, 11).float()
    kd = word_kd_loss(logits, target, 1.0, one_hot)
    ce = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(kd, ce)
    # the same through the objective with α = 1, T = 1 and a teacher whose logits are (nearly) one-hot
    student = Transformer(make_config(11, 11, "tiny")).eval()

    class OneHotTeacher(Transformer):
        def forward(self, src, tgt_in, hidden=None):
            return one_hot * 1e4

    teacher = OneHotTeacher(make_config(11, 11, "tiny"))
    batch = make_batch_from(target)
    loss, _ = Distillation(student, [teacher], alpha=1.0, temperature=1.0, label_smoothing=0.0)(student, batch)
    ce = F.cross_entropy(
        student(batch.src, batch.tgt_in).view(-1, 11), target.view(-1), ignore_index=PAD, reduction="sum"
    )
    torch.testing.assert_close(loss, ce)


def test_teacher_is_frozen_and_hidden_kd_projects_unequal_widths(toy_model, toy_data, tmp_path):
    vocab, train, valid = toy_setup(toy_data)
    teacher = load_checkpoint(toy_model).model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    student = Transformer(make_config(len(vocab), len(vocab), "tiny", d_model=32, d_ff=64, enc_layers=1))
    pairs = {"encoder": [1], "decoder": [0, 1]}
    objective = Distillation(student, [teacher], alpha=0.5, temperature=2.0, hidden_beta=1.0, hidden_pairs=pairs)
    assert set(objective.projections) == {"encoder0", "decoder0", "decoder1"}  # 32 -> 64 wide
    projection = objective.projections["encoder0"].weight.clone()
    config = TrainConfig(
        max_tokens=500, max_steps=30, valid_interval=30, valid_bleu_sents=0, log_interval=10, warmup=10, lr=2e-3
    )
    trainer = Trainer(student, vocab, vocab, train, valid, tmp_path, config, torch.device("cpu"), objective)
    valid_before = trainer.validate()["valid_loss"]
    trainer.run()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(projection, objective.projections["encoder0"].weight)  # trained with the student
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["valid_loss"] < 0.8 * valid_before  # like with like: the validation loss before and after
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30]
    for term in ("word_kd", "hidden_mse"):  # the distillation terms themselves go down
        assert steps[-1][term] < 0.95 * steps[0][term], term


def test_student_learns_from_soft_targets_alone(toy_model, toy_data, tmp_path):
    vocab, train, valid = toy_setup(toy_data)
    torch.manual_seed(5)
    student = Transformer(make_config(len(vocab), len(vocab), "tiny", dropout=0.0))
    objective = Distillation(student, [load_checkpoint(toy_model).model], alpha=1.0, temperature=1.0)
    config = TrainConfig(max_tokens=1500, lr=1e-3, warmup=100, max_steps=500, valid_interval=500, valid_bleu_sents=0)
    Trainer(student, vocab, vocab, train, valid, tmp_path, config, torch.device("cpu"), objective).run()
    src, ref = toy_pairs(200, seed=5)
    hyps = Translator([load_checkpoint(tmp_path / "checkpoint_last.safetensors")], SearchOptions(beam=1)).translate(src)
    assert exact_match(hyps, ref) >= 0.9


def test_offline_soft_targets_give_the_online_top_k_loss(toy_model, toy_data, tmp_path):
    vocab, train, _ = toy_setup(toy_data)
    teacher = load_checkpoint(toy_model).model
    store = compute_soft_targets([teacher], train, SoftTargetSettings(["toy"], [1.0], 4), tmp_path / "soft.json")
    student = Transformer(make_config(len(vocab), len(vocab), "tiny")).eval()
    batch = make_batch(train, torch.arange(10, 40))
    online = Distillation(student, [teacher], alpha=1.0, temperature=2.0, topk=4)(student, batch)[0]
    offline = Distillation(student, [teacher], alpha=1.0, temperature=2.0, soft_targets=store)(student, batch)[0]
    torch.testing.assert_close(online, offline, rtol=2e-3, atol=1e-3)


def test_init_from_teacher_copies_the_chosen_layers(toy_model):
    teacher = load_checkpoint(toy_model).model
    student = Transformer(
        make_config(teacher.config.src_vocab_size, teacher.config.tgt_vocab_size, "tiny", enc_layers=1, dec_layers=1)
    )
    init_from_teacher(student, teacher, [1], [0])
    sd, td = student.state_dict(), teacher.state_dict()
    for k, v in sd.items():
        source = k.replace("encoder.0.", "encoder.1.") if k.startswith("encoder.") else k
        assert torch.equal(v, td[source]), k
    narrow = Transformer(make_config(teacher.config.src_vocab_size, teacher.config.tgt_vocab_size, "tiny", d_model=32))
    with pytest.raises(Exception, match="cannot initialise"):
        init_from_teacher(narrow, teacher, [0, 1], [0, 1])


def test_mix_sets_the_share_of_references():
    assert mix_indices(100, 100, 0.0, 1) == (range(100), range(0))
    assert mix_indices(100, 100, 1.0, 1) == (range(0), range(100))
    distilled, reference = mix_indices(100, 100, 0.5, 1)
    assert sorted(distilled) == sorted(reference) == list(range(100))
    distilled, reference = mix_indices(100, 100, 0.2, 1)
    assert len(set(reference)) == 25 and sorted(distilled) == list(range(100))


def test_student_corpus_drops_empty_distilled_lines(toy_data, tmp_path):
    src = (toy_data / "train.src").read_text().splitlines()
    lines = ["x"] * len(src)
    lines[0] = ""
    corpus, record = student_corpus(PreparedData.open(toy_data), [write(tmp_path / "d", lines)], 0.0, 1)
    assert len(corpus) == len(src) - 1 and record["dropped_empty"] == 1


def test_train_student_command_with_every_objective(toy_model, toy_data, tmp_path):
    distilled = write(
        tmp_path / "distilled.tgt",
        [" ".join(reversed(s.split())) for s in (toy_data / "train.src").read_text().splitlines()],
    )
    result = kdmt(
        "soft-targets",
        "-t",
        toy_model,
        "--data",
        toy_data,
        "--distilled",
        distilled,
        "-o",
        tmp_path / "soft.json",
        "--topk",
        "3",
    )
    assert result.exit_code == 0, result.stderr
    result = kdmt(
        "train-student",
        "--data",
        toy_data,
        "--out",
        tmp_path / "s",
        "-t",
        toy_model,
        "--distilled",
        distilled,
        "--alpha",
        "0.5",
        "--temperature",
        "2",
        "--hidden-kd",
        "both",
        "--init-from-teacher",
        "--enc-layers",
        "1",
        "--hidden-enc-layers",
        "0",
        "--max-steps",
        "4",
        "--valid-interval",
        "2",
        "--valid-bleu-sents",
        "5",
    )
    assert result.exit_code == 0, result.stderr
    meta = load_checkpoint(tmp_path / "s" / "checkpoint_last.safetensors").meta
    assert meta["role"] == "student" and meta["word_kd"]["alpha"] == 0.5 and meta["hidden_kd"]["beta"] == 1.0
    assert meta["init_from_teacher"]["encoder_layers"] == [1] and meta["corpus"]["distilled"] == str(distilled)
    assert meta["hidden_kd"]["pairs"] == {"encoder": [0], "decoder": [0, 1]}
    result = kdmt(
        "train-student",
        "--data",
        toy_data,
        "--out",
        tmp_path / "o",
        "--distilled",
        distilled,
        "--alpha",
        "1",
        "--soft-targets",
        tmp_path / "soft.json",
        "--max-steps",
        "2",
        "--valid-bleu-sents",
        "0",
    )
    assert result.exit_code == 0, result.stderr
    result = kdmt(
        "eval",
        tmp_path / "s" / "checkpoint_last.safetensors",
        "--src",
        toy_data / "valid.src",
        "--ref",
        toy_data / "valid.tgt",
        "--json",
    )
    report = json.loads(result.stdout)[0]
    assert report["made_with"]["role"] == report["role"] == "student"  # kdmt report reads the role
    assert "student" in result.stderr  # the table says how each model was made


def test_mismatched_vocabulary_fails_cleanly(toy_model, tmp_path):
    src, tgt = toy_pairs(200, seed=1)
    for split in ("train", "valid"):
        write(tmp_path / f"{split}.src", src), write(tmp_path / f"{split}.tgt", tgt)
    data = tmp_path / "data"
    result = kdmt(
        "prepare",
        "--src",
        "src",
        "--tgt",
        "tgt",
        "--train",
        tmp_path / "train",
        "--valid",
        tmp_path / "valid",
        "-o",
        data,
        "--vocab-size",
        str(len(LETTERS) + 10),
    )
    assert result.exit_code == 0, result.stderr
    result = kdmt(
        "train-student", "--data", data, "--out", tmp_path / "s", "-t", toy_model, "--alpha", "0.5", "--max-steps", "2"
    )
    assert_fails(result, "vocabulary mismatch")
    result = kdmt("train-student", "--data", data, "--out", tmp_path / "s", "--alpha", "0.5", "--max-steps", "2")
    assert_fails(result, "needs a teacher")


def test_topk_beyond_the_teachers_vocabulary_fails_up_front(toy_model, toy_data, tmp_path):
    pieces = len(load_checkpoint(toy_model).tgt_vocab)
    message = f"--topk {pieces + 1} exceeds the {pieces} pieces of {toy_model}'s target vocabulary"
    soft = tmp_path / "soft.json"
    too_many = ["-t", toy_model, "--data", toy_data, "--topk", str(pieces + 1)]
    assert_fails(kdmt("soft-targets", *too_many, "-o", soft), message)
    assert not (tmp_path / WORK_DIR).exists() and not soft.exists()
    args = ["train-student", *too_many, "--out", tmp_path / "s", "--alpha", "0.5", "--max-steps", "1"]
    assert_fails(kdmt(*args), message)
    assert not (tmp_path / "s").exists()
