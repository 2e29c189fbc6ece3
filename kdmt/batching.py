"""Token-based batches with length bucketing, and the padded tensors of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdmt.data import TokenizedCorpus
from kdmt.vocab import BOS, PAD


def token_batches(
    src_len: torch.Tensor,
    tgt_len: torch.Tensor,
    max_tokens: int,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Group sentence indices into batches of at most `max_tokens` padded tokens per side.

    Sentences are sorted by length (ties broken at random when a generator is given) so that a batch
    holds similar lengths; the order of the batches is shuffled with the same generator. Without a
    generator, batches come in length order: deterministic, for evaluation. A batch takes sentences in
    that order while they fit (one at least); the loop runs once a batch, not once a sentence.
    """
    n = len(src_len)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    lengths = torch.maximum(src_len, tgt_len)[order]
    order = order[torch.sort(lengths, stable=True).indices]
    longest = torch.maximum(src_len, tgt_len)[order].numpy()
    batches, start = [], 0
    while start < n:
        # sorted: a batch's width is its last sentence's length, so c sentences fit while c·longest[start+c-1]
        # <= max_tokens, true up to some c and false after; no more than max_tokens // longest[start] can
        window = longest[start : start + max(1, max_tokens // max(int(longest[start]), 1))]
        fits = np.arange(1, len(window) + 1) * window <= max_tokens
        end = start + max(1, int(fits.sum()))
        batches.append(order[start:end])
        start = end
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def pad(seqs: list[torch.Tensor], prefix: int | None = None) -> torch.Tensor:
    """Right-pad 1-D id tensors into a (batch, length) int64 tensor, optionally prefixing a token."""
    if prefix is not None:
        seqs = [torch.cat([torch.tensor([prefix], dtype=s.dtype), s]) for s in seqs]
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids, EOS-terminated, PAD-padded
    tgt_in: Tensor  # (B, T) BOS + target
    tgt_out: Tensor  # (B, T) target + EOS
    ntokens: int  # target tokens (not PAD)
    indices: Tensor | None = None  # the sentences' positions in their corpus

    def to(self, device: torch.device) -> Batch:
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.ntokens, self.indices)


def make_batch(corpus: TokenizedCorpus, indices: Tensor) -> Batch:
    """The padded tensors of the sentence pairs `indices` of a corpus, for teacher forcing."""
    pairs = [corpus.pair(i) for i in indices.tolist()]
    src = pad([s for s, _ in pairs])
    tgt_in = pad([t[:-1] for _, t in pairs], prefix=BOS)
    tgt_out = pad([t for _, t in pairs])
    return Batch(src, tgt_in, tgt_out, int(sum(len(t) for _, t in pairs)), indices)
