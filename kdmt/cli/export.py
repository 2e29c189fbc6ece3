"""kdmt export: a checkpoint as a CTranslate2 or Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err
from kdmt.evaluate import size_on_disk
from kdmt.export import export_checkpoint


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
