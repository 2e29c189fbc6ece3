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
from kdmt.distill import DistillOptions, DistillRun, Teacher, teacher_identity
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
@with_options(options=DistillOptions, search=SearchOptions)
def distill_cmd(
    ctx: typer.Context,
    *,
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
    options: DistillOptions,
    engine: EngineOption = None,
    quantization: Quantization = "float32",
    src_lang: SrcLang = None,
    tgt_lang: TgtLang = None,
    source_prefix: SourcePrefix = "",
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
    if teacher_cmd is not None:
        command_options(ctx, options.candidates, options.select)
    options = options.checked(search.beam)
    if teacher_cmd is not None:
        translator: Teacher = CommandTeacher(teacher_cmd)
        identities, meta, max_src, engine_used = [translator.identity], None, 0, "command"
    else:
        teacher = [resolve(t) if is_hub_id(t) else t for t in teacher]  # a hub id: its snapshot's directory
        identities = [teacher_identity(t) for t in teacher]  # each teacher read once: hashed
        sampler = (
            Sampling.parse(options.sampling, options.sampling_temperature, options.seed) if options.sampling else None
        )
        languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
        metas, translator = open_translator(
            teacher,
            str(local_device(device)),
            dataclasses.replace(search, sampling=sampler),
            bf16,
            threads,
            engine,
            languages,
        )
        tagging = [(m.get("pairs"), m.get("source_tags")) for m in metas]
        if any(t != tagging[0] for t in tagging):
            raise KdmtError("the teachers of an ensemble must translate the same pairs, with the same tags")
        meta, max_src = metas[0], translator.max_src_tokens
        engine_used = engine_name(meta, engine, quantization)
    chosen = Pair.parse(pair) if pair else None
    target = target_language(meta, chosen) if meta is not None else None
    settings = options.settings(search, identities, src, max_src, engine_used, chosen, target)
    backward = (
        open_scorer([options.filter_backward], str(local_device(device)), search.batch_tokens)
        if options.filter_backward
        else None
    )
    run = DistillRun(translator, settings, out, meta, backward)
    shards = -(-run.lines // options.shard_size)
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
        if options.filter_degenerate or options.filter_backward
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
