"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher's translations of a corpus.

The source is cut into shards of a fixed number of lines, found in one pass over the file and read
shard by shard (never the whole file). Any number of processes — torchrun's, or the same command started
several times, on one machine or several sharing a file system — claim and translate the shards
(kdmt.shards); each finished shard is written atomically and recorded in a manifest, and the last process
assembles the corpus. A run killed at any moment resumes, with any number of processes, where it stopped,
and the corpus is byte-identical to that of one uninterrupted process. Each source has `nbest`
candidates (the beam's n-best) of which `select` (kdmt.selection: best, seq-inter, mbr, score) keeps
the `keep` most preferred distinct ones: the first in OUT, the others in OUT.keep (`index ||| text`).
With `filter` on, a degenerate kept hypothesis (a repetition loop, one cut at the search's maximum
length, an outlying length ratio: kdmt.filters) is dropped, and counted by reason; a source whose kept
candidates are all dropped gets an empty line. With a `backward` model (kdmt.scoring) every kept pair
is scored in the other direction, and the worst `backward_drop` percent of them (and those above
`backward_max_ce`) become empty lines, with their OUT.keep targets, counted as "backward".

The teacher is kdmt's own engines (a TextTranslator) or any translation command
(kdmt.teacher_command). The manifest records its identity (`teacher_identity`: a content hash, or the
command line), not where it lies: a resume with another teacher is refused, the same one at another path
resumes.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Collection
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kdmt.cache import content_identity, file_identity, file_sha256
from kdmt.config import option
from kdmt.distributed import local_device
from kdmt.engines import engine_name, open_translator
from kdmt.errors import KdmtError
from kdmt.files import LineReader, atomic_path, line_offsets, read_lines, write_lines, write_text
from kdmt.filters import REASONS, FilterOptions, degenerate
from kdmt.languages import Pair, model_inputs, target_language
from kdmt.options import COUNT, NONNEGATIVE, POSITIVE, SEED, Range, flag
from kdmt.pretrained import PretrainedOptions, is_hub_id, resolve
from kdmt.scoring import PairScorer, open_scorer
from kdmt.search import Sampling
from kdmt.selection import best_text, check_selection, choose
from kdmt.shards import Manifest, ShardedRun, work_path
from kdmt.teacher_command import CommandTeacher
from kdmt.translate import Candidate, Progress, SearchOptions


@dataclass
class DistillStats:
    lines: int = 0
    empty: int = 0  # empty source lines: an empty output line
    too_long: int = 0  # sources over the token limit: an empty output line
    filtered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))  # reason -> dropped
    extra_targets: int = 0  # the lines of OUT.keep (--keep)

    def summary(self, out: Path, filtering: bool) -> str:
        """What a finished run wrote, in one line: its lines, the empty ones, and (`filtering`) the filtered."""
        n = sum(self.filtered.values())
        reasons = ", ".join(f"{k:,} {reason}" for reason, k in self.filtered.items())
        filtered = (
            f", {n:,} filtered translations ({n / max(self.lines, 1):.1%} of the lines: {reasons})"
            if filtering
            else " (--no-filter)"
        )
        return (
            f"distilled {self.lines:,} lines into {out}; empty lines: {self.empty:,} empty and {self.too_long:,} "
            f"over-long sources{filtered}"
        )


class Teacher(Protocol):
    """What DistillRun asks of a teacher: kdmt's engines (kdmt.translate.TextTranslator) and a translation
    command (kdmt.teacher_command.CommandTeacher) have it."""

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, progress: Progress | None = None, first_line: int = 0
    ) -> list[list[Candidate]]: ...

    def length_limits(self, lines: list[str]) -> list[tuple[int, int | None]]: ...


def teacher_identity(path: Path) -> str:
    """What identifies a teacher on disk, wherever it lies: its content (kdmt.cache.content_identity: a
    checkpoint's sha256, an export directory's tree-sha256)."""
    if not path.exists():
        raise KdmtError(f"{path}: no such teacher")
    return content_identity(path)


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
    nbest: int  # candidates a source (--candidates); more than one: OUT.nbest
    select: str | None  # kdmt.selection.SELECTIONS; None: best
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
    keep: int = 1  # targets a source: the first in OUT, the others in OUT.keep
    sampling: str | None = None  # the candidates sampled (search.Sampling.parse): topk:K or topp:P
    sampling_temperature: float = 1.0
    seed: int = 0  # with sampling: with each line's number, the seed of its samples
    backward: str | None = None  # a model of the other direction that scores the kept pairs (kdmt.scoring)
    backward_drop: float = 0.0  # percent of the scored pairs dropped, the worst by the backward model
    backward_max_ce: float | None = None  # pairs above this cross-entropy a token are dropped
    inputs: dict[str, str] = field(default_factory=dict)  # source, reference, backward -> content (file_identity)


