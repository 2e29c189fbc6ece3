"""Token-based batches with length bucketing, and padding them into tensors."""

from __future__ import annotations

import torch

from kdmt.vocab import PAD


def token_batches(
    src_len: torch.Tensor,
    tgt_len: torch.Tensor,
    max_tokens: int,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Group sentence indices into batches of at most `max_tokens` padded tokens per side.

    Sentences are sorted by length (ties broken at random when a generator is given) so that a batch
    holds similar lengths; the order of the batches is shuffled with the same generator. Without a
    generator, batches come in length order: deterministic, for evaluation.
    """
    n = len(src_len)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    lengths = torch.maximum(src_len, tgt_len)[order]
    order = order[torch.sort(lengths, stable=True).indices]
    longest = torch.maximum(src_len, tgt_len)[order].tolist()
    batches, start, width = [], 0, 0
    for i, length in enumerate(longest):
        width = max(width, length)
        if (i + 1 - start) * width > max_tokens and i > start:
            batches.append(order[start:i])
            start, width = i, length
    if start < n:
        batches.append(order[start:])
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
