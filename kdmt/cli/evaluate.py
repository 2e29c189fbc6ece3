"""kdmt eval: models scored side by side on a test set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err, print_table
from kdmt.cli.params import (
    Bf16,
    BootstrapSamples,
    Device,
    EngineOption,
    PairOption,
    Quantization,
    SourcePrefix,
    SrcLang,
    Threads,
    with_options,
)
from kdmt.engines import open_translator
from kdmt.evaluate import describe, evaluate_models
from kdmt.files import write_text
from kdmt.metrics import BOOTSTRAP_SAMPLES, bleu_tokenizer
from kdmt.pretrained import PretrainedOptions
from kdmt.report import eval_table, significance_note
from kdmt.translate import SearchOptions


@command("eval")
@with_options(search=SearchOptions)
def eval_cmd(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoints, CTranslate2 directories or Hugging Face models (directories, hub ids) to evaluate, "
            "side by side."
        ),
    ],
    src: Annotated[Path, typer.Option(help="Test source file (.gz allowed).")],
    ref: Annotated[Path, typer.Option(help="Test reference file, line-aligned with --src.")],
    *,
    search: SearchOptions,
    device: Device = None,
    bf16: Bf16 = True,
    threads: Threads = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reports as JSON on stdout.")] = False,
    report: Annotated[Path | None, typer.Option(help="Also write the reports as JSON to this file.")] = None,
    hyps_dir: Annotated[Path | None, typer.Option(help="Write each model's translations here.")] = None,
    pair: PairOption = None,
    tgt_lang: Annotated[
        str | None,
        typer.Option(
            help="The test set's target language, for BLEU's tokenizer (zh, ja, th… by character or word; "
            "default: --pair's target, else the one the models were trained into); a many-to-many Hugging Face "
            "model's target language code (NLLB eng_Latn, M2M100 en, MBart en_XX)."
        ),
    ] = None,
    bootstrap_samples: BootstrapSamples = BOOTSTRAP_SAMPLES,
    engine: EngineOption = None,
    quantization: Quantization = "float32",
    src_lang: SrcLang = None,
    source_prefix: SourcePrefix = "",
) -> None:
    """Score checkpoints on a test set: sacreBLEU, chrF, chrF++, speed and size, side by side, and each
    against the first by sacrebleu's paired bootstrap test.

    Example: kdmt eval work/teacher/checkpoint_best.safetensors --src test.de.gz --ref test.en.gz

    With --pair, a multilingual model translates the test set with that pair's tags (a model of one pair must
    be of that pair), and the reports name the pair: kdmt report shows a row per model and pair.
    """
    languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)

    def open_model(path: Path):
        return open_translator([path], device, search, bf16, threads, engine, languages)

    done = evaluate_models(checkpoints, src, ref, open_model, pair, tgt_lang, bootstrap_samples, hyps_dir, err)
    reports, names = done.reports, done.names
    title = f"kdmt eval: {src.name}{f' ({pair})' if pair else ''} (beam {search.beam})"
    print_table(*eval_table(reports, names, done.compared), title)
    for r in reports:
        err.print(f"{r['checkpoint']}: {describe(r['made_with'])}", highlight=False)
    err.print(
        f"BLEU {reports[0]['bleu_signature']}\nchrF {reports[0]['chrf_signature']}\n"
        f"chrF++ {reports[0]['chrfpp_signature']}\ndevice {reports[0]['device']}",
        highlight=False,
    )
    if done.compared:
        err.print(f"ΔBLEU and ΔchrF are against {names[reports[0]['checkpoint']]}", highlight=False)
        err.print(significance_note(reports[1]["vs_first"]), highlight=False)
    if note := bleu_tokenizer(done.tgt_lang)[1]:
        err.print(note, highlight=False)
    if report:
        write_text(report, json.dumps(reports, indent=2) + "\n")
    if json_out:
        print(json.dumps(reports, indent=2))
