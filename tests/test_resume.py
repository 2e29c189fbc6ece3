"""A resumed training run reproduces the uninterrupted run exactly; what a resume refuses; progress in logs."""

import io
import json
import os
import shutil
import signal

import pytest
import torch
from rich.console import Console
from toy import train_toy

import kdmt.progress
from kdmt.checkpoint import load_checkpoint
from kdmt.data import load_corpus, read_parallel
from kdmt.errors import KdmtError
from kdmt.model import Transformer, make_config
from kdmt.progress import ProgressLine
from kdmt.run_state import restore_cuda_rng
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.vocab import Vocab


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r}


def test_resumed_run_equals_uninterrupted_run(toy_data, tmp_path):
    # dropout on and an epoch boundary crossed after the resume: RNG state and data order both matter
    settings = dict(dropout=0.1, valid_interval=15, keep_last=2)
    train_toy(toy_data, tmp_path / "full", max_steps=40, **settings)
    train_toy(toy_data, tmp_path / "split", max_steps=25, **settings)
    _, result = train_toy(toy_data, tmp_path / "split", resume=True, max_steps=40, **settings)
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 41))
    assert [split[s] for s in range(26, 41)] == [full[s] for s in range(26, 41)]
    assert result["step"] == 40
    epoch = {r["step"]: r["epoch"] for r in records(tmp_path / "split") if "loss" in r}
    assert epoch[40] > epoch[25]


def weights(out):
    return load_checkpoint(out / "checkpoint_last.safetensors").model.state_dict()


def validations(out) -> list[tuple[int, float]]:
    return [(r["step"], r["best"]) for r in records(out) if "valid_loss" in r]


