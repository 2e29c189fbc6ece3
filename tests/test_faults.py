"""Fault injection: each command killed (SIGKILL) at seeded file events, then run again, ends with the outputs
of an uninterrupted run (bytes for corpora and models, weights and per-step losses for training); SIGTERM
during training and distillation saves the state, exits 130 and the next run resumes; a full disk, a
read-only directory and an output path that is a directory fail in one line, keeping earlier outputs; two
machines, simulated by two torchrun nodes on 127.0.0.1, train as one process with twice --update-freq.

The kills come from tests/fault_worker.py, which counts a command's file events (a temporary file made, an
output renamed into place, a metrics line) and kills itself at the one a seeded random.Random picks: the same
points on every machine. KDMT_FAULT_SEEDS (default 2) sets the kills per command."""

import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_cli import kdmt as kdmt_cli
from test_cli import write
from test_distributed import TOY, assert_same_run
from test_shards import unique_sources
from toy import toy_pairs

from kdmt import files
from kdmt.checkpoint import load_checkpoint
from kdmt.run_dir import BEST, LAST
from kdmt.shards import WORK_DIR
from kdmt.soft_targets import array_paths

SEEDS = int(os.environ.get("KDMT_FAULT_SEEDS", "2"))
TESTS = Path(__file__).parent
WORKER = [sys.executable, str(TESTS / "fault_worker.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics in every process
TALLY: Counter = Counter()  # faults injected, re-runs identical to the uninterrupted run


@pytest.fixture(scope="module")
def teacher(toy_data, tmp_path_factory) -> Path:
    """A teacher of a few steps (the faults need a model, not a good one): its last checkpoint."""
    out = tmp_path_factory.mktemp("teacher")
    assert kdmt_cli("train-teacher", "--data", toy_data, "--out", out, *TOY).exit_code == 0
    return out / LAST


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """After the module's tests, one line with the counts, on the terminal (not captured)."""
    yield
    line = (
        f"fault injection: {TALLY['injected']} kills injected ({SEEDS} seeds a command), "
        f"{TALLY['signals']} SIGTERMs, {TALLY['identical']} re-runs identical to the uninterrupted run"
    )
    plugins = request.config.pluginmanager
    if reporter := plugins.getplugin("terminalreporter"):
        with plugins.getplugin("capturemanager").global_and_fixture_disabled():  # teardown output is captured
            reporter.write_line("\n" + line)


def run(args: list, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """The kdmt command line in a fresh process (the fault worker's), with these environment variables."""
    command = [*WORKER, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env={**ENV, **env}, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, but the temporary files that a SIGKILL leaves behind."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def training(out: Path) -> dict:
    """A training run's end: the last and best weights, and each step's loss and each validation once."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == sorted(set(steps)), steps
    return {
        "losses": {r["step"]: r["loss"] for r in lines if "loss" in r},
        "validations": [(r["step"], r["valid_loss"]) for r in lines if "valid_loss" in r],
        **{name: load_checkpoint(out / name).model.state_dict() for name in (LAST, BEST)},
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


Events = list[tuple[str, str]]  # (kind, file name) in the order of an uninterrupted run
Pick = Callable[[random.Random, Events], tuple[str, int]]


def any_event(rng: random.Random, events: Events) -> tuple[str, int]:
    """Any event: a kind, then one of its events."""
    kind = rng.choice(sorted({k for k, _ in events}))
    return kind, rng.randint(1, sum(k == kind for k, _ in events))


def a_step_before_the_last(rng: random.Random, events: Events) -> tuple[str, int]:
    """A metrics line before the last step's: the signal comes while training has steps to go."""
    return "log", rng.randint(1, sum(k == "log" for k, _ in events) - 2)


def a_rename(rng: random.Random, events: Events) -> tuple[str, int]:
    """An output about to be renamed into place. (SIGTERM between the making of a temporary file and the
    start of atomic_path's block is a window of a few bytecodes, left unguarded.)"""
    return "rename", rng.randint(1, sum(k == "rename" for k, _ in events))


def the_rename_of(name: str) -> Pick:
    """The first rename of a file whose name begins with `name`: a fixed point, where a bug was found."""

    def pick(rng: random.Random, events: Events) -> tuple[str, int]:
        renames = [file for kind, file in events if kind == "rename"]
        return "rename", next(i for i, file in enumerate(renames, start=1) if file.startswith(name))

    return pick


RANDOM = (any_event, a_step_before_the_last, a_rename)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def kill_and_rerun(
    work: Path,
    name: str,
    command: Callable[[], list],
    outputs: Callable[[], object],
    again: Callable[[], list] = list,
    signals: dict[str, list[Pick]] | None = None,
    **env: str,
) -> None:
    """Run `command` uninterrupted in `work`, listing its events; then, for each signal, each of its picks
    and (for a random pick) each seed, in a fresh `work`: stop it with the signal at the event picked, and
    run it again (with `again()`'s
    extra arguments). The outputs are those of the uninterrupted run. SIGKILL kills at once; SIGTERM stops
    the command as documented: exit 130, no temporary file left."""
    log = work.parent / f"{name}.events"
    work.mkdir()
    run(command(), FAULT_LOG=str(log), **env)
    expected = outputs()
    events = [tuple(line.split("\t")) for line in log.read_text().splitlines()]
    for sig, picks in (signals or {"KILL": [any_event]}).items():
        for seed, pick in [(s, p) for p in picks for s in range(SEEDS if p in RANDOM else 1)]:
            kind, at = pick(random.Random(f"{name}:{sig}:{seed}"), events)
            shutil.rmtree(work)
            work.mkdir()
            stopped = run(command(), check=False, FAULT_AT=f"{kind}:{at}", FAULT_SIGNAL=sig, **env)
            where = (sig, kind, at, stopped.stderr[-3000:])
            if sig == "KILL":
                assert stopped.returncode == -signal.SIGKILL, where
                TALLY["injected"] += 1
            else:
                assert stopped.returncode == 130 and "interrupted" in stopped.stderr, where
                assert not leftovers(work), where
                TALLY["signals"] += 1
            run(command() + again(), **env)
            assert same(outputs(), expected), f"{name}: SIG{sig} at {kind} {at}, the re-run differs"
            TALLY["identical"] += 1


def resume_if_started(out: Path) -> Callable[[], list]:
    return lambda: ["--resume"] if (out / LAST).exists() else []


def distilled(out: Path) -> list[bytes]:
    assert not (out.parent / WORK_DIR).exists()
    return [Path(f"{out}{ext}").read_bytes() for ext in ("", ".nbest", ".json")]


# --- SIGKILL at random points, then the same command again ----------------------------------------------
def test_killed_prepare_reruns_to_the_same_bytes(tmp_path):
    for split, (s, t) in {"train": toy_pairs(300, seed=1), "valid": toy_pairs(20, seed=2)}.items():
        write(tmp_path / f"{split}.src", s), write(tmp_path / f"{split}.tgt", t)
    work = tmp_path / "work"
    args = ["prepare", "--src", "src", "--tgt", "tgt", "--train", tmp_path / "train", "--valid", tmp_path / "valid"]
    args += ["-o", work / "data", "--vocab-size", "14", "--spm-type", "word"]
    kill_and_rerun(work, "prepare", lambda: args, lambda: tree(work / "data"))


def test_killed_teacher_training_resumes_to_the_same_weights(toy_data, tmp_path):
    out = tmp_path / "work" / "teacher"
    args = ["train-teacher", "--data", toy_data, "--out", out, "--dropout", "0.1", *TOY]
    # a kill before the first checkpoint_last.safetensors: the re-run is a new run, in a directory with metrics lines
    signals = {"KILL": [any_event, the_rename_of(f".{LAST}.")], "TERM": [a_step_before_the_last]}
    kill_and_rerun(out.parent, "train-teacher", lambda: args, lambda: training(out), resume_if_started(out), signals)


def test_killed_student_training_with_word_kd_resumes_to_the_same_weights(toy_data, teacher, tmp_path):
    out = tmp_path / "work" / "student"
    args = ["train-student", "--data", toy_data, "-t", teacher, "--out", out, "--alpha", "0.5"]
    args += ["--temperature", "2", "--d-model", "32", "--d-ff", "64", "--dropout", "0.1", *TOY]
    kill_and_rerun(out.parent, "train-student", lambda: args, lambda: training(out), resume_if_started(out))


@pytest.mark.parametrize("engine", ["kdmt", "ctranslate2"])
def test_killed_distill_reruns_to_the_same_bytes(teacher, tmp_path, engine):
    pytest.importorskip("ctranslate2") if engine == "ctranslate2" else None
    src = write(tmp_path / "train.src", unique_sources(24, seed=31))
    work = tmp_path / "work"
    args = ["distill", "-t", teacher, "--src", src, "-o", work / "out.tgt", "--beam", "2", "--nbest", "2"]
    args += ["--shard-size", "4", "--engine", engine, "--device", "cpu"]
    # the conversion's cache is in `work`, made anew by each run: a kill may hit the conversion too
    signals = {"KILL": [any_event], "TERM": [a_rename]} if engine == "kdmt" else None
    cache = str(work / "cache")
    kill_and_rerun(
        work, f"distill-{engine}", lambda: args, lambda: distilled(work / "out.tgt"), list, signals, KDMT_CACHE=cache
    )


def test_killed_soft_targets_rerun_to_the_same_bytes(teacher, toy_data, tmp_path):
    sources = (toy_data / "train.src").read_text().splitlines()
    hyps = write(tmp_path / "distilled.tgt", [" ".join(reversed(s.split()[1:])) for s in sources])
    work = tmp_path / "work"
    out = work / "soft.json"
    args = ["soft-targets", "-t", teacher, "--data", work / "data", "--distilled", work / hyps.name, "--topk", "3"]
    args += ["--shard-size", "700", "-o", out]

    def command() -> list:
        """The data and the corpus in `work`, so that each run tokenizes the student's corpus anew (its cache is
        in the data's directory)."""
        shutil.copytree(toy_data, work / "data", dirs_exist_ok=True)
        shutil.copy2(hyps, work)
        return args

    def outputs() -> list[bytes]:
        assert not (out.parent / WORK_DIR).exists()
        return [p.read_bytes() for p in (out, *array_paths(out).values())]

    signals = {"KILL": [any_event, the_rename_of("logp.npy")]}  # the arrays half moved into place
    kill_and_rerun(work, "soft-targets", command, outputs, signals=signals)


def test_killed_export_reruns_to_the_same_bytes(teacher, tmp_path):
    pytest.importorskip("ctranslate2")
    work = tmp_path / "work"
    args = ["export", teacher, "-o", work / "model", "--force"]
    kill_and_rerun(work, "export", lambda: args, lambda: tree(work / "model"))


# --- a full disk, unwritable and wrong output paths --------------------------------------------------------
def limited_to(size: int) -> Callable[[], None]:
    """A child process whose files cannot grow past `size` bytes: a write beyond fails with EFBIG."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def run_limited(args: list, size: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kdmt", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=limited_to(size))


def assert_one_line(result: subprocess.CompletedProcess, command: str, message: str) -> None:
    """Exit 1 and, after what the command said while it worked, one line of error: no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kdmt {command}: error: ") and message in last, result.stderr[-3000:]


def test_a_full_disk_fails_in_one_line_and_keeps_the_earlier_outputs(toy_data, teacher, tmp_path):
    """A checkpoint (torch's own writer) and a corpus (Python's files) that cannot be written."""
    out = tmp_path / "teacher"
    args = ["train-teacher", "--data", toy_data, "--out", out, *TOY, "--max-steps", "3", "--dropout", "0"]
    assert kdmt_cli(*args).exit_code == 0
    before = tree(out)
    result = run_limited([*args, "--resume", "--max-steps", "6"], len(before[LAST]) // 2)
    assert_one_line(result, "train-teacher", "checkpoint_last.safetensors: cannot write the checkpoint (a full disk?)")
    # the state to resume from is intact (the smaller best and numbered checkpoints of step 6 fit: complete)
    assert (out / LAST).read_bytes() == before[LAST] and not leftovers(out)

    src = write(tmp_path / "train.src", unique_sources(8, seed=32))
    corpus = tmp_path / "out.tgt"
    args = ["distill", "-t", teacher, "--src", src, "-o", corpus, "--shard-size", "4"]
    assert kdmt_cli(*args).exit_code == 0
    before = [corpus.read_bytes(), Path(f"{corpus}.json").read_bytes()]
    assert_one_line(run_limited([*args, "--beam", "2"], 64), "distill", "File too large")
    assert [corpus.read_bytes(), Path(f"{corpus}.json").read_bytes()] == before
    assert not leftovers(tmp_path)


def unwritable_directory(tmp_path: Path) -> Path:
    """A directory where no file can be made, even by root (who ignores permissions): sysfs; else, for
    another user, a directory without write permission."""
    if os.geteuid() != 0:
        tmp_path.chmod(0o555)
        return tmp_path
    if not Path("/sys/kernel").is_dir() or os.access("/sys/kernel/kdmt", os.F_OK):
        pytest.skip("no sysfs")
    return Path("/sys/kernel")


@pytest.mark.parametrize("case", ["read-only", "parent is a file", "output is a directory"])
def test_an_unwritable_output_fails_in_one_line(teacher, tmp_path, case):
    target = {
        "read-only": lambda: unwritable_directory(tmp_path / "ro") / "avg.safetensors",
        "parent is a file": lambda: write(tmp_path / "file", ["x"]) / "avg.safetensors",
        "output is a directory": lambda: tmp_path,
    }
    (tmp_path / "ro").mkdir()
    out = target[case]()
    result = kdmt_cli("average", teacher, teacher, "-o", out)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("kdmt average: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not leftovers(tmp_path)


def test_a_missing_parent_directory_is_made(teacher, tmp_path):
    assert kdmt_cli("average", teacher, teacher, "-o", tmp_path / "a" / "b" / "avg.safetensors").exit_code == 0
    assert (tmp_path / "a" / "b" / "avg.safetensors").is_file()


def test_atomic_writes_sync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: calls.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))) or fsync(fd),
    )
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", os.path.basename(b))) or replace(a, b))
    files.write_text(tmp_path / "out.txt", "text")
    name = calls[0][1]
    assert name.startswith(".out.txt.") and calls == [("fsync", name), ("replace", "out.txt"), ("fsync", tmp_path.name)]


# --- two machines, simulated by two torchrun nodes on this one ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_nodes(args: list) -> None:
    """`torchrun --nnodes 2 --nproc-per-node 1` started twice, as on two machines, meeting at a c10d
    rendezvous on 127.0.0.1."""
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "faults",
                "-m",
                "kdmt",
                *map(str, args),
            ],
            env={**ENV, "GLOO_SOCKET_IFNAME": "lo"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errors = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]


def test_two_machines_train_as_one_process_with_update_freq_2_and_distill_the_same_bytes(toy_data, teacher, tmp_path):
    args = ["train-teacher", "--data", toy_data, "--dropout", "0", *TOY]
    on_two_nodes([*args, "--out", tmp_path / "2n"])
    run([*args, "--out", tmp_path / "1p", "--update-freq", "2"])
    assert_same_run(tmp_path / "2n", tmp_path / "1p")

    src = write(tmp_path / "train.src", unique_sources(16, seed=33))
    args = ["distill", "-t", teacher, "--src", src, "--beam", "2", "--nbest", "2", "--shard-size", "4"]
    on_two_nodes([*args, "-o", tmp_path / "2n.tgt"])
    assert kdmt_cli(*args, "-o", tmp_path / "1p.tgt").exit_code == 0
    assert distilled(tmp_path / "2n.tgt") == distilled(tmp_path / "1p.tgt")
