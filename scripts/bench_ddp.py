"""Training throughput with 1 and more processes (torchrun; gloo on the CPU, NCCL on GPUs): target tokens
per second of `kdmt train-teacher`, at the same global batch.

Runs the real command, plainly and under torchrun, for a fixed number of steps; every run has the global
batch of the largest process count (processes × --update-freq is constant), and the CPU's cores are
shared out among the processes (OMP_NUM_THREADS). Reports the median of the logged tokens/s (global target
tokens over rank 0's time) after the first log line, with the hardware named. Example:

    python scripts/bench_ddp.py --data work/demo/data --preset tiny --processes 1 2 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kdmt.device import describe_device


def train(data: Path, out: Path, processes: int, update_freq: int, threads: int, args: argparse.Namespace) -> float:
    """Median training target tokens/s of one run."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    options = ["--data", data, "--out", out, "--preset", args.preset, "--max-tokens", args.max_tokens]
    options += ["--update-freq", update_freq, "--max-steps", args.steps, "--valid-interval", args.steps]
    options += ["--valid-bleu-sents", 0, "--log-interval", args.log_interval, "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run([*launcher, "-m", "kdmt", "train-teacher", *map(str, options)], env=env, capture_output=True)
    if run.returncode:
        sys.exit(run.stderr.decode(errors="replace")[-3000:])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if "tokens_per_s" in r]
    return statistics.median(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a directory written by kdmt prepare")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="threads per process (default: the cores shared out)")
    args = ap.parse_args()

    batch = max(args.processes)
    cores = os.cpu_count() or 1
    for n in args.processes:
        if batch % n:
            raise SystemExit(f"{n} processes cannot share the batch of {batch} × --max-tokens")
        threads = args.threads or max(1, cores // n)
        with tempfile.TemporaryDirectory() as tmp:
            rate = train(args.data, Path(tmp) / "run", n, batch // n, threads, args)
        torch.set_num_threads(threads)
        row = {
            "processes": n,
            "threads_per_process": threads,
            "update_freq": batch // n,
            "global_batch_tokens": batch * args.max_tokens,
            "preset": args.preset,
            "median_target_tokens_per_s": round(rate),
            "steps": args.steps,
            "device": describe_device(torch.device(args.device)),
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
