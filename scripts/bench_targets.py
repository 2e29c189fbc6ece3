"""The cost of each distillation target of `kdmt distill`, side by side in one run: the beam-5 best, seq-inter
(chrF against the reference) and MBR-chrF over the 8-best, MBR-chrF over 8 samples, the beam-5 best filtered by
a backward model (and, with --kinds greedy, the greedy translation). Each is `kdmt distill` on the first --lines
lines of a corpus, run round-robin (every kind once, then again) so that a change of the machine's load falls on
all of them alike; the median wall time of --repeats runs, and its ratio to the beam-5 best's. Process start-up
and model loading are included (as a user pays them); on a large corpus they matter less.

    python scripts/bench_targets.py --teacher work/multi30k-de-en-cpu/teacher1/checkpoint_best.safetensors \\
        --backward work/multi30k-de-en-cpu/teacher-back/checkpoint_best.safetensors \\
        --src work/multi30k-de-en-cpu/data/train.src --ref work/multi30k-de-en-cpu/data/train.tgt --lines 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdmt.files import read_lines

KINDS = {
    "greedy": ["--beam", "1"],
    "beam5": ["--beam", "5"],
    "seqinter": ["--beam", "8", "--candidates", "8", "--select", "seq-inter", "--select-metric", "chrf"],
    "mbr": ["--beam", "8", "--candidates", "8", "--select", "mbr"],
    "sample-mbr": ["--sampling", "topp:0.9", "--candidates", "8", "--select", "mbr", "--seed", "1"],
    "backward": ["--beam", "5", "--filter-drop", "10"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--backward", help="The en→de model of --filter-backward (for the kind backward).")
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--ref", type=Path, help="References of --src (for the kind seqinter).")
    default_kinds = [k for k in KINDS if k != "greedy"]
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=default_kinds, help="beam5 always runs.")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_targets.json"))
    args = parser.parse_args()
    kinds = {k: KINDS[k] for k in KINDS if k in args.kinds or k == "beam5"}
    if ("backward" in kinds and not args.backward) or ("seqinter" in kinds and not args.ref):
        parser.error("the kind backward needs --backward, seqinter --ref")

    with tempfile.TemporaryDirectory() as tmp:
        src, ref = Path(tmp, "src"), Path(tmp, "ref")
        src.write_text("\n".join(read_lines(args.src)[: args.lines]) + "\n", encoding="utf-8")
        if args.ref:
            ref.write_text("\n".join(read_lines(args.ref)[: args.lines]) + "\n", encoding="utf-8")
        seconds: dict[str, list[float]] = {k: [] for k in kinds}
        for repeat in range(args.repeats):
            for kind, options in kinds.items():
                extra = {"seqinter": ["--ref", str(ref)], "backward": ["--filter-backward", args.backward]}
                out = Path(tmp, f"{kind}-{repeat}", "out.tgt")
                cmd = [sys.executable, "-m", "kdmt", "distill", "-t", args.teacher, "--src", str(src), "-o", str(out)]
                cmd += [*options, *extra.get(kind, []), "--threads", str(args.threads)]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seconds[kind].append(time.perf_counter() - start)
                print(f"{kind} run {repeat + 1}: {seconds[kind][-1]:.1f} s", file=sys.stderr)
    base = statistics.median(seconds["beam5"])
    rows = []
    print(f"| target | median s ({args.lines} lines) | lines/s | × beam-5 time |\n| --- | ---: | ---: | ---: |")
    for kind, times in seconds.items():
        median = statistics.median(times)
        rows.append({"target": kind, "seconds": times, "median_s": median, "ratio_to_beam5": median / base})
        print(f"| {kind} | {median:.1f} | {args.lines / median:.1f} | {median / base:.2f} |")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "lines": args.lines, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
