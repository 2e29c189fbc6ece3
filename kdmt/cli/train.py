"""kdmt train-teacher and kdmt train-student: a run directory trained from prepared data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, effective_config, err, given
from kdmt.cli.params import Data, Device, with_options
from kdmt.config import CONFIG_FILE
from kdmt.files import write_text
from kdmt.model import Architecture
from kdmt.student import StudentOptions
from kdmt.train import TrainConfig
from kdmt.training_run import train_student, train_teacher

Out = Annotated[Path, typer.Option("--out", "-o", help="Directory for checkpoints and metrics.")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint_last.safetensors.")]


def _given(ctx: typer.Context) -> list[str]:
    """The options given on the command line or in the --config file."""
    return [name for name in ctx.params if given(ctx, name)]


def _config_writer(ctx: typer.Context, out: Path) -> Callable[[dict], None]:
    """What writes the run's OUT/config.yaml: the command's options, with the values the run settled."""
    return lambda built: write_text(out / CONFIG_FILE, effective_config(ctx, built))


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
    args = resume, device, pair, _given(ctx), _config_writer(ctx, out), err
    train_teacher(data, out, architecture, train, *args)


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
    train_student(data, out, kd, architecture, train, resume, device, _given(ctx), _config_writer(ctx, out), err)
