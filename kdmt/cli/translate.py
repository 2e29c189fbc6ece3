"""kdmt translate: source lines in, translations out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err
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
from kdmt.engines import open_translator
from kdmt.files import decode_stream, read_lines, write_lines
from kdmt.languages import Pair, model_inputs
from kdmt.pretrained import PretrainedOptions
from kdmt.progress import ProgressLine
from kdmt.selection import best_text
from kdmt.translate import SearchOptions


def _report_skipped(lines: list[str], results: list, limit: int) -> None:
    long = sum(1 for line, r in zip(lines, results) if line.strip() and not r)
    if long:
        err.print(f"{long} lines longer than {limit} tokens were not translated (empty output lines)")


@command("translate")
@with_options(search=SearchOptions)
def translate_cmd(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint (repeat for an ensemble), a CTranslate2 directory, or a Hugging Face model (directory "
            "or hub id).",
        ),
    ],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Source file (default: stdin).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    *,
    search: SearchOptions,
    device: Device = None,
    bf16: Bf16 = True,
    threads: Threads = 0,
    pair: PairOption = None,
    engine: EngineOption = None,
    quantization: Quantization = "float32",
    src_lang: SrcLang = None,
    tgt_lang: TgtLang = None,
    source_prefix: SourcePrefix = "",
) -> None:
    """Translate source sentences, one per line, from stdin (or --input) to stdout (or --output).

    Example: kdmt translate -m work/teacher/checkpoint_best.safetensors < test.de > test.hyp.en

    Multilingual: kdmt translate -m work/student/checkpoint_best.safetensors --pair fr-en < test.fr > test.hyp.en

    Pretrained: kdmt translate -m nllb-200-distilled-600M --src-lang deu_Latn --tgt-lang eng_Latn < test.de
    """
    languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
    metas, translator = open_translator(model, device, search, bf16, threads, engine, languages)
    lines = read_lines(input) if input else list(decode_stream(sys.stdin.buffer, "stdin"))
    lines = model_inputs(lines, Pair.parse(pair) if pair else None, metas[0])
    with ProgressLine(err, "translate", len(lines), "sent", transient=True) as progress:
        results = translator.translate_nbest(lines, 1, progress.advance)
    _report_skipped(lines, results, translator.max_src_tokens)
    hyps = [best_text(r) for r in results]
    if output:
        write_lines(output, hyps)
    else:
        sys.stdout.write("".join(h + "\n" for h in hyps))
