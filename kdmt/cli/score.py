"""kdmt score: each sentence pair's cross-entropy under a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import torch
import typer

from kdmt.cli.common import command, err
from kdmt.cli.params import BatchTokens, Device, Threads
from kdmt.data import stream_parallel
from kdmt.files import write_lines
from kdmt.scoring import open_scorer
from kdmt.translate import BATCH_TOKENS


@command("score")
def score_cmd(
    model: Annotated[
        list[Path],
        typer.Option("--model", "-m", help="Checkpoint (repeat for an ensemble), or a CTranslate2 export directory."),
    ],
    src: Annotated[Path, typer.Option(help="Source side of the pairs (the model's source language).")],
    tgt: Annotated[Path, typer.Option(help="Target side of the pairs, line-aligned with --src.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    batch_tokens: BatchTokens = BATCH_TOKENS,
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
