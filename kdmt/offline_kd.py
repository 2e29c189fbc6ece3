"""kdmt soft-targets' work: the teachers' top-k distributions of a student's training corpus, computed once
and stored (kdmt.soft_targets), for offline word-level KD (train-student --soft-targets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdmt.cache import file_identity
from kdmt.data import PreparedData, TokenizedCorpus
from kdmt.distributed import local_device
from kdmt.errors import KdmtError
from kdmt.languages import PairRows, per_pair
from kdmt.model import Transformer
from kdmt.soft_targets import SoftTargetSettings, SoftTargetStore, compute_soft_targets
from kdmt.student import load_teachers, student_corpus


@dataclass
class SoftTargetsRun:
    """The soft targets of one student corpus, ready to be computed (run)."""

    teachers: list[Transformer]  # their models
    corpus: TokenizedCorpus
    settings: SoftTargetSettings
    out: Path
    routes: PairRows | None

    def run(
        self, progress: Callable[[int], None] | None = None, after_shard: Callable[[int], None] | None = None
    ) -> SoftTargetStore | None:
        """Compute and store them (compute_soft_targets); None while other processes write the last shards."""
        return compute_soft_targets(
            self.teachers, self.corpus, self.settings, self.out, progress, after_shard, self.routes
        )


def open_soft_targets(
    data: Path,
    out: Path,
    teachers: list[Path],
    weights: list[float] | None,
    distilled: list[str] | None,
    ref_share: float,
    fallback_ref: bool,
    topk: int,
    seed: int,
    batch_tokens: int,
    shard_size: int,
    device: str | None = None,
) -> SoftTargetsRun:
    """kdmt soft-targets: the teachers (for several pairs, one PAIR=CHECKPOINT each), their weights, and the
    student corpus of `distilled`/`ref_share`/`seed` (kdmt.student.student_corpus), as train-student reads
    them."""
    prepared = PreparedData.open(data)
    pairs = [p["pair"] for p in prepared.info.pairs] if prepared.info.pairs else None
    paths = per_pair(teachers, pairs, "--teacher PAIR=CHECKPOINT") if pairs else teachers
    if pairs and (weights or not paths):
        raise KdmtError("several pairs: give one --teacher PAIR=CHECKPOINT for each pair, and no --teacher-weight")
    loaded = load_teachers(prepared, paths, pairs or [], local_device(device), topk)
    corpus, record = student_corpus(prepared, distilled, ref_share, seed, fallback_ref)
    weights = weights or [1.0] * len(loaded)
    if len(weights) != len(loaded):
        raise KdmtError("give one --teacher-weight per teacher")
    names = [str(p) for p in teachers]  # several pairs: PAIR=CHECKPOINT, which says how sentences were routed
    identity = file_identity([str(p) for p in paths])
    settings = SoftTargetSettings(names, weights, topk, batch_tokens, shard_size, inputs=identity)
    routes = PairRows(pairs, record["pair_rows"]) if pairs else None
    return SoftTargetsRun([c.model for _, c in loaded], corpus, settings, out, routes)
