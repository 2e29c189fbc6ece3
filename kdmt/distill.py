"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher's translations of a corpus.

The source is cut into shards of a fixed number of lines, found in one pass over the file and read
shard by shard (never the whole file). Any number of processes — torchrun's, or the same command started
several times, on one machine or several sharing a file system — claim and translate the shards
(kdmt.shards); each finished shard is written atomically and recorded in a manifest, and the last process
assembles the corpus. A run killed at any moment resumes, with any number of processes, where it stopped,
and the corpus is byte-identical to that of one uninterrupted process. With `select="seq-inter"`
the n-best candidate closest to the reference (sentence BLEU or chrF) is kept instead of the best
scoring one (Kim & Rush's seq-inter). With `filter` on, a degenerate chosen hypothesis (a repetition
loop, one cut at the search's maximum length, an outlying length ratio: kdmt.filters) is written as an
empty line, and counted by reason.

The teacher is kdmt's own engines (a TextTranslator) or any translation command
(kdmt.teacher_command). The manifest records its identity (`teacher_identity`: a content hash, or the
command line), not where it lies: a resume with another teacher is refused, the same one at another path
resumes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sacrebleu.metrics import CHRF

from kdmt.cache import file_sha256, tree_sha256
from kdmt.errors import KdmtError
from kdmt.evaluate import bleu_metric
from kdmt.files import LineReader, atomic_path, line_offsets, write_lines, write_text
from kdmt.filters import REASONS, FilterOptions, degenerate
from kdmt.languages import Pair, model_inputs
from kdmt.shards import Manifest, ShardedRun, file_identity
from kdmt.translate import Candidate, Progress


@dataclass
class DistillStats:
    lines: int = 0
    empty: int = 0  # empty source lines: an empty output line
    too_long: int = 0  # sources over the token limit: an empty output line
    filtered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))  # reason -> empty lines


class Teacher(Protocol):
    """What DistillRun asks of a teacher: kdmt's engines (kdmt.translate.TextTranslator) and a translation
    command (kdmt.teacher_command.CommandTeacher) have it."""

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, progress: Progress | None = None
    ) -> list[list[Candidate]]: ...

    def length_limits(self, lines: list[str]) -> list[tuple[int, int | None]]: ...


def teacher_identity(path: Path) -> str:
    """What identifies a teacher on disk, wherever it lies: a file's (a checkpoint's) sha256, or a
    directory's (an export: kdmt.cache.tree_sha256). Read once, whatever its size."""
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    if path.is_dir():
        return f"tree-sha256:{tree_sha256(path)}"
    raise KdmtError(f"{path}: no such teacher")


@dataclass
class DistillSettings:
    """What a run's output depends on; a resumed run must match the manifest's."""

    teachers: list[str]  # their identities (teacher_identity, CommandTeacher.identity), not their paths
    source: str
    beam: int
    lenpen: float
    max_len_a: float
    max_len_b: int
    max_src_tokens: int  # 0: no limit (a teacher command)
    nbest: int
    select: str | None
    select_metric: str
    reference: str | None
    shard_size: int
    filter: bool = True  # degenerate hypotheses become empty lines
    max_repeat: int = 3
    max_len_ratio: float = 2.0
    engine: str = "kdmt"  # or "ctranslate2 QUANTIZATION", or "command" (--teacher-cmd)
    min_len: int = 1  # the search's --min-len
    pair: str | None = None  # a multilingual teacher's pair, whose tags the sources are given (model_inputs)
    tgt_lang: str | None = None  # the target language: seq-inter's sentence BLEU is tokenized for it
    inputs: dict[str, list[int]] = field(default_factory=dict)  # source, reference -> [size, mtime_ns]


def closest(texts: list[str], reference: str, metric: str, tgt_lang: str | None = None) -> int:
    """The index of the text with the highest sentence-level BLEU (tokenized for `tgt_lang`:
    kdmt.evaluate.bleu_metric) or chrF against the reference (first on ties)."""
    scorer = bleu_metric(tgt_lang, sentence=True) if metric == "bleu" else CHRF()
    scores = [scorer.sentence_score(text, [reference]).score for text in texts]
    return max(range(len(texts)), key=scores.__getitem__)


