"""Training under torchrun (gloo, 2 processes on the CPU): it equals one process with twice the --update-freq,
for a teacher and for a student with word-KD and hidden-state KD through projections; a resumed 2-process
run equals an uninterrupted one; a resume with another number of processes says what happens."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdmt import distributed
from kdmt.batching import token_batches
from kdmt.checkpoint import load_checkpoint
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.run_dir import LAST

STEPS = 8
TOY = ["--preset", "tiny", "--max-tokens", "1500", "--lr", "1e-3", "--warmup", "5", "--max-steps", str(STEPS)]
TOY += ["--valid-interval", "3", "--valid-bleu-sents", "0", "--log-interval", "1", "--seed", "3", "--device", "cpu"]
COLLECTIVE_WORKER = (str(Path(__file__).parent / "collective_worker.py"),)
STUDENT = ["--alpha", "0.5", "--temperature", "2", "--hidden-kd", "both", "--d-model", "32", "--d-ff", "64"]


def kdmt(*args, processes: int = 1, program: tuple[str, ...] = ("-m", "kdmt"), **env) -> subprocess.CompletedProcess:
    """`python -m kdmt ARGS` (or another `program` of the command line) in a fresh process, or under torchrun
    with `processes` processes; `env`: more environment variables."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*launcher, *program, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def records(out) -> dict[int, dict]:
    """The training lines of metrics.jsonl by step; each step must be there once."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == sorted(set(steps)), steps
    return {r["step"]: r for r in lines if "loss" in r}


def assert_same_run(a, b, figures=("loss", "nll", "grad_norm")) -> None:
    """Equal per-step figures, and equal weights and objective parameters at the end (to float tolerance).
    The gradient's norm before clipping shows a wrong scale of the gradient, which clipping and Adam's
    normalisation would hide from the losses and the weights. The attention's key biases have a gradient of
    zero but for rounding (softmax ignores them), which Adam turns into steps of up to the learning rate:
    summed in another order, they agree to STEPS of it."""
    ra, rb = records(a), records(b)
    assert sorted(ra) == sorted(rb) == list(range(1, STEPS + 1))
    for step in ra:
        assert ra[step]["epoch"] == rb[step]["epoch"]
        for key in figures:
            assert ra[step][key] == pytest.approx(rb[step][key], rel=1e-6), (step, key)
    ca, cb = (load_checkpoint(out / "checkpoint_last.safetensors") for out in (a, b))
    for k, v in ca.model.state_dict().items():
        atol = STEPS * 1e-3 if k.endswith(".k.bias") else 1e-6
        torch.testing.assert_close(v, cb.model.state_dict()[k], rtol=1e-5, atol=atol, msg=k)
    assert ca.train_state["objective"].keys() == cb.train_state["objective"].keys()
    for k, v in ca.train_state["objective"].items():
        torch.testing.assert_close(v, cb.train_state["objective"][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def teacher_2p(toy_data, tmp_path_factory):
    """A teacher trained by 2 processes without dropout; its run directory and stderr."""
    out = tmp_path_factory.mktemp("teacher_2p")
    result = kdmt("train-teacher", "--data", toy_data, "--out", out, "--dropout", "0", *TOY, processes=2)
    return out, result.stderr


def test_two_processes_train_a_teacher_as_one_with_update_freq_2(teacher_2p, toy_data, tmp_path):
    out, stderr = teacher_2p
    kdmt("train-teacher", "--data", toy_data, "--out", tmp_path, "--dropout", "0", "--update-freq", "2", *TOY)
    assert_same_run(out, tmp_path)
    epochs = [r["epoch"] for r in records(out).values()]
    assert epochs[0] < epochs[-1]  # the plan's epochs are crossed the same way
    assert max(r["grad_norm"] for r in records(out).values()) > 1.0  # logged before clipping (--clip-norm 1)
    assert stderr.count("teacher: ") == stderr.count("step 3: valid_loss") == 1  # rank 0 alone speaks


def test_two_processes_with_update_freq_2_train_a_student_as_one_with_4(teacher_2p, toy_data, tmp_path):
    """Word-KD from an online teacher, hidden-state KD through projections, gradient accumulation."""
    teacher = teacher_2p[0] / "checkpoint_last.safetensors"
    args = ["train-student", "--data", toy_data, "-t", teacher, *STUDENT, "--dropout", "0", *TOY]
    kdmt(*args, "--out", tmp_path / "2p", "--update-freq", "2", processes=2)
    kdmt(*args, "--out", tmp_path / "1p", "--update-freq", "4")
    objective = load_checkpoint(tmp_path / "2p" / "checkpoint_last.safetensors").train_state["objective"]
    assert any(k.startswith("projections.encoder") for k in objective)  # the widths differ: projections
    assert_same_run(tmp_path / "2p", tmp_path / "1p", ("loss", "nll", "grad_norm", "word_kd", "hidden_mse"))


def test_a_resumed_two_process_run_equals_the_uninterrupted_run(toy_data, tmp_path):
    """With dropout: each rank's random state is saved and restored. Resumed by one process instead, the
    run goes on and says what changes."""
    args = ["train-teacher", "--data", toy_data, "--dropout", "0.1", *TOY]
    kdmt(*args, "--out", tmp_path / "full", processes=2)
    kdmt(*args, "--out", tmp_path / "split", "--max-steps", "5", processes=2)
    shutil.copytree(tmp_path / "split", tmp_path / "other")
    kdmt(*args, "--out", tmp_path / "split", "--resume", processes=2)
    assert_same_run(tmp_path / "full", tmp_path / "split")
    stderr = kdmt(*args, "--out", tmp_path / "other", "--resume", "--update-freq", "2").stderr
    assert "was written by a run on 2 processes, this one has 1: it continues from step 5" in stderr
    assert "will not repeat exactly" in stderr and sorted(records(tmp_path / "other")) == list(range(1, STEPS + 1))


def test_a_two_process_resume_reads_the_checkpoint_on_every_rank_and_shares_decisions_alone(toy_data, tmp_path):
    """No pickled collective carries the weights or Adam's state (each rank reads checkpoint_last itself),
    and none is made each step (the stop decision is a tensor broadcast): 18 steps after the resume, a
    few small ones, for the validation and the random states."""
    args = ["train-teacher", "--data", toy_data, "--out", tmp_path / "run", "--dropout", "0", *TOY]
    kdmt(*args, "--max-steps", "2", processes=2)
    log = tmp_path / "collectives.log"
    more = ["--max-steps", "20", "--valid-interval", "100", "--resume"]
    kdmt(*args, *more, processes=2, program=COLLECTIVE_WORKER, COLLECTIVE_LOG=log)
    assert sorted(records(tmp_path / "run")) == list(range(1, 21))
    sent = [int(line.split("\t")[1]) for line in log.read_text().splitlines() if line.startswith("0\t")]
    assert 0 < len(sent) < 18 and max(sent) < 100_000  # the tiny model's weights alone are 2.8 MB


def test_epochs_resumed_with_another_number_of_processes_take_the_epochs_batches(toy_data, tmp_path):
    """--epochs 1 stopped after 3 steps of 2 processes (6 batches) and resumed by one: it ends at the step
    that takes epoch 0's last batch, not after as many steps as one process takes an epoch in."""
    args = ["train-teacher", "--data", toy_data, "--out", tmp_path, "--dropout", "0", *TOY, "--epochs", "1"]
    kdmt(*args, "--max-steps", "3", processes=2)
    kdmt(*args, "--max-steps", "1000", "--resume")
    train = PreparedData.open(toy_data).corpus("train")
    batches = len(token_batches(train.src_len, train.tgt_len, 1500))  # an epoch's, in any order
    s = load_checkpoint(tmp_path / LAST).train_state
    assert (s["epoch"], s["batch_in_epoch"], s["step"]) == (0, batches, 3 + batches - 6)
    assert max(records(tmp_path)) == s["step"]


@pytest.fixture
def four_gpus(monkeypatch):
    """A machine with four CUDA devices, as torch sees it (no GPU is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_a_process_takes_the_gpu_of_its_local_rank_modulo_the_gpus(four_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.local_device("cuda") == torch.device("cuda")  # outside torchrun: as asked
    monkeypatch.setenv("LOCAL_RANK", "6")
    assert distributed.local_device("cuda") == torch.device("cuda", 2)
    assert distributed.local_device("cuda:1") == torch.device("cuda", 1)  # an index given is kept
    assert distributed.local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("RANK", "5")
    assert distributed.launch_rank() == 5


def test_training_under_torchrun_takes_one_gpu_a_process(four_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(KdmtError, match="local rank 4 has no GPU of its own"):
        distributed.init("cuda")
    with pytest.raises(KdmtError, match="--device cuda, not cuda:1"):
        distributed.init("cuda:1")
