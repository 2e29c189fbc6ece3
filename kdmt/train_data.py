"""What training reads: the pairs it takes, each epoch's batch plan, and this process's batches of it.

An epoch's plan is a function of the seed and the epoch alone, so a resumed run replays it from its saved
position (epoch, batch_in_epoch). Under torchrun the plan is the same on every rank; of every N consecutive
batches (N processes), rank r takes the r-th.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from kdmt.batching import Batch, BatchPlan, index_dtype, make_batch, token_batches
from kdmt.data import TokenizedCorpus
from kdmt.errors import KdmtError
from kdmt.languages import PairSampler
from kdmt.run_state import RunState


def within(corpus: TokenizedCorpus, max_len: int) -> Tensor:
    """Which pairs of `corpus` training and validation take: those of at most `max_len` tokens on either
    side (a bool per pair)."""
    return torch.maximum(corpus.src_len, corpus.tgt_len) <= max_len


class TrainData:
    """The pairs of `corpus` within `max_len` tokens, batched by --max-tokens, an epoch's sentences drawn by
    `sampler` when several language pairs have a temperature."""

    def __init__(
        self,
        corpus: TokenizedCorpus,
        max_tokens: int,
        max_len: int,
        seed: int,
        sampler: PairSampler | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.corpus, self.max_tokens, self.seed, self.sampler = corpus, max_tokens, seed, sampler
        self.rank, self.world_size = rank, world_size
        keep = within(corpus, max_len)
        self.indices = keep.nonzero().squeeze(1).to(index_dtype(len(corpus)))
        self.skipped_long = int((~keep).sum())
        if len(self.indices) == 0:
            raise KdmtError(f"no training pair is within --max-len {max_len} tokens")
        self._plan: tuple[int, BatchPlan] | None = None  # (epoch, its batches): see epoch_batches

    def check_max_tokens(self) -> None:
        """Refuse batches too small for the longest pair taken."""
        longest = torch.maximum(self.corpus.src_len, self.corpus.tgt_len)[self.indices].max()
        if self.max_tokens < (need := int(longest)):
            raise KdmtError(
                f"--max-tokens {self.max_tokens} is smaller than the longest training pair ({need} tokens): "
                "raise it, or lower --max-len"
            )

    def epoch_batches(self, epoch: int) -> BatchPlan:
        """The batches of an epoch. The last epoch's plan is kept; its batches are views of one tensor of
        sentence indices."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        self._plan = None  # the old plan is freed before the new one is made
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        idx = self.indices if self.sampler is None else self.sampler(self.indices, g)
        plan = token_batches(self.corpus.src_len, self.corpus.tgt_len, self.max_tokens, g, idx)
        self._plan = epoch, plan
        return plan

    def plan(self, state: RunState) -> Iterator[Tensor]:
        """The batches (sentence indices) of the epochs' plans from `state`'s position on, forever; the
        position advances as they are taken."""
        while True:
            batches = self.epoch_batches(state.epoch)
            while state.batch_in_epoch < len(batches):
                state.batch_in_epoch += 1
                yield batches[state.batch_in_epoch - 1]
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    def batches(self, state: RunState) -> Iterator[Batch]:
        """This rank's batches: of every N consecutive batches of the plan (N processes), the rank-th."""
        plan = self.plan(state)
        while True:
            group = [next(plan) for _ in range(self.world_size)]
            yield make_batch(self.corpus, group[self.rank])
