"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher's translations of a corpus.

The source is cut into shards of a fixed number of lines. Each finished shard is written atomically
and recorded in a manifest, so a run killed at any moment resumes at the first unfinished shard, and
the assembled corpus is byte-identical to that of an uninterrupted run. With `select="seq-inter"`
the n-best candidate closest to the reference (sentence BLEU or chrF) is kept instead of the best
scoring one (Kim & Rush's seq-inter). With `filter` on, a degenerate chosen hypothesis (a repetition
loop, one cut at the search's maximum length, an outlying length ratio: kdmt.filters) is written as an
empty line, and counted by reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from kdmt.errors import KdmtError
from kdmt.files import atomic_path, read_lines, write_lines, write_text
from kdmt.filters import REASONS, FilterOptions, degenerate
from kdmt.translate import Candidate, Progress, Translator


@dataclass
class DistillStats:
    lines: int = 0
    empty: int = 0  # empty source lines: an empty output line
    too_long: int = 0  # sources over the token limit: an empty output line
    filtered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))  # reason -> empty lines


@dataclass
class DistillSettings:
    """What a run's output depends on; a resumed run must match the manifest's."""

    teachers: list[str]
    source: str
    beam: int
    lenpen: float
    max_len_a: float
    max_len_b: int
    max_src_tokens: int
    nbest: int
    select: str | None
    select_metric: str
    reference: str | None
    shard_size: int
    filter: bool = True  # degenerate hypotheses become empty lines
    max_repeat: int = 3
    max_len_ratio: float = 2.0
    inputs: dict[str, list[int]] = field(default_factory=dict)  # file -> [size, mtime_ns]


def file_identity(paths: list[str]) -> dict[str, list[int]]:
    return {p: [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in paths}


def closest(texts: list[str], reference: str, metric: str) -> int:
    """The index of the text with the highest sentence-level BLEU or chrF against the reference (first on ties)."""
    scorer = BLEU(effective_order=True) if metric == "bleu" else CHRF()
    scores = [scorer.sentence_score(text, [reference]).score for text in texts]
    return max(range(len(texts)), key=scores.__getitem__)


def filter_degenerate(
    translator: Translator,
    options: FilterOptions,
    src: list[str],
    chosen: list[Candidate | None],
    counts: dict[str, int],
) -> list[Candidate | None]:
    """`chosen` with every degenerate hypothesis replaced by None (an empty line), counted in `counts`."""
    out: list[Candidate | None] = []
    for c, src_ids in zip(chosen, translator.src_vocab.encode(src)):
        limit = translator.max_output_length(len(src_ids) + 1)  # the search saw the source with EOS
        reason = degenerate(c.text, c.length, len(src_ids), limit, options) if c else None
        if reason:
            counts[reason] += 1
        out.append(None if reason else c)
    return out


def shard_paths(work: Path, index: int) -> tuple[Path, Path]:
    return work / f"{index:06d}.txt", work / f"{index:06d}.nbest"


def distill_corpus(
    translator: Translator,
    settings: DistillSettings,
    src: list[str],
    out: Path,
    progress: Progress | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> DistillStats:
    """Translate `src` (the lines of settings.source) into `out`, one line per line, shard by shard."""
    refs = read_lines(settings.reference) if settings.reference else None
    if refs is not None and len(refs) != len(src):
        raise KdmtError(f"line counts differ: {settings.source} has {len(src)}, {settings.reference} has {len(refs)}")
    if settings.select == "seq-inter" and refs is None:
        raise KdmtError("--select seq-inter needs --ref")
    filter_options = FilterOptions(settings.max_repeat, settings.max_len_ratio) if settings.filter else None
    settings.inputs = file_identity([settings.source, *settings.teachers] + ([settings.reference] if refs else []))
    work = Path(f"{out}.shards")
    manifest_path = work / "manifest.json"
    record = json.loads(json.dumps(asdict(settings)))  # as it reads back from JSON
    manifest: dict[str, Any] = {"settings": record, "done": {}}
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if previous["settings"] != record:
            raise KdmtError(
                f"{work} holds an unfinished distill run with other settings or inputs; "
                "run it with the same ones, or delete that directory"
            )
        manifest = previous
    work.mkdir(parents=True, exist_ok=True)
    write_text(manifest_path, json.dumps(manifest, indent=1))

    n_shards = (len(src) + settings.shard_size - 1) // settings.shard_size
    keep_nbest = settings.nbest > 1
    for index in range(n_shards):
        lo, hi = index * settings.shard_size, min(len(src), (index + 1) * settings.shard_size)
        if str(index) in manifest["done"]:
            if progress:
                progress(hi - lo)
            continue
        results = translator.translate_nbest(src[lo:hi], settings.nbest, progress)
        if settings.select == "seq-inter":
            chosen = [
                r[closest([c.text for c in r], ref, settings.select_metric)] if r else None
                for r, ref in zip(results, refs[lo:hi])
            ]
        else:
            chosen = [r[0] if r else None for r in results]
        filtered = dict.fromkeys(REASONS, 0)
        if filter_options is not None:
            chosen = filter_degenerate(translator, filter_options, src[lo:hi], chosen, filtered)
        best_path, nbest_path = shard_paths(work, index)
        write_lines(best_path, [c.text if c else "" for c in chosen])
        if keep_nbest:
            write_lines(
                nbest_path, [f"{lo + i} ||| {c.text} ||| {c.score:.6f}" for i, r in enumerate(results) for c in r]
            )
        empty = sum(1 for line in src[lo:hi] if not line.strip())
        manifest["done"][str(index)] = {
            "empty": empty,
            "too_long": sum(1 for r in results if not r) - empty,
            "filtered": filtered,
        }
        write_text(manifest_path, json.dumps(manifest, indent=1))
        if after_shard:
            after_shard(index)

    done = manifest["done"].values()
    stats = DistillStats(
        len(src),
        sum(d["empty"] for d in done),
        sum(d["too_long"] for d in done),
        {reason: sum(d["filtered"][reason] for d in done) for reason in REASONS},
    )
    outputs = [(out, 0)] + ([(Path(f"{out}.nbest"), 1)] if keep_nbest else [])
    for path, kind in outputs:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for index in range(n_shards):
                with open(shard_paths(work, index)[kind], "rb") as shard:
                    shutil.copyfileobj(shard, f)
    write_text(Path(f"{out}.json"), json.dumps({"settings": record, "stats": asdict(stats)}, indent=2) + "\n")
    shutil.rmtree(work)
    return stats
