"""kdmt average and kdmt convert-checkpoint: checkpoint files into checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.checkpoint import average_checkpoints, convert_checkpoint
from kdmt.cli.common import command, err
from kdmt.errors import KdmtError


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
