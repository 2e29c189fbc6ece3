"""The tables of `make -f recipes/multi30k-de-en/Makefile targets`: each selection's students against their seed's
beam-5 student, on test_2016_flickr and on the validation set, from the recipe's per-seed `kdmt report` files.

    python scripts/targets_table.py work/multi30k-de-en-cpu/targets
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {
    "beam5": "beam-5 best (seq-KD)",
    "seqinter": "seq-inter chrF, 8-best",
    "mbr": "MBR-chrF, 8-best",
    "sample-mbr": "MBR-chrF, 8 samples (top-p 0.9)",
    "backward": "beam-5 best, worst 10% by backward CE dropped",
    "keep2": "--keep 2 (the two MBR-best of the 8-best)",
}
METRICS = ("bleu", "chrf", "chrfpp")


def rows(report: Path) -> dict[str, dict]:
    """A report's rows by model, the seed dropped (targets/student-beam5-s1 → student-beam5)."""
    return {r["model"].split("/")[-1].rsplit("-s", 1)[0]: r for r in json.loads(report.read_text())}


def delta(row: dict, metric: str) -> str:
    """The difference from the baseline, ± half its 95% CI, its p-value, * where p < 0.05."""
    test = row.get("vs_baseline", {}).get(metric)
    if not test:
        return ""
    return f"{test['delta']:+.2f} ±{test['delta_ci']:.2f} p={test['p_value']:.3f}{'*' if test['significant'] else ''}"


def main() -> None:
    targets = Path(sys.argv[1])
    for label, prefix in (("test_2016_flickr", "seed"), ("val", "val-seed")):
        seeds = [rows(targets / f"{prefix}{s}" / "report.json") for s in (1, 2)]
        print(f"\n{label}, beam 5; Δ: against the same seed's beam-5 student\n")
        metrics = [f"{m} s{s}" for m in ("ΔBLEU", "ΔchrF", "ΔchrF++") for s in (1, 2)]
        print("| targets | BLEU s1 / s2 | chrF s1 / s2 | chrF++ s1 / s2 | " + " | ".join(metrics) + " |")
        print("| --- | " + " | ".join(["---:"] * 9) + " |")
        teacher = seeds[0]["teacher1"]
        print("| teacher1 | " + " | ".join(f"{teacher[m]:.2f}" for m in METRICS) + " |" + " |" * 6)
        for name, title in NAMES.items():
            pair = [seed[f"student-{name}"] for seed in seeds]
            cells = [" / ".join(f"{r[m]:.2f}" for r in pair) for m in METRICS]
            cells += [delta(r, m) if name != "beam5" else "" for m in METRICS for r in pair]
            print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
