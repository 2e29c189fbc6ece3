"""kdmt train-teacher and kdmt train-student: a run directory trained from prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from kdmt import distributed
from kdmt.checkpoint import load_checkpoint
from kdmt.cli.common import command, effective_config, err, given
from kdmt.cli.params import Data, Device, with_options
from kdmt.config import CONFIG_FILE, options
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.files import write_text
from kdmt.model import Architecture, ModelConfig, Transformer
from kdmt.run_dir import LAST, check_out_dir
from kdmt.student import StudentOptions, build_student
from kdmt.train import TrainConfig, Trainer, ValidSet

Out = Annotated[Path, typer.Option("--out", "-o", help="Directory for checkpoints and metrics.")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint_last.safetensors.")]


def _model_config(
    ctx: typer.Context, data: PreparedData, architecture: Architecture, out: Path, resume: bool
) -> tuple[ModelConfig, str]:
    """The model and its preset: a new run's from the options, for the data's vocabularies; a resumed run's
    from its checkpoint (an architecture option given that differs from it is refused)."""
    if not resume:
        sizes = len(data.src_vocab), len(data.tgt_vocab)
        return architecture.config(*sizes, data.info.joint_vocab), architecture.preset
    saved = load_checkpoint(out / LAST)
    preset = saved.meta.get("preset", architecture.preset)
    given_options = [f.name for f in options(Architecture) if given(ctx, f.name)]
    return architecture.resumed(saved.model.config, preset, given_options), preset


def _write_config(ctx: typer.Context, out: Path, model: ModelConfig, preset: str) -> None:
    """The run's effective configuration, OUT/config.yaml, a file for --config: its options, with the model
    as built (the preset and every dimension; a resumed run's, its checkpoint's). Rank 0 writes it."""
    built = {"preset": preset} | {f.name: getattr(model, f.name) for f in options(Architecture) if f.name != "preset"}
    distributed.on_rank0(lambda: write_text(out / CONFIG_FILE, effective_config(ctx, built)))


def _join_training(device: str | None, out: Path, resume: bool) -> torch.device:
    """The training device; under torchrun, this process joins the others, and rank 0 alone speaks and
    checks --out (it alone writes there)."""
    dev = distributed.init(device)
    err.quiet = not distributed.is_main()
    distributed.on_rank0(lambda: check_out_dir(out, resume))
    if distributed.is_distributed():
        err.print(f"training on {distributed.world_size()} processes; rank 0 validates and writes {out}")
    return dev


@command("train-teacher", config=True)
@with_options(architecture=Architecture, train=TrainConfig)
def train_teacher_cmd(
    ctx: typer.Context,
    data: Data,
    out: Out,
    architecture: Architecture,
    train: TrainConfig,
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
    prepared = PreparedData.open(data)
    model_config, preset = _model_config(ctx, prepared, architecture, out, resume)
    torch.manual_seed(train.seed)
    model = Transformer(model_config)
    with distributed.rank0_first():  # tokenized again, and saved, when not current
        corpus, valid = prepared.corpus("train"), ValidSet.of(prepared, pair)
    if pair is not None:  # ValidSet.of has checked that the data has several pairs, this one among them
        corpus = corpus.subset(prepared.info.pair_rows("train").rows(pair))
    meta = {"role": "teacher", "objective": "label-smoothed cross-entropy"}
    meta |= _data_record(prepared, preset, pair)
    vocabs = prepared.src_vocab, prepared.tgt_vocab
    trainer = Trainer(model, *vocabs, corpus, valid, out, train, dev, None, meta, err)
    err.print(f"teacher: {model.num_parameters():,} parameters, {len(corpus):,} training pairs, device {dev}")
    _write_config(ctx, out, model_config, preset)
    trainer.run(resume)


def _data_record(data: PreparedData, preset: str, pair: str | None = None) -> dict:
    """What a checkpoint records of its data; for multilingual data, the pairs it translates (kdmt translate
    --pair checks them) and whether sources carry their own language's tag."""
    record = {"data": str(data.root), "preset": preset, "src_lang": data.info.src_lang, "tgt_lang": data.info.tgt_lang}
    if data.info.pairs is not None:
        names = [pair] if pair else [p["pair"] for p in data.info.pairs]
        record |= {"pairs": names, "source_tags": data.info.source_tags}
    return record


@command("train-student", config=True)
@with_options(architecture=(Architecture, {"preset": "tiny"}), kd=StudentOptions, train=TrainConfig)
def train_student_cmd(
    ctx: typer.Context,
    data: Data,
    out: Out,
    *,
    kd: StudentOptions,
    architecture: Architecture,
    train: TrainConfig,
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
    if kd.selective_kd and train.valid_bleu_sents == 0:
        raise KdmtError("--selective-kd compares validation BLEU: drop --valid-bleu-sents 0")
    prepared = PreparedData.open(data)
    model_config, preset = _model_config(ctx, prepared, architecture, out, resume)
    with distributed.rank0_first():  # the student's corpus is tokenized once, and saved
        student = build_student(prepared, model_config, kd, train.label_smoothing, train.seed, dev)
        valid = ValidSet.of(prepared, kd.pair)
    n = len(student.corpus)
    meta = {**student.meta, **_data_record(prepared, preset, kd.pair)}
    vocabs = prepared.src_vocab, prepared.tgt_vocab
    trainer = Trainer(
        student.model, *vocabs, student.corpus, valid, out, train, dev, student.objective, meta, err, student.sampler
    )
    if kd.selective_kd:
        err.print("measuring the teachers' validation BLEU, for selective distillation")
        trainer.meta["selective_kd"] = student.measure_teachers(
            lambda checkpoints, pair: distributed.from_rank0(
                trainer.validator.bleu(checkpoints, pair) if distributed.is_main() else None
            )
        )
    err.print(f"student: {student.model.num_parameters():,} parameters, {n:,} training pairs, device {dev}")
    _write_config(ctx, out, model_config, preset)
    trainer.run(resume)
