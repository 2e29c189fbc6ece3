"""A kdmt teacher as a stranger's: exported with `kdmt export --format huggingface`, then distilled as an
external teacher (`kdmt distill -t EXPORT --engine transformers`), beside `kdmt distill` of the checkpoint
itself, on the same lines, greedy and at beam 5, in one run.

Prints, for each beam, the share of lines the two corpora have identical and each command's seconds; with
--json, writes them. The commands are kdmt's own CLI, run as a user runs them (a fresh output each time).
Example (2 CPU threads):

    python scripts/roundtrip_teacher.py work/demo/teacher/checkpoint_best.safetensors \\
        --src work/demo/data/train.src --lines 2000 --threads 2 --json scripts/results/roundtrip-demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

KDMT = [sys.executable, "-m", "kdmt"]


def run(*args: str | Path) -> float:
    """Seconds `kdmt ARGS` took; its failure stops the script with its error."""
    start = time.perf_counter()
    done = subprocess.run([*KDMT, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kdmt {' '.join(map(str, args))} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def machine() -> str:
    """The CPU's name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--src", type=Path, required=True, help="the corpus whose first --lines lines are distilled")
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--json", type=Path, help="write the figures here")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "src.txt"
        with open(a.src, encoding="utf-8") as f:
            src.write_text("".join(islice(f, a.lines)), encoding="utf-8")
        export = work / "hf"
        run("export", a.checkpoint, "-o", export, "--format", "huggingface")
        rows = []
        for beam in a.beams:
            common = ["--src", src, "--beam", beam, "--threads", a.threads, "--no-filter"]
            own, theirs = work / f"kdmt-{beam}.txt", work / f"hf-{beam}.txt"
            seconds_own = run("distill", "-t", a.checkpoint, "-o", own, *common)
            seconds_hf = run("distill", "-t", export, "--engine", "transformers", "-o", theirs, *common)
            a_lines, b_lines = own.read_text().splitlines(), theirs.read_text().splitlines()
            same = sum(x == y for x, y in zip(a_lines, b_lines))
            rows.append(
                {
                    "beam": beam,
                    "lines": len(a_lines),
                    "identical": same,
                    "identical_share": round(same / max(len(a_lines), 1), 4),
                    "seconds_kdmt": round(seconds_own, 1),
                    "seconds_transformers": round(seconds_hf, 1),
                }
            )
            print(
                f"beam {beam}: {same:,} of {len(a_lines):,} lines identical ({same / max(len(a_lines), 1):.2%}); "
                f"kdmt {seconds_own:.1f} s, the export through transformers {seconds_hf:.1f} s"
            )
    if a.json:
        record = {"checkpoint": str(a.checkpoint), "threads": a.threads, "machine": machine(), "rows": rows}
        a.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
