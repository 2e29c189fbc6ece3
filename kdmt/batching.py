"""Token-based batches with length bucketing, and the padded tensors of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdmt.data import TokenizedCorpus
from kdmt.vocab import BOS, PAD

SORT_CHUNK = 1 << 18  # sentences sorted at a time: the sort's temporaries are this size, not the corpus's


def index_dtype(n: int) -> torch.dtype:
    """The dtype of indices into `n` sentences: int32, unless they do not fit."""
    return torch.int32 if n < 2**31 else torch.int64


class BatchPlan(Sequence[Tensor]):
    """Batches of sentence indices as views of one index tensor: batch k is order[bounds[j] : bounds[j + 1]],
    j the k-th of `sequence` (or k itself without one), 4 bytes a sentence."""

    def __init__(self, order: Tensor, bounds: np.ndarray, sequence: np.ndarray | None):
        self.order, self.bounds, self.sequence = order, bounds, sequence

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k: int) -> Tensor:  # type: ignore[override]
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} of {len(self)}")
        j = k if self.sequence is None else int(self.sequence[k])
        return self.order[int(self.bounds[j]) : int(self.bounds[j + 1])]


def token_batches(
    src_len: Tensor,
    tgt_len: Tensor,
    max_tokens: int,
    generator: torch.Generator | None = None,
    rows: Tensor | None = None,
) -> BatchPlan:
    """Group sentence indices into batches of at most `max_tokens` padded tokens per side: the sentences
    `rows` (indices into the lengths; repeats allowed), or all of them.

    Sentences are sorted by length (ties broken at random when a generator is given) so that a batch
    holds similar lengths; the order of the batches is shuffled with the same generator. Without a
    generator, batches come in length order: deterministic, for evaluation. A batch takes sentences in
    that order while they fit (one at least); the loop runs once a batch, not once a sentence.
    """
    n = len(src_len) if rows is None else len(rows)
    order, counts = sort_by_length(_drawn(n, len(src_len), generator, rows).numpy(), src_len.numpy(), tgt_len.numpy())
    longest = np.repeat(np.arange(len(counts), dtype=np.int32), counts)  # of the sorted sentences
    bounds, start = [0], 0
    while start < n:
        # sorted: a batch's width is its last sentence's length, so c sentences fit while c·longest[start+c-1]
        # <= max_tokens, true up to some c and false after; no more than max_tokens // longest[start] can
        window = longest[start : start + max(1, max_tokens // max(int(longest[start]), 1))]
        fits = np.arange(1, len(window) + 1) * window <= max_tokens
        start += max(1, int(fits.sum()))
        bounds.append(start)
    sequence = torch.randperm(len(bounds) - 1, generator=generator).numpy() if generator is not None else None
    return BatchPlan(torch.from_numpy(order), np.array(bounds, dtype=np.int64), sequence)


def _drawn(n: int, sentences: int, generator: torch.Generator | None, rows: Tensor | None) -> Tensor:
    """The `n` sentences to batch, in random order with a generator: `rows`, or all `sentences`."""
    dtype = index_dtype(sentences)
    order = (
        torch.randperm(n, generator=generator, dtype=dtype) if generator is not None else torch.arange(n, dtype=dtype)
    )
    return order if rows is None else rows.to(dtype)[order]


def sort_by_length(rows: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`rows` stably sorted by their longer side, and how many rows have each length: a counting sort, a
    chunk of SORT_CHUNK rows at a time, so that only the result is the size of `rows`."""
    top = int(max(src_len.max(initial=0), tgt_len.max(initial=0)))
    pieces = range(0, len(rows), SORT_CHUNK)
    counts = np.zeros(top + 1, dtype=np.int64)
    for i in pieces:
        counts += np.bincount(_longest(rows[i : i + SORT_CHUNK], src_len, tgt_len), minlength=top + 1)
    cursor = np.cumsum(counts) - counts  # where the next row of each length goes
    out = np.empty_like(rows)
    for i in pieces:
        chunk = rows[i : i + SORT_CHUNK]
        key = _longest(chunk, src_len, tgt_len)
        s = np.argsort(key, kind="stable")
        key = key[s]
        here = np.bincount(key, minlength=top + 1)
        first = np.cumsum(here) - here  # where each length starts among the chunk's sorted rows
        out[cursor[key] + np.arange(len(key)) - first[key]] = chunk[s]
        cursor += here
    return out, counts


def _longest(rows: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray) -> np.ndarray:
    return np.maximum(src_len[rows], tgt_len[rows])


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
