"""The cost of MBR's chrF utilities, for `kdmt distill --select mbr`: N candidates a line, N·(N−1) sentence
chrF scores, three ways: sacrebleu's sentence_score for each pair, kdmt.selection.sacrebleu_pairwise_chrf (each
candidate's n-grams extracted once, sacrebleu's statistics), and fastchrf's pairwise_chrf (Rust; optional,
`pip install fastchrf`). Candidates are noisy variants of Multi30k's English sentences (words dropped,
swapped, repeated, replaced), a stand-in for a teacher's samples; the timing does not depend on who wrote
them. Prints the seconds a line and whether each fast path selects what sacrebleu selects.

    python scripts/bench_mbr.py --lines 300 --candidates 8 32
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from sacrebleu.metrics import CHRF

from kdmt.files import read_lines
from kdmt.selection import sacrebleu_pairwise_chrf

DATA = Path(__file__).resolve().parent.parent / "data" / "multi30k" / "train.en.gz"


def variants(sentence: str, n: int, rng: random.Random, vocab: list[str]) -> list[str]:
    """`n` noisy copies of a sentence (the first unchanged), with duplicates as samples have."""
    out = [sentence]
    while len(out) < n:
        words = sentence.split()
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(words))
            op = rng.choice("drop swap repeat replace".split())
            if op == "drop" and len(words) > 2:
                del words[i]
            elif op == "swap" and i + 1 < len(words):
                words[i], words[i + 1] = words[i + 1], words[i]
            elif op == "repeat":
                words.insert(i, words[i])
            else:
                words[i] = rng.choice(vocab)
        out.append(" ".join(words))
    return out


def medoid(u: list[list[float]]) -> int:
    means = [sum(row) - row[i] for i, row in enumerate(u)]
    return max(range(len(u)), key=means.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--candidates", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rng = random.Random(1)
    sentences = read_lines(DATA)[: args.lines]
    vocab = sorted({w for s in sentences for w in s.split()})
    try:
        import fastchrf
    except ImportError:
        fastchrf = None
    chrf = CHRF()
    figures = []
    for n in args.candidates:
        sets = [variants(s, n, rng, vocab) for s in sentences]
        row: dict = {"candidates": n, "lines": len(sets)}
        start = time.perf_counter()
        slow = [[[chrf.sentence_score(h, [r]).score for r in c] for h in c] for c in sets]
        row["sacrebleu_s_per_line"] = (time.perf_counter() - start) / len(sets)
        start = time.perf_counter()
        fast = [sacrebleu_pairwise_chrf(c) for c in sets]
        row["kdmt_s_per_line"] = (time.perf_counter() - start) / len(sets)
        row["kdmt_max_abs_diff"] = max(
            abs(a - b) for x, y in zip(slow, fast) for p, q in zip(x, y) for a, b in zip(p, q)
        )
        row["kdmt_same_selection"] = sum(medoid(x) == medoid(y) for x, y in zip(slow, fast)) / len(sets)
        if fastchrf is not None:
            start = time.perf_counter()
            rust = fastchrf.pairwise_chrf(sets, sets)
            row["fastchrf_s_per_line"] = (time.perf_counter() - start) / len(sets)
            diffs = [abs(a - b) for x, y in zip(slow, rust) for p, q in zip(x, y) for a, b in zip(p, q)]
            row["fastchrf_max_abs_diff"] = max(diffs)
            row["fastchrf_same_selection"] = sum(medoid(x) == medoid(y) for x, y in zip(slow, rust)) / len(sets)
        figures.append(row)
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