@dataclass(frozen=True)
class DistillOptions:
    """The options of `kdmt distill` beyond the search's (kdmt.translate.SearchOptions) and the teacher's."""

    candidates: int = option(
        1,
        "Candidates a source: the beam's N best, or N samples (--sampling); more than one: OUT.nbest.",
        COUNT,
        flags=("--candidates", "--nbest"),
    )
    select: str | None = option(
        None,
        "Which candidate to keep: best, seq-inter (closest to --ref), mbr (the medoid), score "
        "(the teacher's highest score).",
    )
    select_metric: str | None = option(None, "Sentence metric of seq-inter (default bleu) and mbr (default chrf).")
    keep: int = option(1, "Targets a source: the K most preferred distinct candidates; the others in OUT.keep.", COUNT)
    sampling: str | None = option(None, "Sample the candidates instead of beam search: topk:K or topp:P.")
    sampling_temperature: float = option(1.0, "With --sampling: the temperature.", POSITIVE)
    seed: int = option(0, "With --sampling: the seed (with each line's number).", SEED)
    ref: Path | None = option(None, "Reference target corpus, for --select seq-inter.")
    filter_backward: Path | None = option(
        None, "A model of the other direction (checkpoint or CTranslate2 directory) scores each pair."
    )
    filter_drop: float = option(
        0.0,
        "With --filter-backward: drop the worst P percent of the pairs by its score.",
        Range(float, 0, 100, hi_open=True),
    )
    filter_max_ce: float | None = option(
        None, "With --filter-backward: drop the pairs whose cross-entropy a token is above this.", NONNEGATIVE
    )
    shard_size: int = option(
        10000, "Lines per shard: the unit of resuming and of sharing the work among processes.", COUNT
    )
    filter_degenerate: bool = option(
        True,
        "Write degenerate translations (repetition loops, cut at the maximum length, outlying length ratio) as "
        "empty lines.",
        flags=("--filter/--no-filter",),
    )
    max_repeat: int = option(3, "Filter: a word n-gram (n ≤ 4) this many times in a row is a loop.", Range(int, 2))
    max_len_ratio: float = option(
        2.0, "Filter: a target/source token ratio above this, or below its inverse.", Range(float, 1, lo_open=True)
    )

    def checked(self, beam: int) -> DistillOptions:
        """The options with what they leave to kdmt settled (the selection's metric, the number of
        candidates); KdmtError for a combination that does not go together."""
        metric = self.select_metric or ("chrf" if self.select == "mbr" else "bleu")
        check_selection(self.select or "best", metric)
        candidates = self.candidates
        if self.sampling is None and candidates > beam:
            raise KdmtError(f"--candidates must be at most --beam ({beam}) without --sampling, not {candidates}")
        if self.select not in (None, "best") and candidates == 1:  # a choice among the beam, or 8 samples
            candidates = beam if self.sampling is None else 8
        if self.keep > candidates:
            raise KdmtError(f"--keep must be at most --candidates ({candidates}), not {self.keep}")
        if bool(self.filter_drop or self.filter_max_ce is not None) != (self.filter_backward is not None):
            raise KdmtError("--filter-backward goes with --filter-drop P or --filter-max-ce X")
        return replace(self, select_metric=metric, candidates=candidates)

    def settings(
        self,
        search: SearchOptions,
        teachers: list[str],
        source: Path,
        max_src_tokens: int,
        engine: str,
        pair: Pair | None = None,
        tgt_lang: str | None = None,
    ) -> DistillSettings:
        """What a run with these options depends on (its manifest), for `teachers` (their identities) and
        the limit on source tokens, the engine, pair and target language they were opened with."""
        o = self.checked(search.beam)
        sampled = o.sampling is not None
        return DistillSettings(
            teachers=teachers,
            source=str(source),
            beam=search.beam,
            lenpen=search.lenpen,
            max_len_a=search.max_len_a,
            max_len_b=search.max_len_b,
            min_len=search.min_len,
            max_src_tokens=max_src_tokens,
            nbest=o.candidates,
            select=o.select,
            select_metric=o.select_metric,
            keep=o.keep,
            sampling=o.sampling,
            sampling_temperature=o.sampling_temperature if sampled else 1.0,
            seed=o.seed if sampled else 0,
            backward=str(o.filter_backward) if o.filter_backward else None,
            backward_drop=o.filter_drop,
            backward_max_ce=o.filter_max_ce,
            reference=str(o.ref) if o.ref else None,
            shard_size=o.shard_size,
            filter=o.filter_degenerate,
            max_repeat=o.max_repeat,
            max_len_ratio=o.max_len_ratio,
            engine=engine,
            pair=pair.name if pair else None,
            tgt_lang=tgt_lang,
        )