def filter_degenerate(
    teacher: Teacher,
    options: FilterOptions,
    src: list[str],
    chosen: list[Candidate | None],
    counts: dict[str, int],
) -> list[Candidate | None]:
    """`chosen` with every degenerate hypothesis replaced by None (an empty line), counted in `counts`."""
    out: list[Candidate | None] = []
    for c, (src_length, limit) in zip(chosen, teacher.length_limits(src)):
        reason = degenerate(c.text, c.length, src_length, limit, options) if c else None
        if reason:
            counts[reason] += 1
        out.append(None if reason else c)
    return out


def shard_paths(work: Path, index: int) -> tuple[Path, Path]:
    return work / f"{index:06d}.txt", work / f"{index:06d}.nbest"


class DistillRun:
    """The distillation of settings.source into `out`, shared by every process started with the same
    settings (kdmt.shards). `plan` is None, and `finished` holds the stats, when the outputs of a finished
    run with these settings exist already. `meta`, the teacher's record, says which tags its sources need
    (kdmt.languages.model_inputs, with settings.pair); without it, sources are translated as they are."""

    def __init__(self, translator: Teacher, settings: DistillSettings, out: Path, meta: dict | None = None):
        if settings.select == "seq-inter" and not settings.reference:
            raise KdmtError("--select seq-inter needs --ref")
        references = [settings.reference] if settings.reference else []
        settings.inputs = file_identity([settings.source, *references])
        self.translator, self.settings, self.out, self.meta = translator, settings, out, meta
        self.record = json.loads(json.dumps(asdict(settings)))  # as it reads back from JSON
        self.work = ShardedRun(Path(f"{out}.shards"), self.record, lambda: self.read_stats() is not None)
        manifest = self.work.open(self.make_plan, self.other_teacher)
        self.plan: dict[str, Any] | None = manifest["plan"] if manifest else None
        self.finished = None if manifest else self.read_stats()

    @property
    def lines(self) -> int:
        return self.plan["lines"] if self.plan else self.finished.lines

    def other_teacher(self, found: dict[str, Any]) -> str | None:
        """The error for a manifest of a run started with another teacher than this one's (None: the same)."""
        if found.get("teachers") == self.record["teachers"]:
            return None
        before, now = ", ".join(found.get("teachers") or ["?"]), ", ".join(self.record["teachers"])
        return (
            f"{self.out} was started with another teacher: {before} (this run: {now}); "
            f"remove {self.work.path} or choose another --out"
        )

    def make_plan(self) -> dict[str, Any]:
        """The number of lines and the byte offset of each shard, in the source and the reference."""
        s = self.settings
        lines, offsets = line_offsets(s.source, s.shard_size)
        plan = {"shards": len(offsets), "lines": lines, "offsets": offsets, "ref_offsets": None}
        if s.reference:
            ref_lines, plan["ref_offsets"] = line_offsets(s.reference, s.shard_size)
            if ref_lines != lines:
                raise KdmtError(f"line counts differ: {s.source} has {lines}, {s.reference} has {ref_lines}")
        return plan

    def read_stats(self) -> DistillStats | None:
        """The stats in OUT.json when the outputs of a finished run with these settings are there."""
        nbest = [Path(f"{self.out}.nbest")] if self.settings.nbest > 1 else []
        outputs = [self.out, Path(f"{self.out}.json"), *nbest]
        if not all(p.is_file() for p in outputs):
            return None
        try:
            record = json.loads(outputs[1].read_text())
            return DistillStats(**record["stats"]) if record["settings"] == self.record else None
        except (ValueError, KeyError, TypeError):
            return None

    def run(
        self, progress: Progress | None = None, after_shard: Callable[[int], None] | None = None
    ) -> DistillStats | None:
        """Translate the shards no other process holds; the stats when the outputs are complete, None when
        other processes are still translating (the last one to finish assembles the outputs)."""
        if self.plan is None:
            return self.finished
        s = self.settings
        with ExitStack() as stack:
            src = stack.enter_context(closing(LineReader(s.source)))
            ref = stack.enter_context(closing(LineReader(s.reference))) if s.reference else None

            def do(index: int) -> dict[str, Any]:
                return self.translate_shard(index, src, ref, progress)

            def done(index: int, mine: bool) -> None:
                if mine and after_shard:
                    after_shard(index)
                elif not mine and progress:
                    progress(len(self.shard_range(index)))

            self.work.work(do, done)
        if not self.work.finish(self.assemble):
            return None
        return self.read_stats()

    def shard_range(self, index: int) -> range:
        size = self.settings.shard_size
        return range(index * size, min(self.plan["lines"], (index + 1) * size))

    def translate_shard(
        self, index: int, src_reader: LineReader, ref_reader: LineReader | None, progress: Progress | None
    ) -> dict[str, Any]:
        """Translate shard `index`, write its files, and return its counts for the manifest."""
        s, lines = self.settings, self.shard_range(index)
        src = src_reader.read(self.plan["offsets"][index], len(lines), lines.start)
        if self.meta is not None:
            src = model_inputs(src, Pair.parse(s.pair) if s.pair else None, self.meta, lines.start + 1)
        try:
            results = self.translator.translate_nbest(src, s.nbest, progress)
        except KdmtError as e:  # nothing of the shard is written or recorded
            where = f"shard {index + 1} of {self.plan['shards']} (lines {lines.start + 1}-{lines.stop})"
            raise KdmtError(f"{where}: {e}") from None
        if s.select == "seq-inter":
            refs = ref_reader.read(self.plan["ref_offsets"][index], len(lines), lines.start)
            chosen = [
                r[closest([c.text for c in r], ref, s.select_metric, s.tgt_lang)] if r else None
                for r, ref in zip(results, refs)
            ]
        else:
            chosen = [r[0] if r else None for r in results]
        filtered = dict.fromkeys(REASONS, 0)
        if s.filter:
            options = FilterOptions(s.max_repeat, s.max_len_ratio)
            chosen = filter_degenerate(self.translator, options, src, chosen, filtered)
        best_path, nbest_path = shard_paths(self.work.path, index)
        write_lines(best_path, [c.text if c else "" for c in chosen])
        if s.nbest > 1:
            write_lines(
                nbest_path,
                [f"{lines.start + i} ||| {c.text} ||| {c.score:.6f}" for i, r in enumerate(results) for c in r],
            )
        empty = sum(1 for line in src if not line.strip())
        return {"empty": empty, "too_long": sum(1 for r in results if not r) - empty, "filtered": filtered}

    def assemble(self, manifest: Manifest) -> None:
        """Concatenate the shards into OUT (and OUT.nbest), and write OUT.json with the settings and counts."""
        done = manifest["done"].values()
        stats = DistillStats(
            manifest["plan"]["lines"],
            sum(d["empty"] for d in done),
            sum(d["too_long"] for d in done),
            {reason: sum(d["filtered"][reason] for d in done) for reason in REASONS},
        )
        outputs = [(self.out, 0)] + ([(Path(f"{self.out}.nbest"), 1)] if self.settings.nbest > 1 else [])
        for path, kind in outputs:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                for index in range(manifest["plan"]["shards"]):
                    with open(shard_paths(self.work.path, index)[kind], "rb") as shard:
                        shutil.copyfileobj(shard, f)
        stats_record = {"settings": self.record, "stats": asdict(stats)}
        write_text(Path(f"{self.out}.json"), json.dumps(stats_record, indent=2) + "\n")


def distill_corpus(
    translator: Teacher,
    settings: DistillSettings,
    out: Path,
    progress: Progress | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> DistillStats | None:
    """Translate settings.source into `out`, one line per line, shard by shard (DistillRun)."""
    return DistillRun(translator, settings, out).run(progress, after_shard)
