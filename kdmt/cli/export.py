"""kdmt export: a checkpoint as a CTranslate2 or Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err
from kdmt.cli.params import with_options
from kdmt.evaluate import size_on_disk
from kdmt.export import ExportOptions, export_checkpoint


@command("export")
@with_options(options=ExportOptions)
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model directory to write.")],
    *,
    options: ExportOptions,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a checkpoint as a CTranslate2 or Hugging Face model directory that translates on its own.

    Example: kdmt export work/student/checkpoint_best.safetensors -o work/student-int8 --quantization int8
    """
    record = export_checkpoint(checkpoint, out, options, force)
    size = size_on_disk(out) / 1e6
    err.print(
        f"exported {checkpoint} to {out} ({options.format}, {record['quantization']}, {size:.1f} MB)", soft_wrap=True
    )