def filter_degenerate(
    teacher: Teacher,
    options: FilterOptions,
    src: list[str],
    chosen: list[list[Candidate]],
    counts: dict[str, int],
) -> list[list[Candidate]]:
    """Each source's `chosen` candidates without the degenerate ones, counted by reason in `counts`."""
    out: list[list[Candidate]] = []
    for kept, (src_length, limit) in zip(chosen, teacher.length_limits(src)):
        survivors = []
        for c in kept:
            if reason := degenerate(c.text, c.length, src_length, limit, options):
                counts[reason] += 1
            else:
                survivors.append(c)
        out.append(survivors)
    return out


KINDS = ("txt", "nbest", "keep", "scores")  # a shard's files: OUT's lines, OUT.nbest's, OUT.keep's, scores


def shard_paths(work: Path, index: int) -> tuple[Path, ...]:
    return tuple(work / f"{index:06d}.{kind}" for kind in KINDS)


class DistillRun:
    """The distillation of settings.source into `out`, shared by every process started with the same
    settings (kdmt.shards). `plan` is None, and `finished` holds the stats, when the outputs of a finished
    run with these settings exist already. `meta`, the teacher's record, says which tags its sources need
    (kdmt.languages.model_inputs, with settings.pair); without it, sources are translated as they are."""

    def __init__(
        self,
        translator: Teacher,
        settings: DistillSettings,
        out: Path,
        meta: dict | None = None,
        backward: PairScorer | None = None,
    ):
        if settings.select == "seq-inter" and not settings.reference:
            raise KdmtError("--select seq-inter needs --ref")
        if (backward is None) != (settings.backward is None):
            raise KdmtError("the backward filter needs its model, and the model its setting")
        others = [p for p in (settings.reference, settings.backward) if p]
        settings.inputs = file_identity([settings.source, *others])
        self.translator, self.settings, self.out, self.meta = translator, settings, out, meta
        self.backward = backward
        self.record = json.loads(json.dumps(asdict(settings)))  # as it reads back from JSON
        self.work = ShardedRun(work_path(out), self.record, lambda: self.read_stats() is not None)
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

    def outputs(self) -> list[tuple[Path, int]]:
        """The files assembled from the shards, each with its index in shard_paths."""
        extra = [(Path(f"{self.out}.nbest"), 1)] if self.settings.nbest > 1 else []
        return [(self.out, 0), *extra, *([(Path(f"{self.out}.keep"), 2)] if self.settings.keep > 1 else [])]

    def read_stats(self) -> DistillStats | None:
        """The stats in OUT.json when the outputs of a finished run with these settings are there."""
        outputs = [Path(f"{self.out}.json")] + [path for path, _ in self.outputs()]
        if not all(p.is_file() for p in outputs):
            return None
        try:
            record = json.loads(outputs[0].read_text())
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

    def backward_drops(self, shards: range) -> np.ndarray:
        """Which lines of the corpus the backward filter drops (worst), from the shards' scores."""
        s = self.settings
        scores = [float(x) for i in shards for x in read_lines(shard_paths(self.work.path, i)[3])]
        return worst(np.array(scores, dtype=np.float64), s.backward_drop, s.backward_max_ce)

    def shard_range(self, index: int) -> range:
        size = self.settings.shard_size
        return range(index * size, min(self.plan["lines"], (index + 1) * size))

    def translate_shard(
        self, index: int, src_reader: LineReader, ref_reader: LineReader | None, progress: Progress | None
    ) -> dict[str, Any]:
        """Translate shard `index`, write its files, and return its counts for the manifest."""
        s, lines = self.settings, self.shard_range(index)
        src = raw = src_reader.read(self.plan["offsets"][index], len(lines), lines.start)
        if self.meta is not None:
            src = model_inputs(src, Pair.parse(s.pair) if s.pair else None, self.meta, lines.start + 1)
        try:
            results = self.translator.translate_nbest(src, s.nbest, progress, first_line=lines.start)
        except KdmtError as e:  # nothing of the shard is written or recorded
            where = f"shard {index + 1} of {self.plan['shards']} (lines {lines.start + 1}-{lines.stop})"
            raise KdmtError(f"{where}: {e}") from None
        refs = ref_reader.read(self.plan["ref_offsets"][index], len(lines), lines.start) if ref_reader else None
        select = s.select or "best"
        chosen = [
            choose(r, select, s.select_metric, s.keep, refs[i] if refs else None, s.tgt_lang)
            for i, r in enumerate(results)
        ]
        filtered = dict.fromkeys(REASONS, 0)
        if s.filter:
            options = FilterOptions(s.max_repeat, s.max_len_ratio)
            chosen = filter_degenerate(self.translator, options, src, chosen, filtered)
        best_path, nbest_path, keep_path, scores_path = shard_paths(self.work.path, index)
        if self.backward is not None:  # the backward model: the kept target is its source
            have = [i for i, kept in enumerate(chosen) if kept]
            ce = self.backward.score([best_text(chosen[i]) for i in have], [raw[i] for i in have])
            scores = [math.nan] * len(chosen)
            for i, x in zip(have, ce):
                scores[i] = x
            write_lines(scores_path, map(repr, scores))
        write_lines(best_path, map(best_text, chosen))
        if s.nbest > 1:
            write_lines(
                nbest_path,
                [f"{lines.start + i} ||| {c.text} ||| {c.score:.6f}" for i, r in enumerate(results) for c in r],
            )
        if s.keep > 1:
            write_lines(
                keep_path, [f"{lines.start + i} ||| {c.text}" for i, kept in enumerate(chosen) for c in kept[1:]]
            )
        empty = sum(1 for line in src if not line.strip())
        too_long = sum(1 for r in results if not r) - empty
        extra = sum(max(len(kept) - 1, 0) for kept in chosen)
        optional = ((nbest_path, s.nbest > 1), (keep_path, s.keep > 1), (scores_path, self.backward is not None))
        written = [best_path, *(path for path, made in optional if made)]
        counts = {"empty": empty, "too_long": too_long, "filtered": filtered, "extra_targets": extra}
        return counts | {"files_sha256": {path.name: file_sha256(path) for path in written}}

    def check_shard(self, index: int, record: dict[str, Any]) -> None:
        """Refuse a shard whose files are not those its record describes (by sha256; a record of an older
        kdmt has none)."""
        again = f"delete {self.work.path / 'done' / f'{index:06d}.json'}, and that shard is translated again"
        for name, digest in record.get("files_sha256", {}).items():
            path = self.work.path / name
            try:
                found = file_sha256(path)
            except OSError as e:
                raise KdmtError(f"{path}: cannot be read ({e.strerror}): {again}") from None
            if found != digest:
                raise KdmtError(f"{path}: damaged (not the sha256 of its record): {again}")

    def assemble(self, manifest: Manifest) -> None:
        """Concatenate the shards into OUT (and OUT.nbest, OUT.keep), each checked first, and write OUT.json
        with the settings and counts."""
        for index, record in manifest["done"].items():
            self.check_shard(int(index), record)
        done = manifest["done"].values()
        shards = range(manifest["plan"]["shards"])
        stats = DistillStats(
            manifest["plan"]["lines"],
            sum(d["empty"] for d in done),
            sum(d["too_long"] for d in done),
            {reason: sum(d["filtered"][reason] for d in done) for reason in REASONS},
            sum(d["extra_targets"] for d in done),
        )
        dropped = self.backward_drops(shards) if self.settings.backward else None
        if dropped is not None:
            stats.filtered["backward"] = int(dropped.sum())
        for path, kind in self.outputs():
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                for index in shards:
                    shard_path = shard_paths(self.work.path, index)[kind]
                    if dropped is None or kind == 1:
                        with open(shard_path, "rb") as shard:
                            shutil.copyfileobj(shard, f)
                        continue
                    start = self.shard_range(index).start
                    for i, line in enumerate(read_lines(shard_path)):
                        row = start + i if kind == 0 else int(line.partition(" ||| ")[0])
                        if kind == 0 or not dropped[row]:
                            f.write(("" if dropped[row] else line).encode() + b"\n")
                        else:
                            stats.extra_targets -= 1  # a target of a dropped line
        stats_record = {"settings": self.record, "stats": asdict(stats)}
        write_text(Path(f"{self.out}.json"), json.dumps(stats_record, indent=2) + "\n")


