"""The `kdmt` command line: one thin function per command over the kdmt library."""

from __future__ import annotations

import functools
import json
import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Column, Table

from kdmt import distributed
from kdmt.cache import file_identity
from kdmt.checkpoint import average_checkpoints, convert_checkpoint
from kdmt.data import PreparedData, read_parallel, stream_parallel
from kdmt.distill import DistillRun, DistillSettings, Teacher, teacher_identity
from kdmt.distributed import launch_rank, local_device
from kdmt.engines import engine_name, open_translator
from kdmt.errors import KdmtError
from kdmt.evaluate import BOOTSTRAP_SAMPLES, bleu_tokenizer, describe, evaluate, paired_bootstrap, size_on_disk
from kdmt.export import export_checkpoint
from kdmt.files import decode_stream, read_lines, write_lines, write_text
from kdmt.languages import Pair, PairRows, model_inputs, parse_pairs, per_pair, target_language
from kdmt.model import ModelConfig, Transformer, make_config
from kdmt.options import check_ranges, flag
from kdmt.prepare import SPM_SAMPLE, CleanOptions, PairCorpus, VocabOptions, prepare, prepare_multilingual
from kdmt.pretrained import PretrainedOptions, is_hub_id, iso_language, resolve
from kdmt.progress import ProgressLine
from kdmt.report import (
    build_rows,
    compare_with_baseline,
    compare_with_teacher,
    difference,
    load_reports,
    markdown,
    plot,
    public,
    short_names,
    significance_note,
    table,
    tested_on,
    untested,
)
from kdmt.run_dir import check_out_dir
from kdmt.scoring import open_scorer
from kdmt.search import Sampling
from kdmt.selection import check_selection
from kdmt.soft_targets import SoftTargetSettings, compute_soft_targets
from kdmt.sources import dataset_pairs
from kdmt.student import StudentOptions, build_student, load_teachers, student_corpus
from kdmt.teacher_command import CommandTeacher
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.translate import SearchOptions

