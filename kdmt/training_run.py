"""kdmt train-teacher's and train-student's work: this process joining the others, the model of a new or a
resumed run, the data's record in the checkpoints, the run's configuration file, then the trainer's loop."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import torch
from rich.console import Console

from kdmt import distributed
from kdmt.checkpoint import load_checkpoint
from kdmt.config import options
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.model import Architecture, ModelConfig, Transformer
from kdmt.run_dir import LAST, check_out_dir
from kdmt.student import StudentOptions, build_student
from kdmt.train import TrainConfig, Trainer, ValidSet

WriteConfig = Callable[[dict], None]  # writes OUT/config.yaml: the command's options, these values settled


def train_teacher(
    data: Path,
    out: Path,
    architecture: Architecture,
    train: TrainConfig,
    resume: bool = False,
    device: str | None = None,
    pair: str | None = None,
    given: Collection[str] = (),
    write_config: WriteConfig | None = None,
    console: Console | None = None,
) -> None:
    """kdmt train-teacher: a Transformer trained with label-smoothed cross-entropy on the prepared `data` (with
    `pair`, on that pair's sentences alone), into `out`; resumed from its last checkpoint with `resume`
    (`given`: the architecture options given, which must agree with it)."""
    console = console or Console(stderr=True, quiet=True)
    dev = join_training(device, out, resume, console)
    prepared = PreparedData.open(data)
    model_config, preset = run_model(prepared, architecture, out, resume, given)
    torch.manual_seed(train.seed)
    model = Transformer(model_config)
    with distributed.rank0_first():  # tokenized again, and saved, when not current
        corpus, valid = prepared.corpus("train"), ValidSet.of(prepared, pair)
    if pair is not None:  # ValidSet.of has checked that the data has several pairs, this one among them
        corpus = corpus.subset(prepared.info.pair_rows("train").rows(pair))
    meta = {"role": "teacher", "objective": "label-smoothed cross-entropy"}
    meta |= data_record(prepared, preset, pair)
    vocabs = prepared.src_vocab, prepared.tgt_vocab
    trainer = Trainer(model, *vocabs, corpus, valid, out, train, dev, None, meta, console)
    console.print(f"teacher: {model.num_parameters():,} parameters, {len(corpus):,} training pairs, device {dev}")
    _write_config(write_config, out, model_config, preset)
    trainer.run(resume)


def train_student(
    data: Path,
    out: Path,
    kd: StudentOptions,
    architecture: Architecture,
    train: TrainConfig,
    resume: bool = False,
    device: str | None = None,
    given: Collection[str] = (),
    write_config: WriteConfig | None = None,
    console: Console | None = None,
) -> None:
    """kdmt train-student: a student of `kd`'s objectives (kdmt.student.build_student) trained on the prepared
    `data` into `out`, as train_teacher."""
    console = console or Console(stderr=True, quiet=True)
    dev = join_training(device, out, resume, console)
    if kd.selective_kd and train.valid_bleu_sents == 0:
        raise KdmtError("--selective-kd compares validation BLEU: drop --valid-bleu-sents 0")
    prepared = PreparedData.open(data)
    model_config, preset = run_model(prepared, architecture, out, resume, given)
    with distributed.rank0_first():  # the student's corpus is tokenized once, and saved
        student = build_student(prepared, model_config, kd, train.label_smoothing, train.seed, dev)
        valid = ValidSet.of(prepared, kd.pair)
    n = len(student.corpus)
    meta = {**student.meta, **data_record(prepared, preset, kd.pair)}
    vocabs = prepared.src_vocab, prepared.tgt_vocab
    trainer = Trainer(
        student.model,
        *vocabs,
        student.corpus,
        valid,
        out,
        train,
        dev,
        student.objective,
        meta,
        console,
        student.sampler,
    )
    if kd.selective_kd:
        console.print("measuring the teachers' validation BLEU, for selective distillation")
        trainer.meta["selective_kd"] = student.measure_teachers(
            lambda checkpoints, pair: distributed.from_rank0(
                trainer.validator.bleu(checkpoints, pair) if distributed.is_main() else None
            )
        )
    console.print(f"student: {student.model.num_parameters():,} parameters, {n:,} training pairs, device {dev}")
    _write_config(write_config, out, model_config, preset)
    trainer.run(resume)


def run_model(
    data: PreparedData, architecture: Architecture, out: Path, resume: bool, given: Collection[str] = ()
) -> tuple[ModelConfig, str]:
    """The model and its preset: a new run's from the options, for the data's vocabularies; a resumed run's
    from its checkpoint (an architecture option `given` that differs from it is refused)."""
    if not resume:
        sizes = len(data.src_vocab), len(data.tgt_vocab)
        return architecture.config(*sizes, data.info.joint_vocab), architecture.preset
    saved = load_checkpoint(out / LAST)
    preset = saved.meta.get("preset", architecture.preset)
    given_options = [f.name for f in options(Architecture) if f.name in given]
    return architecture.resumed(saved.model.config, preset, given_options), preset


def data_record(data: PreparedData, preset: str, pair: str | None = None) -> dict:
    """What a checkpoint records of its data; for multilingual data, the pairs it translates (kdmt translate
    --pair checks them) and whether sources carry their own language's tag."""
    record = {"data": str(data.root), "preset": preset, "src_lang": data.info.src_lang, "tgt_lang": data.info.tgt_lang}
    if data.info.pairs is not None:
        names = [pair] if pair else [p["pair"] for p in data.info.pairs]
        record |= {"pairs": names, "source_tags": data.info.source_tags}
    return record


def join_training(device: str | None, out: Path, resume: bool, console: Console) -> torch.device:
    """The training device; under torchrun, this process joins the others, and rank 0 alone speaks and
    checks --out (it alone writes there)."""
    dev = distributed.init(device)
    console.quiet = console.quiet or not distributed.is_main()
    distributed.on_rank0(lambda: check_out_dir(out, resume))
    if distributed.is_distributed():
        console.print(f"training on {distributed.world_size()} processes; rank 0 validates and writes {out}")
    return dev


def _write_config(write_config: WriteConfig | None, out: Path, model: ModelConfig, preset: str) -> None:
    """The run's effective configuration, OUT/config.yaml (`write_config`), with the model as built (the preset
    and every dimension; a resumed run's, its checkpoint's). Rank 0 writes it."""
    if write_config is None:
        return
    built = {"preset": preset} | {f.name: getattr(model, f.name) for f in options(Architecture) if f.name != "preset"}
    distributed.on_rank0(lambda: write_config(built))