def worst(scores: np.ndarray, share: float, max_ce: float | None) -> np.ndarray:
    """Which lines the backward filter drops: of the scored ones (NaN: not scored), those above `max_ce`,
    and the `share` percent with the highest cross-entropy (rounded down; the earlier line first among equals)."""
    scored = ~np.isnan(scores)
    drop = scored & (scores > max_ce) if max_ce is not None else np.zeros(len(scores), dtype=bool)
    index = np.flatnonzero(scored)
    n = int(len(index) * share / 100)
    if n:
        order = np.lexsort((index, -scores[index]))  # the highest cross-entropy first
        drop[index[order[:n]]] = True
    return drop


# The options of kdmt's own engines, which a teacher command does not take.
ENGINE_OPTIONS = (
    "engine", "quantization", "beam", "lenpen", "max_len_a", "max_len_b", "min_len", "batch_tokens",
    "max_src_tokens", "device", "bf16", "threads", "pair", "sampling", "sampling_temperature", "seed",
    "src_lang", "tgt_lang", "source_prefix",
)  # fmt: skip


@dataclass(frozen=True)
class EngineChoice:
    """How kdmt's engines run a teacher (and the backward model): the command's device and engine options."""

    device: str | None = None
    bf16: bool = True
    threads: int = 0
    engine: str | None = None
    languages: PretrainedOptions = field(default_factory=PretrainedOptions)