def test_a_stop_between_validations_resumes_as_if_uninterrupted(toy_data, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) at step 25 saves the state without validating; the resumed run validates at
    30 and 45, as the uninterrupted one does, and ends with the same weights."""
    settings = dict(dropout=0.1, valid_interval=15, keep_last=2, patience=5, max_steps=45)
    train_toy(toy_data, tmp_path / "full", **settings)
    real_step = Trainer.train_step

    def interrupted_at_25(self, batches):
        stats = real_step(self, batches)
        if self.state.step == 25:
            os.kill(os.getpid(), signal.SIGINT)
        return stats

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_25)
    with pytest.raises(KeyboardInterrupt):
        train_toy(toy_data, tmp_path / "split", **settings)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "split" / "checkpoint_last.safetensors").train_state["step"] == 25
    assert [s for s, _ in validations(tmp_path / "split")] == [15]
    train_toy(toy_data, tmp_path / "split", resume=True, **settings)
    full, split = tmp_path / "full", tmp_path / "split"
    assert validations(split) == validations(full) and [s for s, _ in validations(full)] == [15, 30, 45]
    assert losses(split) == losses(full)
    names = [sorted(p.name for p in out.glob("checkpoint_*.safetensors")) for out in (split, full)]
    assert names[0] == names[1]
    for k, v in weights(full).items():
        assert torch.equal(v, weights(split)[k]), k


def test_metrics_after_a_crash_hold_each_step_once(toy_data, tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def crash_at_22(self, batches):
        if self.state.step == 21:
            raise RuntimeError("the machine died")
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", crash_at_22)
    with pytest.raises(RuntimeError):
        train_toy(toy_data, tmp_path, valid_interval=15, max_steps=30)
    monkeypatch.undo()
    # a numbered checkpoint written after the last state, as by a crash before checkpoint_last.safetensors was saved
    shutil.copy(tmp_path / "checkpoint_15.safetensors", tmp_path / "checkpoint_20.safetensors")
    train_toy(toy_data, tmp_path, resume=True, valid_interval=15, max_steps=30)
    steps = [r["step"] for r in records(tmp_path) if "loss" in r]
    assert steps == list(range(1, 31))
    assert [s for s, _ in validations(tmp_path)] == [15, 30]
    numbered = sorted(p.name for p in tmp_path.glob("checkpoint_[0-9]*.safetensors"))
    assert numbered == ["checkpoint_15.safetensors", "checkpoint_30.safetensors"]


def files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_finished_run_resumed_does_nothing_more(toy_data, tmp_path, monkeypatch):
    """A run that ended off the validation schedule (--max-steps 25, every 15 steps), or by early stopping,
    resumed with the same settings: no step, no validation, no file written."""
    settings = dict(max_steps=25, valid_interval=15)
    train_toy(toy_data, tmp_path / "bound", **settings)
    before = files(tmp_path / "bound")
    _, result = train_toy(toy_data, tmp_path / "bound", resume=True, **settings)
    assert result == {"step": 25, "stop": "max steps"} and files(tmp_path / "bound") == before
    monkeypatch.setattr(Trainer, "validate", lambda self: {"valid_loss": 1.0})  # no improvement after the first
    settings = dict(max_steps=40, valid_interval=5, patience=1)
    _, result = train_toy(toy_data, tmp_path / "early", **settings)
    assert result["step"] == 10 and result["stop"] == "early stopping"
    before = files(tmp_path / "early")
    _, result = train_toy(toy_data, tmp_path / "early", resume=True, **settings)
    assert result == {"step": 10, "stop": "early stopping"} and files(tmp_path / "early") == before


def test_max_time_counts_across_resumes(toy_data, tmp_path):
    train_toy(toy_data, tmp_path, max_steps=20, valid_interval=10)
    _, result = train_toy(toy_data, tmp_path, resume=True, max_steps=None, max_time=0.01, valid_interval=10)
    assert result["step"] == 20 and result["stop"] == "max time"  # the budget was spent before the resume


def test_resuming_another_model_or_corpus_fails_cleanly(toy_data, tmp_path):
    train_toy(toy_data, tmp_path, max_steps=4, valid_interval=2)
    vocab = Vocab.load(toy_data / "spm.model")
    valid = ValidSet(
        load_corpus(toy_data / "valid.src", toy_data / "valid.tgt", vocab, vocab),
        *read_parallel(toy_data / "valid.src", toy_data / "valid.tgt"),
    )
    config = TrainConfig(max_tokens=1500, max_steps=8, valid_interval=2, valid_bleu_sents=0)
    train = load_corpus(toy_data / "train.src", toy_data / "train.tgt", vocab, vocab)
    wider = Transformer(make_config(len(vocab), len(vocab), "tiny", d_model=32, dropout=0.0))
    with pytest.raises(KdmtError, match="holds another model: d_model 64 \\(now 32\\)"):
        Trainer(wider, vocab, vocab, train, valid, tmp_path, config, torch.device("cpu")).run(resume=True)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny", dropout=0.0))
    with pytest.raises(KdmtError, match="another corpus"):
        Trainer(model, vocab, vocab, valid.corpus, valid, tmp_path, config, torch.device("cpu")).run(resume=True)


def test_cuda_random_state_of_another_gpu_count(monkeypatch):
    """Older checkpoints hold one state per visible GPU; a resume with fewer GPUs must not crash."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    states = [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]
    restore_cuda_rng(states, torch.device("cuda:1"))
    restore_cuda_rng(states, torch.device("cuda:3"))  # not among the saved: left as it is
    restore_cuda_rng(states[0], torch.device("cuda:0"))
    restore_cuda_rng(states[0], torch.device("cpu"))
    assert restored == [(8, torch.device("cuda:1")), (7, torch.device("cuda:0"))]


def test_progress_lines_when_stderr_is_not_a_terminal(toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(kdmt.progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    with ProgressLine(console, "distill", 200, "sent") as progress:
        progress.advance(50)
        progress.update(100, "shard 1/2")
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("distill: 50/200 sent (25%), ") and " sent/s, ETA " in lines[0]
    assert lines[1].startswith("distill: 100/200 sent (50%)") and lines[1].endswith("shard 1/2")
