"""Distillation and soft targets shared by several processes, torchrun's or independent commands: each
shard done once, a killed run resumed with another number of processes, and the outputs byte-identical
to one process's."""

import gzip
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs, toy_setup

from kdmt.checkpoint import load_checkpoint
from kdmt.shards import WORK_DIR
from kdmt.soft_targets import SoftTargetSettings, array_paths, compute_soft_targets

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics in every process
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
WORKER = [sys.executable, str(TESTS / "shard_worker.py")]


class Killed(Exception):
    pass


def run(command: list, env: dict | None = None) -> None:
    result = subprocess.run([str(c) for c in command], env=env or ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def unique_sources(n: int, seed: int) -> list[str]:
    return list(dict.fromkeys(toy_pairs(3 * n, seed=seed)[0]))[:n]


def distill_args(model: Path, src: Path, out: Path) -> list:
    return ["distill", "-t", model, "--src", src, "-o", out, "--beam", "2", "--nbest", "2", "--shard-size", "4"]


def distilled(out: Path) -> list[bytes]:
    return [Path(f"{out}{ext}").read_bytes() for ext in ("", ".nbest", ".json")]


def soft_target_files(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in (out, *array_paths(out).values())]


def test_distill_on_torchrun_equals_one_process(toy_model, tmp_path):
    src = write(tmp_path / "train.src", unique_sources(40, seed=21))
    one, two = tmp_path / "one.tgt", tmp_path / "two.tgt"
    run([sys.executable, "-m", "kdmt", *distill_args(toy_model, src, one)])
    run([*TORCHRUN, "-m", "kdmt", *distill_args(toy_model, src, two)])
    assert distilled(two) == distilled(one) and not (tmp_path / WORK_DIR).exists()


def test_processes_claim_each_shard_once_and_a_killed_run_resumes_with_one(toy_model, tmp_path):
    lines = unique_sources(40, seed=22)  # 10 shards of 4 lines, each known by its first line
    src, one, out = write(tmp_path / "train.src", lines), tmp_path / "one.tgt", tmp_path / "out.tgt"
    run([sys.executable, "-m", "kdmt", *distill_args(toy_model, src, one)])
    log, start = tmp_path / "log", tmp_path / "start"
    start.mkdir()
    env = {**ENV, "SHARD_LOG": str(log), "SHARD_START": str(start), "SHARD_PROCESSES": "2"}
    # two independent commands start together; one is killed at its 3rd shard, the other at its 4th
    command = [str(c) for c in WORKER + distill_args(toy_model, src, out)]
    workers = [subprocess.Popen(command, env={**env, "SHARD_DIE_AT": n}, stderr=subprocess.PIPE) for n in "34"]
    assert [w.wait(timeout=300) for w in workers] == [-signal.SIGKILL] * 2
    assert len(list((tmp_path / WORK_DIR / "out.tgt.shards" / "done").glob("*.json"))) == 2 + 3  # a record per shard
    assert not out.exists()
    run(WORKER + distill_args(toy_model, src, out), {**ENV, "SHARD_LOG": str(log)})  # the resume: 1 process
    assert distilled(out) == distilled(one)
    translated = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(first for _, first in translated) == sorted(lines[::4])  # every shard once, none twice
    assert sorted(Counter(pid for pid, _ in translated).values()) == [2, 3, 5]  # the killed shards: resumed


def test_distill_reads_a_gzipped_source_by_shards_and_names_a_bad_line(toy_model, tmp_path):
    lines = unique_sources(10, seed=23)
    src = write(tmp_path / "train.src", lines)
    packed = tmp_path / "train.src.gz"
    packed.write_bytes(gzip.compress(src.read_bytes()))
    plain, from_gz = tmp_path / "plain.tgt", tmp_path / "gz.tgt"
    for source, out in ((src, plain), (packed, from_gz)):
        assert kdmt(*distill_args(toy_model, source, out)).exit_code == 0
    assert from_gz.read_bytes() == plain.read_bytes()
    bad = tmp_path / "bad.src"
    bad.write_bytes(src.read_bytes().replace(lines[6].encode(), b"a \xff b"))
    assert_fails(kdmt(*distill_args(toy_model, bad, tmp_path / "o")), "bad.src: line 7 is not valid UTF-8")


def test_soft_targets_on_torchrun_equal_one_process(toy_model, toy_data, tmp_path):
    sources = (toy_data / "train.src").read_text().splitlines()
    distilled = write(tmp_path / "distilled.tgt", [" ".join(reversed(s.split()[1:])) for s in sources])
    args = ["soft-targets", "-t", toy_model, "--data", toy_data, "--distilled", distilled, "--topk", "3"]
    args += ["--shard-size", "700"]
    # two processes first: one tokenizes the student's corpus, the other waits and maps it
    run([*TORCHRUN, "-m", "kdmt", *args, "-o", tmp_path / "two.json"])
    run([sys.executable, "-m", "kdmt", *args, "-o", tmp_path / "one.json"])
    assert soft_target_files(tmp_path / "two.json") == soft_target_files(tmp_path / "one.json")
    assert not (tmp_path / WORK_DIR).exists()


def test_killed_soft_targets_resume_to_the_same_bytes(toy_model, toy_data, tmp_path):
    _, train, _ = toy_setup(toy_data)
    teacher = load_checkpoint(toy_model).model

    def compute(out, **kw):
        return compute_soft_targets([teacher], train, SoftTargetSettings(["toy"], [1.0], 3, shard_size=700), out, **kw)

    def kill_after_second(shard):
        if shard == 1:
            raise Killed

    full, resumed = tmp_path / "full.json", tmp_path / "resumed.json"
    compute(full)
    with pytest.raises(Killed):
        compute(resumed, after_shard=kill_after_second)
    assert not resumed.exists()
    progress = []
    store = compute(resumed, progress=progress.append)
    assert soft_target_files(resumed) == soft_target_files(full) and not (tmp_path / WORK_DIR).exists()
    assert sum(progress) == len(train) and store.offsets[-1] == int(train.tgt_len.sum())


def test_bad_soft_target_files_fail_cleanly(toy_model, toy_data, tmp_path):
    soft = tmp_path / "soft.json"
    result = kdmt("soft-targets", "-t", toy_model, "--data", toy_data, "-o", soft, "--topk", "2")
    assert result.exit_code == 0, result.stderr
    args = ["train-student", "--data", toy_data, "--out", tmp_path / "s", "--alpha", "1", "--max-steps", "1"]
    distilled_lines = (toy_data / "train.src").read_text().splitlines()
    distilled = write(tmp_path / "distilled.tgt", distilled_lines)  # another corpus than the references
    assert_fails(kdmt(*args, "--distilled", distilled, "--soft-targets", soft), "computed on another corpus")
    assert_fails(kdmt(*args, "--soft-targets", tmp_path / "missing.json"), "missing.json: no such file")
    array_paths(soft)["logp"].write_bytes(b"damaged")
    assert_fails(kdmt(*args, "--soft-targets", soft), "soft.logp.npy: damaged (not the sha256 that soft.json records)")
    array_paths(soft)["logp"].unlink()
    assert_fails(kdmt(*args, "--soft-targets", soft), "soft.logp.npy: cannot be read (No such file or directory)")
    soft.write_text("{}")
    assert_fails(kdmt(*args, "--soft-targets", soft), "soft.json: not a kdmt soft-targets file")
