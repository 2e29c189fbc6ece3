"""kdmt distill: a corpus translated by the teachers, the sequence-level distilled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err, run_sharded
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
from kdmt.distill import DistillOptions, EngineChoice, open_distill
from kdmt.pretrained import PretrainedOptions
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
    given = [name for name in ctx.params if (source := ctx.get_parameter_source(name)) and source.name == "COMMANDLINE"]
    engines = EngineChoice(
        device, bf16, threads, engine, PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
    )
    run = open_distill(src, out, teacher, teacher_cmd, options, search, engines, pair, given)
    stats = run_sharded("distill", run.lines, options.shard_size, run.run, out)
    if stats is None:
        return
    filtering = options.filter_degenerate or options.filter_backward is not None
    err.print(stats.summary(out, filtering), soft_wrap=True)  # one line, however long the path
