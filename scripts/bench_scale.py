"""kdmt at scale: synthetic corpora of growing size, made from the shipped Multi30k, each pair made unique.

Pair i is Multi30k training pair i mod 29,000, both sides followed by the number of the round (i div 29,000)
written as words of the corpus (base 1,000), so that no two pairs are equal and no new vocabulary appears.
For each size, each section runs kdmt on that corpus and prints one JSON line with the hardware:

  prepare   `kdmt prepare` in a subprocess: wall time, pairs/s, the operating system's peak resident memory
            of its largest process (getrusage via wait4: ru_maxrss) and the peak proportional memory (PSS)
            of its whole process tree, sampled every 0.1 s (the tokenization workers included).
  train     `kdmt train-teacher` (tiny preset, a few steps) on that data, with 1 process (--update-freq 2, both
            cores) and under torchrun with 2 (gloo, one core each), the same global batch: peak memory of
            the largest process (start-up: the mapped corpus, its lengths and the batch plan) and the
            median logged target tokens/s.
  distill   `kdmt distill` of the whole training source by the tiny teacher just trained, stopped after
            --distill-seconds: peak memory while it indexes the source and works through its first shards.
  startup   `kdmt train-teacher` for one step (tiny preset, one thread, the validation loss once): its peak
            memory on this corpus and on one of 29,000 pairs, and the bytes a training pair between the two
            (what training holds per pair: lengths, indices, the epoch's batch plan, pages read).

With --reference DIR (a checkout of an earlier kdmt, e.g. `git worktree add DIR COMMIT`), the prepare and
startup rows also hold that kdmt's figures on the same corpus, measured the same way, right after (the
startup on the data this kdmt prepared: the reference must read its format).

Sections are functions in SECTIONS; they find the corpus in WORK/SIZE/ and prepare's output in WORK/SIZE/data.
Example:

    python scripts/bench_scale.py --sizes 250000 1000000 4000000 --workers 2 --work work/scale
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdmt.device import describe_device
from kdmt.shards import work_path

REPO = Path(__file__).resolve().parent.parent
MULTI30K = REPO / "data" / "multi30k"


def make_corpus(root: Path, pairs: int) -> Path:
    """root/train.{de,en} with `pairs` unique pairs and root/val.{de,en} (Multi30k's); written once."""
    done = root / "CORPUS_DONE"
    if done.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    text = {lang: _read(MULTI30K / f"train.{lang}.gz") for lang in ("de", "en")}
    numerals = sorted({w for line in text["de"] for w in line.split() if w.isalpha()})[:1000]
    with open(root / "train.de", "w", encoding="utf-8") as de, open(root / "train.en", "w", encoding="utf-8") as en:
        for i in range(pairs):
            j, tag = i % len(text["de"]), _number(i // len(text["de"]), numerals)
            de.write(f"{text['de'][j]} {tag}\n")
            en.write(f"{text['en'][j]} {tag}\n")
    for lang in ("de", "en"):
        (root / f"val.{lang}").write_text("".join(line + "\n" for line in _read(MULTI30K / f"val.{lang}.gz")))
    done.touch()
    return root


def _read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _number(n: int, numerals: list[str]) -> str:
    words = []
    while True:
        n, digit = divmod(n, len(numerals))
        words.append(numerals[digit])
        if n == 0:
            return " ".join(words)


def measure(command: list[str], log: Path, env: dict | None = None, stop_after: float | None = None) -> dict:
    """Run `command` (its output to `log`): its wall time, the peak RSS of its largest process and the peak
    PSS of its process tree. With `stop_after` (seconds), it is sent SIGTERM then, and need not succeed."""
    start = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    peak_pss, stopped = 0, False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_pss = max(peak_pss, sum(_pss_kb(p) for p in _tree(process.pid)))
        if stop_after is not None and not stopped and time.perf_counter() - start > stop_after:
            process.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0 and not stopped:
        sys.exit(f"{' '.join(command)} failed:\n{log.read_text()}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": usage.ru_maxrss // 1024, "peak_tree_pss_mb": peak_pss // 1024}


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _pss_kb(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)


def bench_prepare(args: argparse.Namespace, root: Path, pairs: int) -> dict:
    out = root / "data"
    command = [sys.executable, "-m", "kdmt", "prepare", "--src", "de", "--tgt", "en", "--train", root / "train"]
    command += ["--valid", root / "val", "-o", out, "--workers", args.workers, "--vocab-size", args.vocab_size]
    if args.spm_sample:
        command += ["--spm-sample", args.spm_sample]
    row = measure([str(c) for c in command], root / "prepare.log")
    stats = json.loads((out / "prepare.json").read_text())["stats"]["train"]
    row |= {"pairs_per_s": round(pairs / row["seconds"]), "kept": stats["kept"], "workers": args.workers}
    row |= {"spm_sample": args.spm_sample or "default", "vocab_size": args.vocab_size}
    if args.reference:
        row["reference"] = bench_reference_prepare(args, root, pairs)
    return row


def bench_reference_prepare(args: argparse.Namespace, root: Path, pairs: int) -> dict:
    """The same prepare by the kdmt of another checkout (`--reference`, e.g. a `git worktree` of an earlier
    commit), measured the same way: the figures to compare with."""
    out = root / "data-reference"
    shutil.rmtree(out, ignore_errors=True)
    kdmt, env = reference_kdmt(args.reference)
    command = [*kdmt, "prepare", "--src", "de", "--tgt", "en"]
    command += ["--train", root / "train", "--valid", root / "val", "-o", out, "--vocab-size", args.vocab_size]
    row = measure([str(c) for c in command], root / "prepare-reference.log", env)
    shutil.rmtree(out, ignore_errors=True)
    return row | {"pairs_per_s": round(pairs / row["seconds"]), "commit": commit_of(args.reference)}


def reference_kdmt(checkout: Path) -> tuple[list[str], dict]:
    """The command that runs the kdmt of `checkout`, and its environment."""
    # -P: no working directory first on sys.path, where this kdmt could be found before that one
    command = [sys.executable, "-P", "-c", "from kdmt.cli import main; main()"]
    return command, {**os.environ, "PYTHONPATH": str(checkout.resolve())}


def commit_of(checkout: Path) -> str:
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True)
    return commit.stdout.decode().strip()


def bench_train(args: argparse.Namespace, root: Path, pairs: int) -> dict:
    """One row per process count, in a dict keyed by it."""
    rows = {}
    for processes in (1, 2):
        out = root / f"train-{processes}p"
        shutil.rmtree(out, ignore_errors=True)
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command = [*launcher, "-m", "kdmt", "train-teacher", "--data", root / "data", "--out", out]
        command += ["--preset", "tiny", "--max-tokens", 2048, "--update-freq", 2 // processes, "--device", "cpu"]
        command += ["--max-steps", args.train_steps, "--valid-interval", args.train_steps, "--valid-bleu-sents", 0]
        command += ["--log-interval", 5]
        threads = max(1, len(os.sched_getaffinity(0)) // processes)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        row = measure([str(c) for c in command], root / f"train-{processes}p.log", env)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in lines if "tokens_per_s" in r][1:]  # the first includes start-up
        row |= {"threads_per_process": threads, "median_target_tokens_per_s": round(statistics.median(rates))}
        rows[f"{processes}p"] = row
    return rows


def bench_distill(args: argparse.Namespace, root: Path, pairs: int) -> dict:
    out = root / "distill"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    teacher = root / "train-1p" / "checkpoint_last.safetensors"
    command = [sys.executable, "-m", "kdmt", "distill", "-t", teacher, "--src", root / "data" / "train.src"]
    command += ["-o", out / "train.tgt", "--beam", 1, "--shard-size", 2000, "--device", "cpu"]
    row = measure([str(c) for c in command], root / "distill.log", stop_after=args.distill_seconds)
    done = len(list((work_path(out / "train.tgt") / "done").glob("*.json")))  # one record per finished shard
    return row | {"stopped_after_s": args.distill_seconds, "shards_done": done}


STARTUP_BASE = 29_000  # pairs of the corpus whose start-up memory is the fixed part


def bench_startup(args: argparse.Namespace, root: Path, pairs: int) -> dict:
    """Peak memory of one training step here and on STARTUP_BASE pairs, and the bytes a pair between the two;
    with --reference, that kdmt's, right after."""
    base = args.work / "startup-base"
    if not (base / "data" / "prepare.json").is_file():
        bench_prepare(argparse.Namespace(**{**vars(args), "reference": None}), make_corpus(base, STARTUP_BASE), 0)
    row = startup(root, base, pairs, [sys.executable, "-m", "kdmt"], dict(os.environ), "startup")
    if args.reference:
        kdmt, env = reference_kdmt(args.reference)
        row["reference"] = startup(root, base, pairs, kdmt, env, "startup-reference")
        row["reference"]["commit"] = commit_of(args.reference)
    return row


def startup(root: Path, base: Path, pairs: int, kdmt: list[str], env: dict, name: str) -> dict:
    """One step of `kdmt train-teacher` by `kdmt` on root's data and on base's: their peak RSS, bytes a pair."""
    peaks = []
    for data in (root, base):
        out = data / name
        shutil.rmtree(out, ignore_errors=True)
        command = [*kdmt, "train-teacher", "--data", data / "data", "--out", out, "--preset", "tiny", "--device", "cpu"]
        command += ["--max-tokens", 2048, "--max-steps", 1, "--valid-interval", 1, "--valid-bleu-sents", 0]
        peaks.append(measure([str(c) for c in command], data / f"{name}.log", env | {"OMP_NUM_THREADS": "1"}))
        shutil.rmtree(out, ignore_errors=True)
    row, fixed = peaks
    per_pair = (row["peak_rss_mb"] - fixed["peak_rss_mb"]) * 2**20 / (pairs - STARTUP_BASE)
    return row | {"base_peak_rss_mb": fixed["peak_rss_mb"], "bytes_per_pair": round(per_pair, 1)}


SECTIONS: dict[str, Callable[[argparse.Namespace, Path, int], dict]] = {
    "prepare": bench_prepare,
    "train": bench_train,
    "distill": bench_distill,
    "startup": bench_startup,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000], help="corpus pairs")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--work", type=Path, default=REPO / "work" / "scale", help="where corpora and outputs go")
    ap.add_argument("--workers", type=int, default=2, help="kdmt prepare --workers")
    ap.add_argument("--spm-sample", type=int, default=None, help="kdmt prepare --spm-sample (default: kdmt's)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--reference", type=Path, help="a checkout of another kdmt whose prepare to measure beside")
    ap.add_argument("--train-steps", type=int, default=40, help="steps of each training run")
    ap.add_argument("--distill-seconds", type=float, default=60, help="how long distill runs before it is stopped")
    args = ap.parse_args()

    hardware = {"hardware": describe_device(torch.device("cpu")), "cpus": len(os.sched_getaffinity(0))}
    for pairs in args.sizes:
        root = make_corpus(args.work / str(pairs), pairs)
        for section in args.sections:
            row = {"section": section, "pairs": pairs, **SECTIONS[section](args, root, pairs), **hardware}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
