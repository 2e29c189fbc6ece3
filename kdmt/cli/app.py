"""The `kdmt` program: its commands, registered in the order `kdmt --help` lists them, and its entry point."""

from __future__ import annotations

import signal

import typer

from kdmt import distributed
from kdmt.cli import checkpoints, distill, evaluate, export, prepare, report, score, soft_targets, train, translate

app = typer.Typer(
    help="Knowledge distillation for neural machine translation: prepare → train-teacher → distill → "
    "train-student → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
COMMANDS = (
    prepare.prepare_cmd,
    train.train_teacher_cmd,
    train.train_student_cmd,
    soft_targets.soft_targets_cmd,
    translate.translate_cmd,
    score.score_cmd,
    distill.distill_cmd,
    evaluate.eval_cmd,
    report.report_cmd,
    export.export_cmd,
    checkpoints.average_cmd,
    checkpoints.convert_checkpoint_cmd,
)
for fn in COMMANDS:
    app.command(fn.command_name)(fn)


def interrupt(signum, frame) -> None:
    """SIGTERM (`kill`, a cluster job's end) stops a command as Ctrl-C does: its temporary files are removed,
    exit code 130 (training saves its state first, see kdmt.signals.stop_requests)."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, interrupt)
    try:
        app()
    finally:
        distributed.leave()