def open_distill(
    src: Path,
    out: Path,
    teachers: list[Path] | None,
    teacher_cmd: str | None,
    options: DistillOptions,
    search: SearchOptions,
    engines: EngineChoice | None = None,
    pair: str | None = None,
    given: Collection[str] = (),
) -> DistillRun:
    """kdmt distill: the run that distills `src` into `out` with the teachers (checkpoints, model directories,
    hub ids: an ensemble when several) or the command `teacher_cmd`, one of them; `given`, the options given
    on the command line (a teacher command refuses those of kdmt's engines)."""
    if bool(teachers) == (teacher_cmd is not None):
        raise KdmtError(
            "give the teacher as -t CHECKPOINT (repeat for an ensemble) or --teacher-cmd 'CMD': one of them"
        )
    if teacher_cmd is not None:
        check_command_teacher(given, options)
    options = options.checked(search.beam)
    engines = engines or EngineChoice()
    device = str(local_device(engines.device))
    if teacher_cmd is not None:
        translator: Teacher = CommandTeacher(teacher_cmd)
        identities, meta, max_src, engine_used = [translator.identity], None, 0, "command"
    else:
        teachers = [resolve(t) if is_hub_id(t) else t for t in teachers]  # a hub id: its snapshot's directory
        identities = [teacher_identity(t) for t in teachers]  # each teacher read once: hashed
        sampler = (
            Sampling.parse(options.sampling, options.sampling_temperature, options.seed) if options.sampling else None
        )
        metas, translator = open_translator(
            teachers,
            device,
            replace(search, sampling=sampler),
            engines.bf16,
            engines.threads,
            engines.engine,
            engines.languages,
        )
        tagging = [(m.get("pairs"), m.get("source_tags")) for m in metas]
        if any(t != tagging[0] for t in tagging):
            raise KdmtError("the teachers of an ensemble must translate the same pairs, with the same tags")
        meta, max_src = metas[0], translator.max_src_tokens
        engine_used = engine_name(meta, engines.engine, engines.languages.quantization)
    chosen = Pair.parse(pair) if pair else None
    target = target_language(meta, chosen) if meta is not None else None
    settings = options.settings(search, identities, src, max_src, engine_used, chosen, target)
    backward = open_scorer([options.filter_backward], device, search.batch_tokens) if options.filter_backward else None
    return DistillRun(translator, settings, out, meta, backward)


def check_command_teacher(given: Collection[str], options: DistillOptions) -> None:
    """Refuse, with --teacher-cmd, the options that it does not take: those of kdmt's engines (`given` on the
    command line), and n-best lists (a command gives one translation a line, with no score)."""
    for name in ENGINE_OPTIONS:
        if name in given:
            shown = "--bf16/--fp32" if name == "bf16" else flag(name)
            raise KdmtError(f"{shown} is an option of kdmt's engines; --teacher-cmd runs the command as it is")
    if options.candidates > 1 or options.select:
        raise KdmtError("--teacher-cmd gives one translation a line, with no score: no --candidates or --select")


def distill_corpus(
    translator: Teacher,
    settings: DistillSettings,
    out: Path,
    progress: Progress | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> DistillStats | None:
    """Translate settings.source into `out`, one line per line, shard by shard (DistillRun)."""
    return DistillRun(translator, settings, out).run(progress, after_shard)
