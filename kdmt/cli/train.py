"""kdmt train-teacher and kdmt train-student: a run directory trained from prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from kdmt import distributed
from kdmt.cli.common import command, err
from kdmt.cli.params import Device
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.model import ModelConfig, Transformer, make_config
from kdmt.options import parse_duration
from kdmt.run_dir import check_out_dir
from kdmt.student import StudentOptions, build_student
from kdmt.train import TrainConfig, Trainer, ValidSet

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
