"""kdmt soft-targets: the teachers' top-k log-probabilities stored for offline word-level KD."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err, run_sharded
from kdmt.cli.params import BatchTokens, Data, Device, field_option
from kdmt.distill import DistillOptions
from kdmt.offline_kd import open_soft_targets
from kdmt.student import StudentOptions
from kdmt.train import TrainConfig
from kdmt.translate import BATCH_TOKENS


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
    teacher_weight: field_option(StudentOptions, "teacher_weight") = None,  # as train-student's
    distilled: field_option(StudentOptions, "distilled") = None,
    ref_share: field_option(StudentOptions, "ref_share") = 0.0,
    fallback_ref: field_option(StudentOptions, "fallback_ref") = False,
    topk: field_option(StudentOptions, "topk") = 8,
    seed: field_option(TrainConfig, "seed") = TrainConfig.seed,
    batch_tokens: BatchTokens = BATCH_TOKENS,
    shard_size: field_option(DistillOptions, "shard_size") = 10000,
    device: Device = None,
) -> None:
    """Store the teachers' top-k log-probabilities for every target token of a student's training
    corpus, for offline word-level KD (train-student --soft-targets): int32 ids and float16 log-probs in
    memory-mapped arrays (about 6·K bytes a token) that training reads lazily.

    Processes started with the same arguments share the shards (torchrun --nproc-per-node N -m kdmt
    soft-targets ..., or the command started several times on one machine); a killed run resumes. Until the run
    finishes its shards are kept in .kdmt-work/ in OUT's folder (hidden, removed when the run is complete).

    Example: kdmt soft-targets -t work/teacher/checkpoint_best.safetensors --data work/data -o work/soft.json --topk 8

    Multilingual data: one teacher per pair, -t de-en=CKPT -t fr-en=CKPT; each sentence's from its pair's.
    """
    args = teacher_weight, distilled, ref_share, fallback_ref, topk, seed, batch_tokens, shard_size, device
    run = open_soft_targets(data, out, teacher, *args)
    n = len(run.corpus)
    if run_sharded("soft targets", n, shard_size, run.run, out) is None:
        return
    err.print(f"wrote the top-{topk} soft targets of {n:,} sentences to {out}", soft_wrap=True)
