"""kdmt soft-targets: the teachers' top-k log-probabilities stored for offline word-level KD."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdmt.cache import file_identity
from kdmt.cli.common import command, err, progress_console
from kdmt.cli.params import BatchTokens, Data, Device, field_option
from kdmt.data import PreparedData
from kdmt.distill import DistillOptions
from kdmt.distributed import local_device
from kdmt.errors import KdmtError
from kdmt.languages import PairRows, per_pair
from kdmt.progress import ProgressLine
from kdmt.soft_targets import SoftTargetSettings, compute_soft_targets
from kdmt.student import StudentOptions, load_teachers, student_corpus
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
    prepared = PreparedData.open(data)
    dev = local_device(device)
    pairs = [p["pair"] for p in prepared.info.pairs] if prepared.info.pairs else None
    paths = per_pair(teacher, pairs, "--teacher PAIR=CHECKPOINT") if pairs else teacher
    if pairs and (teacher_weight or not paths):
        raise KdmtError("several pairs: give one --teacher PAIR=CHECKPOINT for each pair, and no --teacher-weight")
    teachers = load_teachers(prepared, paths, pairs or [], dev, topk)
    corpus, record = student_corpus(prepared, distilled, ref_share, seed, fallback_ref)
    weights = teacher_weight or [1.0] * len(teachers)
    if len(weights) != len(teachers):
        raise KdmtError("give one --teacher-weight per teacher")
    names = [str(p) for p in teacher]  # several pairs: PAIR=CHECKPOINT, which says how sentences were routed
    identity = file_identity([str(p) for p in paths])
    settings = SoftTargetSettings(names, weights, topk, batch_tokens, shard_size, inputs=identity)
    routes = PairRows(pairs, record["pair_rows"]) if pairs else None
    shards = -(-len(corpus) // shard_size)
    with ProgressLine(progress_console(), "soft targets", len(corpus), "sent", transient=True) as progress:

        def shard_done(index: int) -> None:
            progress.update(progress.completed, f"shard {index + 1} of {shards} written")

        store = compute_soft_targets(
            [c.model for _, c in teachers], corpus, settings, out, progress.advance, shard_done, routes
        )
    if store is None:
        err.print(f"no shard left for this process; the last process to finish writes {out}", soft_wrap=True)
        return
    err.print(f"wrote the top-{topk} soft targets of {len(corpus):,} sentences to {out}", soft_wrap=True)
