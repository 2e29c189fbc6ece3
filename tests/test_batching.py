"""Token batches: each fits its budget and takes sentences in length order while they fit, as the plain
sentence-by-sentence greedy rule does; every sentence is in one batch."""

import pytest
import torch

from kdmt.batching import token_batches


def greedy(src_len: torch.Tensor, tgt_len: torch.Tensor, max_tokens: int, seed: int | None) -> list[list[int]]:
    """The rule, a sentence at a time: the reference."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    n = len(src_len)
    order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    order = order[torch.sort(torch.maximum(src_len, tgt_len)[order], stable=True).indices]
    longest = torch.maximum(src_len, tgt_len)[order].tolist()
    batches, start, width = [], 0, 0
    for i, length in enumerate(longest):
        width = max(width, length)
        if (i + 1 - start) * width > max_tokens and i > start:
            batches.append(order[start:i].tolist())
            start, width = i, length
    if start < n:
        batches.append(order[start:].tolist())
    if g is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


@pytest.mark.parametrize("max_tokens", [1, 7, 64, 1000])
@pytest.mark.parametrize("seed", [None, 3])
def test_batches_follow_the_greedy_rule(max_tokens, seed):
    g = torch.Generator().manual_seed(1)
    src_len, tgt_len = torch.randint(1, 40, (2000,), generator=g), torch.randint(1, 40, (2000,), generator=g)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = [b.tolist() for b in token_batches(src_len, tgt_len, max_tokens, generator)]
    assert batches == greedy(src_len, tgt_len, max_tokens, seed)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    width = torch.maximum(src_len, tgt_len)
    assert all(len(b) == 1 or len(b) * int(width[b].max()) <= max_tokens for b in batches)
