"""kdmt distill: a corpus translated by the teachers, the sequence-level distilled corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err, progress_console
from kdmt.cli.params import (
    Bf16,
    Device,
    EngineOption,
    PairOption,
    Quantization,
    SourcePrefix,
    SrcLang,
    TgtLang,
    Threads,
    with_options,
)
from kdmt.distill import (
    DistillRun,
    DistillSettings,
    Teacher,
    candidate_count,
    check_backward_filter,
    selection_metric,
    teacher_identity,
)
from kdmt.distributed import local_device
from kdmt.engines import engine_name, open_translator
from kdmt.errors import KdmtError
from kdmt.languages import Pair, target_language
from kdmt.options import flag
from kdmt.pretrained import PretrainedOptions, is_hub_id, resolve
from kdmt.progress import ProgressLine
from kdmt.scoring import open_scorer
from kdmt.search import Sampling
from kdmt.teacher_command import CommandTeacher
from kdmt.translate import SearchOptions


@command("distill", config=True)
@with_options(search=SearchOptions)
def distill_cmd(
    ctx: typer.Context,
    src: Annotated[Path, typer.Option(help="Source side of the corpus to distill (.gz allowed).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The distilled target corpus, line-aligned with --src.")],
    teacher: Annotated[
        list[Path] | None,
        typer.Option(
            "--teacher",
            "-t",
            help="Teacher checkpoint (repeat for an ensemble), a CTranslate2 directory, or a Hugging Face model "
            "(directory or hub id).",
        ),
    ] = None,
    teacher_cmd: Annotated[
        str | None,
        typer.Option(
            help="Instead of -t: a shell command that reads source lines on stdin and writes one translation a "
            "line on stdout, run once per shard."
        ),
    ] = None,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates",
            "--nbest",
            help="Candidates a source: the beam's N best, or N samples (--sampling); more than one: OUT.nbest.",
        ),
    ] = 1,
    select: Annotated[
        str | None,
        typer.Option(
            help="Which candidate to keep: best, seq-inter (closest to --ref), mbr (the medoid), score "
            "(the teacher's highest score)."
        ),
    ] = None,
    select_metric: Annotated[
        str | None, typer.Option(help="Sentence metric of seq-inter (default bleu) and mbr (default chrf).")
    ] = None,
    keep: Annotated[
        int, typer.Option(help="Targets a source: the K most preferred distinct candidates; the others in OUT.keep.")
    ] = 1,
    sampling: Annotated[
        str | None, typer.Option(help="Sample the candidates instead of beam search: topk:K or topp:P.")
    ] = None,
    sampling_temperature: Annotated[float, typer.Option(help="With --sampling: the temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="With --sampling: the seed (with each line's number).")] = 0,
    ref: Annotated[Path | None, typer.Option(help="Reference target corpus, for --select seq-inter.")] = None,
    filter_backward: Annotated[
        Path | None,
        typer.Option(help="A model of the other direction (checkpoint or CTranslate2 directory) scores each pair."),
    ] = None,
    filter_drop: Annotated[
        float, typer.Option(help="With --filter-backward: drop the worst P percent of the pairs by its score.")
    ] = 0.0,
    filter_max_ce: Annotated[
        float | None,
        typer.Option(help="With --filter-backward: drop the pairs whose cross-entropy a token is above this."),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="Lines per shard: the unit of resuming and of sharing the work among processes.")
    ] = 10000,
    filter_degenerate: Annotated[
        bool,
        typer.Option(
            "--filter/--no-filter",
            help="Write degenerate translations (repetition loops, cut at the maximum length, "
            "outlying length ratio) as empty lines.",
        ),
    ] = True,
    max_repeat: Annotated[
        int, typer.Option(help="Filter: a word n-gram (n ≤ 4) this many times in a row is a loop.")
    ] = 3,
    max_len_ratio: Annotated[
        float, typer.Option(help="Filter: a target/source token ratio above this, or below its inverse.")
    ] = 2.0,
    engine: EngineOption = None,
    quantization: Quantization = "float32",
    src_lang: SrcLang = None,
    tgt_lang: TgtLang = None,
    source_prefix: SourcePrefix = "",
    *,
    search: SearchOptions,
    device: Device = None,
    bf16: Bf16 = True,
    threads: Threads = 0,
    pair: PairOption = None,
) -> None:
    """Translate a corpus with the teacher(s): the sequence-level distilled corpus (Kim & Rush 2016).

    Degenerate translations are written as empty lines (--no-filter keeps them); OUT.json counts them by reason.
    Processes started with the same arguments share the shards: torchrun --nproc-per-node N -m kdmt distill ...,
    or the command started several times, on machines sharing the file system. A killed run resumes where it
    stopped when started again with the same arguments, with any number of processes. Until the run finishes its
    shards are kept in .kdmt-work/ in OUT's folder (hidden, removed when the run is complete).

    With --engine ctranslate2 the teacher decodes through CTranslate2 (converted once, kept in ~/.cache/kdmt).
    A Hugging Face teacher (MarianMT, M2M100/NLLB, MBart-50, T5/MT5): -t DIR, through CTranslate2 (converted
    once) or --engine transformers; many-to-many models need --src-lang and --tgt-lang.

    With --teacher-cmd 'CMD' any translation program is the teacher: it reads the shard's non-empty source
    lines on stdin and writes one translation a line on stdout.

    Example: kdmt distill -t work/teacher/checkpoint_best.safetensors --src work/data/train.src
    -o work/distilled/train.tgt
    """
    if bool(teacher) == (teacher_cmd is not None):
        raise KdmtError(
            "give the teacher as -t CHECKPOINT (repeat for an ensemble) or --teacher-cmd 'CMD': one of them"
        )
    select_metric = selection_metric(select, select_metric)
    if teacher_cmd is not None:
        command_options(ctx, candidates, select)
    candidates = candidate_count(candidates, search.beam, sampling, select, keep)
    check_backward_filter(filter_backward, filter_drop, filter_max_ce)
    if teacher_cmd is not None:
        translator: Teacher = CommandTeacher(teacher_cmd)
        identities, meta, max_src, engine_used = [translator.identity], None, 0, "command"
    else:
        teacher = [resolve(t) if is_hub_id(t) else t for t in teacher]  # a hub id: its snapshot's directory
        identities = [teacher_identity(t) for t in teacher]  # each teacher read once: hashed
        sampler = Sampling.parse(sampling, sampling_temperature, seed) if sampling else None
        options = dataclasses.replace(search, sampling=sampler)
        languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
        metas, translator = open_translator(
            teacher, str(local_device(device)), options, bf16, threads, engine, languages
        )
        tagging = [(m.get("pairs"), m.get("source_tags")) for m in metas]
        if any(t != tagging[0] for t in tagging):
            raise KdmtError("the teachers of an ensemble must translate the same pairs, with the same tags")
        meta, max_src = metas[0], translator.max_src_tokens
        engine_used = engine_name(meta, engine, quantization)
    settings = DistillSettings(
        teachers=identities,
        source=str(src),
        beam=search.beam,
        lenpen=search.lenpen,
        max_len_a=search.max_len_a,
        max_len_b=search.max_len_b,
        min_len=search.min_len,
        max_src_tokens=max_src,
        nbest=candidates,
        select=select,
        select_metric=select_metric,
        keep=keep,
        sampling=sampling,
        sampling_temperature=sampling_temperature if sampling else 1.0,
        seed=seed if sampling else 0,
        backward=str(filter_backward) if filter_backward else None,
        backward_drop=filter_drop,
        backward_max_ce=filter_max_ce,
        reference=str(ref) if ref else None,
        shard_size=shard_size,
        filter=filter_degenerate,
        max_repeat=max_repeat,
        max_len_ratio=max_len_ratio,
        engine=engine_used,
        pair=Pair.parse(pair).name if pair else None,
        tgt_lang=target_language(meta, Pair.parse(pair) if pair else None) if meta is not None else None,
    )
    backward = (
        open_scorer([filter_backward], str(local_device(device)), search.batch_tokens) if filter_backward else None
    )
    run = DistillRun(translator, settings, out, meta, backward)
    shards = -(-run.lines // shard_size)
    with ProgressLine(progress_console(), "distill", run.lines, "sent", transient=True) as progress:

        def shard_done(index: int) -> None:
            progress.update(progress.completed, f"shard {index + 1} of {shards} written")

        stats = run.run(progress.advance, shard_done)
    if stats is None:
        err.print(f"no shard left for this process; the last process to finish writes {out}", soft_wrap=True)
        return
    n_filtered = sum(stats.filtered.values())
    reasons = ", ".join(f"{n:,} {reason}" for reason, n in stats.filtered.items())
    filtered = (
        f", {n_filtered:,} filtered translations ({n_filtered / max(stats.lines, 1):.1%} of the lines: {reasons})"
        if filter_degenerate or filter_backward
        else " (--no-filter)"
    )
    err.print(
        f"distilled {stats.lines:,} lines into {out}; empty lines: {stats.empty:,} empty and {stats.too_long:,} "
        f"over-long sources{filtered}",
        soft_wrap=True,  # one line, however long the path
    )


# The options of kdmt's own engines, which a teacher command does not take.
ENGINE_OPTIONS = (
    "engine", "quantization", "beam", "lenpen", "max_len_a", "max_len_b", "min_len", "batch_tokens",
    "max_src_tokens", "device", "bf16", "threads", "pair", "sampling", "sampling_temperature", "seed",
    "src_lang", "tgt_lang", "source_prefix",
)  # fmt: skip


def command_options(ctx: typer.Context, nbest: int, select: str | None) -> None:
    """Refuse, with --teacher-cmd, the options that it does not take: those of kdmt's engines (given on the
    command line), and n-best lists (a command gives one translation a line, with no score)."""
    for name in ENGINE_OPTIONS:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            shown = "--bf16/--fp32" if name == "bf16" else flag(name)
            raise KdmtError(f"{shown} is an option of kdmt's engines; --teacher-cmd runs the command as it is")
    if nbest > 1 or select:
        raise KdmtError("--teacher-cmd gives one translation a line, with no score: no --candidates or --select")