app = typer.Typer(
    help="Knowledge distillation for neural machine translation: prepare → train-teacher → distill → "
    "train-student → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
if not err.is_terminal:
    err.width = 200  # a log file or a pipe: lines and tables are not folded at 80 columns


def command(name: str):
    """Register a command whose numeric options are checked against kdmt.options.RANGES before it starts,
    and whose KdmtError becomes one line on stderr and exit code 2."""

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                check_ranges(kwargs)
                return fn(*args, **kwargs)
            except KdmtError as e:
                print(f"kdmt {name}: error: {e}", file=sys.stderr)
                raise typer.Exit(2) from None
            except OSError as e:  # a full disk, a read-only or missing directory, ...
                print(f"kdmt {name}: error: {describe_os_error(e)}", file=sys.stderr)
                raise typer.Exit(1) from None
            except (MemoryError, torch.OutOfMemoryError):
                print(
                    f"kdmt {name}: error: out of memory; use smaller batches (--max-tokens/--batch-tokens)",
                    file=sys.stderr,
                )
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                print(f"kdmt {name}: interrupted", file=sys.stderr)
                raise typer.Exit(130) from None

        return app.command(name)(wrapper)

    return register


def describe_os_error(e: OSError) -> str:
    """'PATH: reason' for a failed read or write."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def interrupt(signum, frame) -> None:
    """SIGTERM (`kill`, a cluster job's end) stops a command as Ctrl-C does: its temporary files are removed,
    exit code 130 (training saves its state first, see train.stop_requests)."""
    raise KeyboardInterrupt


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '30m', '2h', '1.5h' -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise KdmtError(f"cannot read the duration {text!r} (examples: 90s, 30m, 2h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


Beam = Annotated[int, typer.Option(help="Beam size (1: greedy search).")]
Lenpen = Annotated[float, typer.Option(help="Length penalty α: scores are divided by length**α.")]
MaxLenA = Annotated[float, typer.Option(help="Maximum output length: a·|source| + b (this is a).")]
MaxLenB = Annotated[int, typer.Option(help="Maximum output length: a·|source| + b (this is b).")]
MinLen = Annotated[
    int, typer.Option(help="Target tokens before a translation may end (1: never empty; the maximum length wins).")
]
BatchTokens = Annotated[int, typer.Option(help="Source tokens per batch.")]
MaxSrcTokens = Annotated[
    int, typer.Option(help="Sources longer than this many tokens are not translated (empty line).")
]
Bf16 = Annotated[bool, typer.Option("--bf16/--fp32", help="Decode in bf16 on CUDA.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: CUDA if present).")]
Threads = Annotated[int, typer.Option(help="CPU threads of either engine (0: torch's default, one per core).")]
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="kdmt (kdmt's search), ctranslate2 (a checkpoint or Hugging Face model converted once, cached) or "
        "transformers (a Hugging Face model's generate()); default: kdmt for checkpoints, ctranslate2 for "
        "Hugging Face models it converts, else transformers.",
    ),
]
Quantization = Annotated[str, typer.Option(help="With --engine ctranslate2: the converted model's weights.")]
SrcLang = Annotated[
    str | None,
    typer.Option(help="A many-to-many model's source language code (NLLB deu_Latn, M2M100 de, MBart de_DE)."),
]
TgtLang = Annotated[
    str | None,
    typer.Option(help="A many-to-many Hugging Face model's target language code (its token is forced first)."),
]
SourcePrefix = Annotated[
    str, typer.Option(help="Prepended to every source line (T5: 'translate German to English: ', MADLAD: '<2en> ').")
]
PairOption = Annotated[
    str | None,
    typer.Option("--pair", help="The language pair SRC-TGT to translate (e.g. fr-en): a multilingual model's tags."),
]
BootstrapSamples = Annotated[
    int,
    typer.Option(help="Resamples of sacrebleu's paired bootstrap test of each difference (0: no test)."),
]


# --- prepare -----------------------------------------------------------------------------------
def _prefix_file(prefix: str, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise KdmtError(f"no file {prefix}.{lang} (or .gz)")


def _per_pair(values: list[str] | None, pairs: list[Pair], option: str) -> list[str]:
    """A prefix option given once for all pairs, or once per pair in the order of --pair."""
    if values is None:
        raise KdmtError(f"{option} is required with --train")
    if len(values) not in (1, len(pairs)):
        raise KdmtError(f"give {option} once for all pairs, or once per --pair ({len(pairs)} times)")
    return values * len(pairs) if len(values) == 1 else values


@command("prepare")
def prepare_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared data to.")],
    src_lang: Annotated[str | None, typer.Option("--src", help="Source language code, e.g. de.")] = None,
    tgt_lang: Annotated[str | None, typer.Option("--tgt", help="Target language code, e.g. en.")] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            help="A language pair SRC-TGT (e.g. de-en), instead of --src/--tgt; repeat for a multilingual "
            "directory: one sentencepiece model, sources tagged with the target language (<2en>)."
        ),
    ] = None,
    train: Annotated[
        list[str] | None,
        typer.Option(
            help="Training files prefix: PREFIX.SRC and PREFIX.TGT (.gz allowed); with several --pair, "
            "once for all or once per pair."
        ),
    ] = None,
    valid: Annotated[list[str] | None, typer.Option(help="Validation files prefix, as --train.")] = None,
    source_tags: Annotated[
        bool, typer.Option(help="Several pairs: sources carry their own language's tag too (<from_de>).")
    ] = False,
    spm_temperature: Annotated[
        float,
        typer.Option(help="Several pairs: each language's share of the sentencepiece sample ∝ its share^(1/T)."),
    ] = 5.0,
    dataset: Annotated[
        str | None,
        typer.Option(help="A `datasets` source instead of files: a hub name, or json/csv/parquet with --data-files."),
    ] = None,
    dataset_config: Annotated[str | None, typer.Option(help="The dataset's configuration (e.g. de-en).")] = None,
    data_files: Annotated[
        list[str] | None, typer.Option(help="SPLIT=PATH for a local json/csv/parquet dataset; repeat per split.")
    ] = None,
    train_split: Annotated[str, typer.Option(help="Dataset split to train on.")] = "train",
    valid_split: Annotated[str, typer.Option(help="Dataset split to validate on.")] = "validation",
    src_field: Annotated[
        str | None, typer.Option(help="Dataset field of the source text (default: translation.SRC or SRC).")
    ] = None,
    tgt_field: Annotated[str | None, typer.Option(help="Dataset field of the target text.")] = None,
    vocab_size: Annotated[int, typer.Option(help="Sentencepiece vocabulary size.")] = 8000,
    joint_vocab: Annotated[
        bool, typer.Option("--joint-vocab/--separate-vocab", help="One vocabulary for both languages.")
    ] = True,
    spm_type: Annotated[str, typer.Option(help="Sentencepiece model type: unigram or bpe.")] = "unigram",
    max_words: Annotated[int, typer.Option(help="Drop training pairs with a side longer than this many words.")] = 250,
    max_ratio: Annotated[float, typer.Option(help="Drop pairs whose word-length ratio exceeds this.")] = 3.0,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate training pairs.")] = True,
    spm_sample: Annotated[
        int, typer.Option(help="Sentences sentencepiece is trained on: a random sample of the cleaned corpus.")
    ] = SPM_SAMPLE,
    workers: Annotated[int, typer.Option(help="Processes that tokenize the corpus.")] = 1,
    vocab_from: Annotated[
        Path | None,
        typer.Option(
            help="A MarianMT (Hugging Face) teacher's directory: write the data in its vocabulary instead of "
            "training sentencepiece, for word-level KD from it."
        ),
    ] = None,
) -> None:
    """Clean a parallel corpus, train a sentencepiece model and write the tokenized corpus, streaming.

    Example: kdmt prepare --src de --tgt en --train data/multi30k/train --valid data/multi30k/val -o work/data

    Several pairs: kdmt prepare --pair de-en --pair fr-en --train data/multi30k/train --valid data/multi30k/val \
    -o work/data
    """
    if pair and not src_lang and not tgt_lang:
        pairs = parse_pairs(pair)
    elif src_lang and tgt_lang and not pair:
        pairs = [Pair(src_lang, tgt_lang)]
    else:
        raise KdmtError("give either --src and --tgt, or --pair")
    if (dataset is None) == (train is None):
        raise KdmtError("give either --train and --valid (text files) or --dataset")
    if dataset is not None and len(pairs) > 1:
        raise KdmtError("--dataset takes one pair; give several pairs as files (--train, --valid)")
    clean = CleanOptions(max_words, max_ratio, dedup)
    vocab = VocabOptions(vocab_size, joint_vocab, spm_type, sample=spm_sample, temperature=spm_temperature)
    if dataset is None:
        trains, valids = _per_pair(train, pairs, "--train"), _per_pair(valid, pairs, "--valid")
        corpora = [
            PairCorpus(
                p,
                stream_parallel(_prefix_file(t, p.src), _prefix_file(t, p.tgt)),
                stream_parallel(_prefix_file(v, p.src), _prefix_file(v, p.tgt)),
            )
            for p, t, v in zip(pairs, trains, valids)
        ]
    else:
        files = None
        if data_files:
            if not all("=" in f for f in data_files):
                raise KdmtError("--data-files takes SPLIT=PATH, e.g. --data-files train=train.jsonl")
            files = dict(f.split("=", 1) for f in data_files)
        columns = dict(src_field=src_field, tgt_field=tgt_field)
        p = pairs[0]
        train_pairs = dataset_pairs(dataset, train_split, p.src, p.tgt, dataset_config, files, **columns)
        valid_pairs = dataset_pairs(dataset, valid_split, p.src, p.tgt, dataset_config, files, **columns)
        corpora = [PairCorpus(p, train_pairs, valid_pairs)]
    if vocab_from is not None and len(corpora) > 1:
        raise KdmtError("--vocab-from takes one pair (a MarianMT teacher's)")
    with err.status("prepare") as status:
        if len(corpora) == 1:
            c = corpora[0]
            prepared = prepare(
                out, c.pair.src, c.pair.tgt, c.train, c.valid, clean, vocab, workers, status.update, vocab_from
            )
        else:
            prepared = prepare_multilingual(out, corpora, clean, vocab, source_tags, workers, status.update)
    table = Table("split", *prepared.stats["train"].keys(), title=f"kdmt prepare → {out}")
    for split, stats in prepared.stats.items():
        table.add_row(split, *(f"{v:,}" for v in stats.values()))
    for record in prepared.pairs or []:
        for split, stats in record["stats"].items():
            table.add_row(f"{split} {record['pair']}", *(f"{v:,}" for v in stats.values()))
    err.print(table)


# --- training (teacher and student) ------------------------------------------------------------
Data = Annotated[Path, typer.Option(help="A directory written by kdmt prepare.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Directory for checkpoints and metrics.")]
Preset = Annotated[str, typer.Option(help="Model size: tiny, small or base.")]
Dim = Annotated[int | None, typer.Option(help="Override the preset.")]
Dropout = Annotated[float | None, typer.Option(help="Override the preset's dropout.")]
MaxTokens = Annotated[int, typer.Option(help="Padded tokens per batch.")]
UpdateFreq = Annotated[int, typer.Option(help="Batches accumulated per optimizer step.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate.")]
Warmup = Annotated[int, typer.Option(help="Warmup steps of the inverse-sqrt schedule.")]
LabelSmoothing = Annotated[float, typer.Option(help="Label smoothing ε.")]
ClipNorm = Annotated[float, typer.Option(help="Gradient norm clipping (0: off).")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
MaxSteps = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")]
Epochs = Annotated[int | None, typer.Option(help="Stop after this many epochs.")]
MaxTime = Annotated[str | None, typer.Option(help="Stop after this long, e.g. 30m or 2h.")]
ValidInterval = Annotated[int, typer.Option(help="Steps between validations and checkpoints.")]
ValidBleuSents = Annotated[
    int | None, typer.Option(help="Validation sentences translated for BLEU (0: none; default all).")
]
Patience = Annotated[int | None, typer.Option(help="Stop after this many validations without improvement.")]
KeepLast = Annotated[int, typer.Option(help="Numbered checkpoints to keep.")]
AverageLast = Annotated[int, typer.Option(help="At the end, average the last N into checkpoint_avg.safetensors.")]
MaxLen = Annotated[int, typer.Option(help="Skip training pairs longer than this many tokens.")]
LogInterval = Annotated[int, typer.Option(help="Steps between lines in metrics.jsonl.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
TrainBf16 = Annotated[bool, typer.Option("--bf16/--fp32", help="bf16 autocast on CUDA.")]
AdamBetas = Annotated[tuple[float, float], typer.Option(help="Adam's β1 and β2.")]
ValidBeam = Annotated[int, typer.Option(help="Beam size of the validation BLEU's translations.")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint_last.safetensors.")]
D = TrainConfig(max_steps=1)  # for the defaults


def _model_config(
    data: PreparedData,
    preset: str,
    d_model: int | None,
    n_heads: int | None,
    enc_layers: int | None,
    dec_layers: int | None,
    d_ff: int | None,
    dropout: float | None,
) -> ModelConfig:
    """A preset for the data's vocabularies, with the dimensions given on the command line."""
    return make_config(
        len(data.src_vocab),
        len(data.tgt_vocab),
        preset,
        share_embeddings=data.info.joint_vocab,
        d_model=d_model,
        n_heads=n_heads,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        d_ff=d_ff,
        dropout=dropout,
    )


def _join_training(device: str | None, out: Path, resume: bool) -> torch.device:
    """The training device; under torchrun, this process joins the others, and rank 0 alone speaks and
    checks --out (it alone writes there)."""
    dev = distributed.init(device)
    err.quiet = not distributed.is_main()
    distributed.on_rank0(lambda: check_out_dir(out, resume))
    if distributed.is_distributed():
        err.print(f"training on {distributed.world_size()} processes; rank 0 validates and writes {out}")
    return dev


@command("train-teacher")
def train_teacher_cmd(
    data: Data,
    out: Out,
    preset: Preset = "small",
    d_model: Dim = None,
    n_heads: Dim = None,
    enc_layers: Dim = None,
    dec_layers: Dim = None,
    d_ff: Dim = None,
    dropout: Dropout = None,
    max_tokens: MaxTokens = D.max_tokens,
    update_freq: UpdateFreq = D.update_freq,
    lr: Lr = D.lr,
    warmup: Warmup = D.warmup,
    adam_betas: AdamBetas = D.adam_betas,
    label_smoothing: LabelSmoothing = D.label_smoothing,
    clip_norm: ClipNorm = D.clip_norm,
    weight_decay: WeightDecay = D.weight_decay,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    valid_interval: ValidInterval = D.valid_interval,
    valid_bleu_sents: ValidBleuSents = None,
    valid_beam: ValidBeam = D.valid_beam,
    patience: Patience = None,
    keep_last: KeepLast = D.keep_last,
    average_last: AverageLast = D.average_last,
    max_len: MaxLen = D.max_len,
    log_interval: LogInterval = D.log_interval,
    seed: Seed = D.seed,
    bf16: TrainBf16 = True,
    resume: Resume = False,
    device: Device = None,
    pair: Annotated[
        str | None,
        typer.Option(help="Multilingual data: train on this pair's sentences alone (a pair's teacher, e.g. de-en)."),
    ] = None,
) -> None:
    """Train a Transformer teacher with label-smoothed cross-entropy.

    Example: kdmt train-teacher --data work/data --out work/teacher --preset small --max-steps 20000

    One pair's teacher on multilingual data: kdmt train-teacher --data work/data --pair de-en --out work/teacher-de-en
    """
    dev = _join_training(device, out, resume)
    config = TrainConfig(
        max_tokens=max_tokens,
        update_freq=update_freq,
        lr=lr,
        warmup=warmup,
        adam_betas=adam_betas,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        clip_norm=clip_norm,
        max_steps=max_steps,
        epochs=epochs,
        max_time=parse_duration(max_time),
        valid_interval=valid_interval,
        valid_bleu_sents=valid_bleu_sents,
        valid_beam=valid_beam,
        patience=patience,
        keep_last=keep_last,
        average_last=average_last,
        max_len=max_len,
        seed=seed,
        log_interval=log_interval,
        bf16=bf16,
    )
    prepared = PreparedData.open(data)
    model_config = _model_config(prepared, preset, d_model, n_heads, enc_layers, dec_layers, d_ff, dropout)
    torch.manual_seed(seed)
    model = Transformer(model_config)
    with distributed.rank0_first():  # tokenized again, and saved, when not current
        train, valid = prepared.corpus("train"), ValidSet.of(prepared, pair)
    if pair is not None:  # ValidSet.of has checked that the data has several pairs, this one among them
        train = train.subset(prepared.info.pair_rows("train").rows(pair))
    meta = {"role": "teacher", "objective": "label-smoothed cross-entropy", **_data_record(prepared, preset, pair)}
    trainer = Trainer(model, prepared.src_vocab, prepared.tgt_vocab, train, valid, out, config, dev, None, meta, err)
    err.print(f"teacher: {model.num_parameters():,} parameters, {len(train):,} training pairs, device {dev}")
    trainer.run(resume)


def _data_record(data: PreparedData, preset: str, pair: str | None = None) -> dict:
    """What a checkpoint records of its data; for multilingual data, the pairs it translates (kdmt translate
    --pair checks them) and whether sources carry their own language's tag."""
    record = {"data": str(data.root), "preset": preset, "src_lang": data.info.src_lang, "tgt_lang": data.info.tgt_lang}
    if data.info.pairs is not None:
        names = [pair] if pair else [p["pair"] for p in data.info.pairs]
        record |= {"pairs": names, "source_tags": data.info.source_tags}
    return record


Teachers = Annotated[
    list[Path] | None,
    typer.Option(
        "--teacher",
        "-t",
        help="Teacher checkpoint (or a MarianMT directory: data prepared with --vocab-from it); repeat for several.",
    ),
]
TeacherWeights = Annotated[
    list[float] | None, typer.Option(help="Weight of each teacher's soft targets (default equal).")
]
Distilled = Annotated[
    list[str] | None,
    typer.Option(
        help="Distilled targets (seq-KD), line-aligned with DATA/train.src; several pairs: or PAIR=FILE for each "
        "pair, line-aligned with DATA/train.PAIR.src."
    ),
]
FallbackRef = Annotated[
    bool, typer.Option(help="Where the distilled line is empty (filtered), train on the reference instead of dropping.")
]


@command("train-student")
def train_student_cmd(
    data: Data,
    out: Out,
    teacher: Teachers = None,
    teacher_weight: TeacherWeights = None,
    distilled: Distilled = None,
    ref_share: Annotated[float, typer.Option(help="Share of reference pairs mixed with the distilled ones.")] = 0.0,
    fallback_ref: FallbackRef = False,
    alpha: Annotated[float, typer.Option(help="Word-level KD weight α (0: off).")] = 0.0,
    temperature: Annotated[float, typer.Option(help="Word-level KD temperature T.")] = 1.0,
    topk: Annotated[int | None, typer.Option(help="Keep only the teacher's top-k probabilities (word-KD).")] = None,
    soft_targets: Annotated[
        Path | None, typer.Option(help="Stored top-k soft targets (kdmt soft-targets): offline word-KD.")
    ] = None,
    hidden_kd: Annotated[str, typer.Option(help="Hidden-state KD on: none, encoder, decoder or both.")] = "none",
    hidden_beta: Annotated[float, typer.Option(help="Hidden-state KD weight β.")] = 1.0,
    hidden_enc_layers: Annotated[
        str | None, typer.Option(help="Teacher encoder layer matched with each student layer, e.g. 1,3,5.")
    ] = None,
    hidden_dec_layers: Annotated[
        str | None, typer.Option(help="Teacher decoder layer matched with each student layer.")
    ] = None,
    init_from_teacher: Annotated[
        bool, typer.Option(help="Copy embeddings and layers from the (first) teacher.")
    ] = False,
    init_enc_layers: Annotated[str | None, typer.Option(help="Teacher encoder layers to copy, e.g. 0,2,4.")] = None,
    init_dec_layers: Annotated[str | None, typer.Option(help="Teacher decoder layers to copy, e.g. 5.")] = None,
    pair_temperature: Annotated[
        float, typer.Option(help="Multilingual data: each pair drawn ∝ (its share of the data)^(1/T); 1 keeps it.")
    ] = 1.0,
    selective_kd: Annotated[
        bool,
        typer.Option(
            help="Selective distillation: per pair, word-KD off while the student's validation BLEU is "
            "at least its teacher's + --selective-margin, on again when it falls below."
        ),
    ] = False,
    selective_margin: Annotated[float, typer.Option(help="BLEU above the teacher's that switches word-KD off.")] = 1.0,
    pair: Annotated[
        str | None,
        typer.Option(help="Multilingual data: train on this pair's sentences alone (--teacher as for one pair)."),
    ] = None,
    preset: Preset = "tiny",
    d_model: Dim = None,
    n_heads: Dim = None,
    enc_layers: Dim = None,
    dec_layers: Dim = None,
    d_ff: Dim = None,
    dropout: Dropout = None,
    max_tokens: MaxTokens = D.max_tokens,
    update_freq: UpdateFreq = D.update_freq,
    lr: Lr = D.lr,
    warmup: Warmup = D.warmup,
    adam_betas: AdamBetas = D.adam_betas,
    label_smoothing: LabelSmoothing = D.label_smoothing,
    clip_norm: ClipNorm = D.clip_norm,
    weight_decay: WeightDecay = D.weight_decay,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    valid_interval: ValidInterval = D.valid_interval,
    valid_bleu_sents: ValidBleuSents = None,
    valid_beam: ValidBeam = D.valid_beam,
    patience: Patience = None,
    keep_last: KeepLast = D.keep_last,
    average_last: AverageLast = D.average_last,
    max_len: MaxLen = D.max_len,
    log_interval: LogInterval = D.log_interval,
    seed: Seed = D.seed,
    bf16: TrainBf16 = True,
    resume: Resume = False,
    device: Device = None,
) -> None:
    """Train a student: on distilled targets (seq-KD), with the teachers' soft targets (word-KD),
    their hidden states, and/or initialised from a teacher.

    Example: kdmt train-student --data work/data --out work/student --distilled work/distilled/train.tgt \
    --teacher work/teacher/checkpoint_best.safetensors --alpha 0.5 --preset tiny --max-steps 10000

    Multilingual data: one teacher per pair, --teacher PAIR=CHECKPOINT; each sentence learns from its pair's;
    the distilled targets in one file or --distilled PAIR=FILE for each pair (kdmt distill of DATA/train.PAIR.src).
    """
    dev = _join_training(device, out, resume)
    config = TrainConfig(
        max_tokens=max_tokens,
        update_freq=update_freq,
        lr=lr,
        warmup=warmup,
        adam_betas=adam_betas,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        clip_norm=clip_norm,
        max_steps=max_steps,
        epochs=epochs,
        max_time=parse_duration(max_time),
        valid_interval=valid_interval,
        valid_bleu_sents=valid_bleu_sents,
        valid_beam=valid_beam,
        patience=patience,
        keep_last=keep_last,
        average_last=average_last,
        max_len=max_len,
        seed=seed,
        log_interval=log_interval,
        bf16=bf16,
    )
    options = StudentOptions(
        teachers=teacher or [],
        teacher_weights=teacher_weight,
        distilled=distilled or [],
        ref_share=ref_share,
        fallback_ref=fallback_ref,
        alpha=alpha,
        temperature=temperature,
        topk=topk,
        soft_targets=soft_targets,
        hidden_kd=hidden_kd,
        hidden_beta=hidden_beta,
        hidden_enc_layers=hidden_enc_layers,
        hidden_dec_layers=hidden_dec_layers,
        init_from_teacher=init_from_teacher,
        init_enc_layers=init_enc_layers,
        init_dec_layers=init_dec_layers,
        pair_temperature=pair_temperature,
        selective=selective_kd,
        selective_margin=selective_margin,
        pair=pair,
    )
    if selective_kd and valid_bleu_sents == 0:
        raise KdmtError("--selective-kd compares validation BLEU: drop --valid-bleu-sents 0")
    prepared = PreparedData.open(data)
    model_config = _model_config(prepared, preset, d_model, n_heads, enc_layers, dec_layers, d_ff, dropout)
    with distributed.rank0_first():  # the student's corpus is tokenized once, and saved
        student = build_student(prepared, model_config, options, label_smoothing, seed, dev)
        valid = ValidSet.of(prepared, pair)
    n = len(student.corpus)
    meta = {**student.meta, **_data_record(prepared, preset, pair)}
    vocabs = prepared.src_vocab, prepared.tgt_vocab
    trainer = Trainer(
        student.model, *vocabs, student.corpus, valid, out, config, dev, student.objective, meta, err, student.sampler
    )
    if selective_kd:
        err.print("measuring the teachers' validation BLEU, for selective distillation")
        trainer.meta["selective_kd"] = student.measure_teachers(
            lambda checkpoints, pair: distributed.from_rank0(
                trainer.bleu(checkpoints, pair) if distributed.is_main() else None
            )
        )
    err.print(f"student: {student.model.num_parameters():,} parameters, {n:,} training pairs, device {dev}")
    trainer.run(resume)


def _progress_console() -> Console:
    """Where a sharded command shows its progress: stderr, except in torchrun's processes other than rank 0."""
    return err if launch_rank() == 0 else Console(stderr=True, quiet=True)


@command("soft-targets")
def soft_targets_cmd(
    teacher: Annotated[
        list[Path],
        typer.Option(
            "--teacher",
            "-t",
            help="Teacher checkpoint or MarianMT directory (data prepared with --vocab-from it); repeat for several.",
        ),
    ],
    data: Data,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The soft-targets record to write (JSON); its arrays beside it: OUT's stem.*.npy."
        ),
    ],
    teacher_weight: TeacherWeights = None,
    distilled: Distilled = None,
    ref_share: Annotated[float, typer.Option(help="As for train-student: the same corpus is needed.")] = 0.0,
    fallback_ref: FallbackRef = False,
    topk: Annotated[int, typer.Option(help="Probabilities kept per target token.")] = 8,
    seed: Seed = D.seed,
    batch_tokens: BatchTokens = 4000,
    shard_size: Annotated[
        int, typer.Option(help="Sentences per shard: the unit of resuming and of sharing the work among processes.")
    ] = 10000,
    device: Device = None,
) -> None:
    """Store the teachers' top-k log-probabilities for every target token of a student's training
    corpus, for offline word-level KD (train-student --soft-targets): int32 ids and float16 log-probs in
    memory-mapped arrays (about 6·K bytes a token) that training reads lazily.

    Processes started with the same arguments share the shards (torchrun --nproc-per-node N -m kdmt
    soft-targets ..., or the command started several times on one machine); a killed run resumes.

    Example: kdmt soft-targets -t work/teacher/checkpoint_best.safetensors --data work/data -o work/soft.json --topk 8

    Multilingual data: one teacher per pair, -t de-en=CKPT -t fr-en=CKPT; each sentence's from its pair's.
    """
    prepared = PreparedData.open(data)
    dev = local_device(device)
    pairs = [p["pair"] for p in prepared.info.pairs] if prepared.info.pairs else None
    paths = per_pair(teacher, pairs, "--teacher PAIR=CHECKPOINT") if pairs else teacher
    if pairs and (teacher_weight or not paths):
        raise KdmtError("several pairs: give one --teacher PAIR=CHECKPOINT for each pair, and no --teacher-weight")
    teachers = load_teachers(prepared, paths, pairs or [], dev, topk)
    corpus, record = student_corpus(prepared, distilled, ref_share, seed, fallback_ref)
    weights = teacher_weight or [1.0] * len(teachers)
    if len(weights) != len(teachers):
        raise KdmtError("give one --teacher-weight per teacher")
    names = [str(p) for p in teacher]  # several pairs: PAIR=CHECKPOINT, which says how sentences were routed
    identity = file_identity([str(p) for p in paths])
    settings = SoftTargetSettings(names, weights, topk, batch_tokens, shard_size, inputs=identity)
    routes = PairRows(pairs, record["pair_rows"]) if pairs else None
    shards = -(-len(corpus) // shard_size)
    with ProgressLine(_progress_console(), "soft targets", len(corpus), "sent", transient=True) as progress:

        def shard_done(index: int) -> None:
            progress.update(progress.completed, f"shard {index + 1} of {shards} written")

        store = compute_soft_targets(
            [c.model for _, c in teachers], corpus, settings, out, progress.advance, shard_done, routes
        )
    if store is None:
        err.print(f"no shard left for this process; the last process to finish writes {out}", soft_wrap=True)
        return
    err.print(f"wrote the top-{topk} soft targets of {len(corpus):,} sentences to {out}", soft_wrap=True)


# --- translate ---------------------------------------------------------------------------------
def _report_skipped(lines: list[str], results: list, limit: int) -> None:
    long = sum(1 for line, r in zip(lines, results) if line.strip() and not r)
    if long:
        err.print(f"{long} lines longer than {limit} tokens were not translated (empty output lines)")


@command("translate")
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
    beam: Beam = 5,
    lenpen: Lenpen = 1.0,
    max_len_a: MaxLenA = 1.5,
    max_len_b: MaxLenB = 10,
    min_len: MinLen = 1,
    batch_tokens: BatchTokens = 4000,
    max_src_tokens: MaxSrcTokens = 1024,
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
    options = SearchOptions(beam, lenpen, max_len_a, max_len_b, batch_tokens, max_src_tokens, min_len)
    languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
    metas, translator = open_translator(model, device, options, bf16, threads, engine, languages)
    lines = read_lines(input) if input else list(decode_stream(sys.stdin.buffer, "stdin"))
    lines = model_inputs(lines, Pair.parse(pair) if pair else None, metas[0])
    with ProgressLine(err, "translate", len(lines), "sent", transient=True) as progress:
        results = translator.translate_nbest(lines, 1, progress.advance)
    _report_skipped(lines, results, translator.max_src_tokens)
    hyps = [r[0].text if r else "" for r in results]
    if output:
        write_lines(output, hyps)
    else:
        sys.stdout.write("".join(h + "\n" for h in hyps))


# --- score -------------------------------------------------------------------------------------
@command("score")
def score_cmd(
    model: Annotated[
        list[Path],
        typer.Option("--model", "-m", help="Checkpoint (repeat for an ensemble), or a CTranslate2 export directory."),
    ],
    src: Annotated[Path, typer.Option(help="Source side of the pairs (the model's source language).")],
    tgt: Annotated[Path, typer.Option(help="Target side of the pairs, line-aligned with --src.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    batch_tokens: BatchTokens = 4000,
    device: Device = None,
    threads: Threads = 0,
) -> None:
    """Score sentence pairs: each pair's per-token cross-entropy under the model, teacher-forced (lower is
    better; nan: a side longer than the model's positions), one a line.

    Example (a backward model scores distilled pairs): kdmt score -m backward.safetensors --src train.tgt
    --tgt train.src > train.scores
    """
    if threads:
        torch.set_num_threads(threads)
    scorer = open_scorer(model, device, batch_tokens, threads)
    pairs = list(stream_parallel(src, tgt))
    scores = scorer.score([s for s, _ in pairs], [t for _, t in pairs])
    lines = [f"{x:.6f}" for x in scores]
    if output:
        write_lines(output, lines)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    scored = [x for x in scores if x == x]
    mean = sum(scored) / len(scored) if scored else float("nan")
    err.print(f"scored {len(scored):,} of {len(scores):,} pairs; mean cross-entropy {mean:.4f} a token", soft_wrap=True)


# --- distill -----------------------------------------------------------------------------------
@command("distill")
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
    beam: Beam = 5,
    lenpen: Lenpen = 1.0,
    max_len_a: MaxLenA = 1.5,
    max_len_b: MaxLenB = 10,
    min_len: MinLen = 1,
    batch_tokens: BatchTokens = 4000,
    max_src_tokens: MaxSrcTokens = 1024,
    device: Device = None,
    bf16: Bf16 = True,
    threads: Threads = 0,
    pair: PairOption = None,
) -> None:
    """Translate a corpus with the teacher(s): the sequence-level distilled corpus (Kim & Rush 2016).

    Degenerate translations are written as empty lines (--no-filter keeps them); OUT.json counts them by reason.
    Processes started with the same arguments share the shards: torchrun --nproc-per-node N -m kdmt distill ...,
    or the command started several times, on machines sharing the file system. A killed run resumes where it
    stopped when started again with the same arguments, with any number of processes.

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
    select_metric = select_metric or ("chrf" if select == "mbr" else "bleu")
    check_selection(select or "best", select_metric)
    if teacher_cmd is not None:
        command_options(ctx, candidates, select)
    if sampling is None and candidates > beam:
        raise KdmtError(f"--candidates must be at most --beam ({beam}) without --sampling, not {candidates}")
    if select not in (None, "best") and candidates == 1:
        candidates = beam if sampling is None else 8  # a choice among the whole beam, or among 8 samples
    if keep > candidates:
        raise KdmtError(f"--keep must be at most --candidates ({candidates}), not {keep}")
    if bool(filter_drop or filter_max_ce is not None) != (filter_backward is not None):
        raise KdmtError("--filter-backward goes with --filter-drop P or --filter-max-ce X")
    if teacher_cmd is not None:
        translator: Teacher = CommandTeacher(teacher_cmd)
        identities, meta, max_src, engine_used = [translator.identity], None, 0, "command"
    else:
        teacher = [resolve(t) if is_hub_id(t) else t for t in teacher]  # a hub id: its snapshot's directory
        identities = [teacher_identity(t) for t in teacher]  # each teacher read once: hashed
        sampler = Sampling.parse(sampling, sampling_temperature, seed) if sampling else None
        options = SearchOptions(beam, lenpen, max_len_a, max_len_b, batch_tokens, max_src_tokens, min_len, sampler)
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
        beam=beam,
        lenpen=lenpen,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        min_len=min_len,
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
    backward = open_scorer([filter_backward], str(local_device(device)), batch_tokens) if filter_backward else None
    run = DistillRun(translator, settings, out, meta, backward)
    shards = -(-run.lines // shard_size)
    with ProgressLine(_progress_console(), "distill", run.lines, "sent", transient=True) as progress:

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


# --- eval --------------------------------------------------------------------------------------
@command("eval")
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
    beam: Beam = 5,
    lenpen: Lenpen = 1.0,
    max_len_a: MaxLenA = 1.5,
    max_len_b: MaxLenB = 10,
    min_len: MinLen = 1,
    batch_tokens: BatchTokens = 4000,
    max_src_tokens: MaxSrcTokens = 1024,
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
    src_lines, ref_lines = read_parallel(src, ref)
    language_pair = Pair.parse(pair) if pair else None
    reports, languages = [], []
    for path in checkpoints:
        path = resolve(path) if is_hub_id(path) else path  # a hub id: its snapshot's directory
        options = SearchOptions(beam, lenpen, max_len_a, max_len_b, batch_tokens, max_src_tokens, min_len)
        model_languages = PretrainedOptions(src_lang, tgt_lang, source_prefix, quantization)
        metas, translator = open_translator([path], device, options, bf16, threads, engine, model_languages)
        inputs = model_inputs(src_lines, language_pair, metas[0])
        languages.append(iso_language(tgt_lang) or target_language(metas[0], language_pair))
        if languages[-1] != languages[0]:
            raise KdmtError(f"{path} translates into {languages[-1]}, not {languages[0]}: name the --tgt-lang")
        name = path.name if path.is_dir() else f"{path.parent.name}.{path.stem}"
        with ProgressLine(err, f"eval {name}", len(src_lines), "sent", transient=True) as progress:
            args = src, inputs, ref_lines, metas[0], progress.advance, pair, languages[0]
            result, hyps = evaluate(translator, path, *args)
        reports.append(result)
        if hyps_dir:
            write_lines(hyps_dir / f"{name}{f'.{pair}' if pair else ''}.hyp", hyps)
    names = short_names([r.checkpoint for r in reports])
    compared = len(reports) > 1 and bootstrap_samples > 0
    if compared:
        first = reports[0]
        test = paired_bootstrap(first.hyps, [r.hyps for r in reports[1:]], ref_lines, languages[0], bootstrap_samples)
        for i, r in enumerate(reports[1:]):
            r.vs_first = test.against(i, names[first.checkpoint])
    table = Table(
        Column("model", overflow="fold"),
        "BLEU",
        "chrF",
        "chrF++",
        "params",
        "sent/s",
        "tok/s",
        *(["ΔBLEU", "ΔchrF"] if compared else []),
        title=f"kdmt eval: {src.name}{f' ({pair})' if pair else ''} (beam {beam})",
    )
    reports = [r.to_dict() for r in reports]
    for r in reports:
        table.add_row(
            names[r["checkpoint"]],
            f"{r['bleu']:.2f}",
            f"{r['chrf']:.2f}",
            f"{r['chrfpp']:.2f}",
            f"{r['parameters']:,}",
            f"{r['sentences_per_s']:,.1f}",
            f"{r['tokens_per_s']:,.0f}",
            *([difference(r, "bleu", "first"), difference(r, "chrf", "first")] if compared else []),
        )
    err.print(table)
    for r in reports:
        err.print(f"{r['checkpoint']}: {describe(r['made_with'])}", highlight=False)
    err.print(
        f"BLEU {reports[0]['bleu_signature']}\nchrF {reports[0]['chrf_signature']}\n"
        f"chrF++ {reports[0]['chrfpp_signature']}\ndevice {reports[0]['device']}",
        highlight=False,
    )
    if compared:
        err.print(f"ΔBLEU and ΔchrF are against {names[reports[0]['checkpoint']]}", highlight=False)
        err.print(significance_note(reports[1]["vs_first"]), highlight=False)
    if note := bleu_tokenizer(languages[0])[1]:
        err.print(note, highlight=False)
    if report:
        write_text(report, json.dumps(reports, indent=2) + "\n")
    if json_out:
        print(json.dumps(reports, indent=2))


# --- report ------------------------------------------------------------------------------------
@command("report")
def report_cmd(
    reports: Annotated[list[Path], typer.Argument(help="JSON files written by kdmt eval --report (greedy and beam).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where report.json and report.png go.")],
    markdown_out: Annotated[bool, typer.Option("--markdown", help="Also print the table as markdown.")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="The model (by its name in the table) every student is also compared with, e.g. a student "
            "trained on references."
        ),
    ] = None,
    bootstrap_samples: BootstrapSamples = BOOTSTRAP_SAMPLES,
) -> None:
    """Teacher beside students: one table (BLEU, chrF, chrF++, size, speed greedy and beam, each model's
    difference from the teacher and from --baseline, with sacrebleu's paired bootstrap test) and a plot of
    BLEU against sentences/s, from kdmt eval reports.

    Example: kdmt report work/eval-beam5.json work/eval-greedy.json -o work --baseline student-baseline
    """
    rows = build_rows(load_reports(reports))
    teacher = compare_with_teacher(rows, bootstrap_samples)
    if baseline:
        compare_with_baseline(rows, baseline, bootstrap_samples)
    headers, body = table(rows, baseline)
    if markdown_out:
        print(markdown(headers, body), end="")
    rich_table = Table(
        Column(headers[0], overflow="fold"),
        *headers[1:],
        title=f"kdmt report: {tested_on(rows)} ({rows[0]['device']})",
    )
    for cells in body:
        rich_table.add_row(*cells)
    err.print(rich_table)
    if teacher:
        against = "the first teacher of each pair" if any("pair" in r for r in rows) else teacher
        err.print(f"ΔBLEU, ΔchrF and × speed (beam {rows[0]['beam']}) are against {against}", highlight=False)
    if baseline:
        err.print(f"ΔBLEU and ΔchrF vs {baseline}: every student against {baseline}", highlight=False)
    if test := next((r.get(f"vs_{k}") for r in rows for k in ("teacher", "baseline") if r.get(f"vs_{k}")), None):
        err.print(significance_note(test), highlight=False)
    for against in ("teacher", "baseline"):
        if missing := untested(rows, against):
            err.print(
                f"no paired test against the {against} for {', '.join(missing)}: --bootstrap-samples 0, or no "
                "translations in the reports (kdmt eval before the tests), or another test set",
                highlight=False,
            )
    write_text(out_dir / "report.json", json.dumps([public(r) for r in rows], indent=2) + "\n")
    plot(rows, out_dir / "report.png")
    err.print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.png'}")


# --- export ------------------------------------------------------------------------------------
@command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="ctranslate2 or huggingface.")] = "ctranslate2",
    quantization: Annotated[
        str,
        typer.Option(
            help="Weights: float32, int8, int8_float32, int16, float16 or bfloat16 (huggingface: float32, float16, "
            "bfloat16)."
        ),
    ] = "float32",
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a checkpoint as a CTranslate2 or Hugging Face model directory that translates on its own.

    Example: kdmt export work/student/checkpoint_best.safetensors -o work/student-int8 --quantization int8
    """
    record = export_checkpoint(checkpoint, out, fmt, quantization, force)
    size = size_on_disk(out) / 1e6
    err.print(f"exported {checkpoint} to {out} ({fmt}, {record['quantization']}, {size:.1f} MB)", soft_wrap=True)


# --- average -----------------------------------------------------------------------------------
@command("average")
def average_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints to average (same model and vocabulary).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The averaged checkpoint.")],
) -> None:
    """Average the parameters of several checkpoints (e.g. the last N of a run) into one.

    Example: kdmt average work/teacher/checkpoint_[0-9]*.safetensors -o work/teacher/checkpoint_avg.safetensors
    """
    average_checkpoints(checkpoints, out)
    err.print(f"averaged {len(checkpoints)} checkpoints into {out}")


@command("convert-checkpoint")
def convert_checkpoint_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints (.pt) of an older kdmt.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="With one checkpoint: the file to write (default: beside it).")
    ] = None,
) -> None:
    """Rewrite older kdmt's pickled .pt checkpoints, training state and all, as .safetensors files beside them.

    Example: kdmt convert-checkpoint work/teacher/*.pt
    """
    if out is not None and len(checkpoints) > 1:
        raise KdmtError("--out takes one checkpoint; without it each is written beside its .pt")
    for path in checkpoints:
        err.print(f"converted {path} into {convert_checkpoint(path, out)}", soft_wrap=True)


def main() -> None:
    signal.signal(signal.SIGTERM, interrupt)
    try:
        app()
    finally:
        distributed.leave()
