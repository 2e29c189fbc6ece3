"""Token batches: each fits its budget and takes sentences in length order while they fit, as the plain
sentence-by-sentence greedy rule does; every sentence is in one batch."""

import hashlib

import pytest
import torch

from kdmt.batching import token_batches
from kdmt.data import load_corpus
from kdmt.model import Transformer, make_config
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.vocab import Vocab


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


def test_batches_of_rows_sorted_a_chunk_at_a_time(monkeypatch):
    # the rows of an epoch (kept pairs, or a sampler's draw with repeats) sorted in several chunks: the same
    # batches as the rule applied to those rows' lengths, as indices into the corpus
    monkeypatch.setattr("kdmt.batching.SORT_CHUNK", 97)
    g = torch.Generator().manual_seed(1)
    src_len, tgt_len = torch.randint(1, 40, (2000,), generator=g), torch.randint(1, 40, (2000,), generator=g)
    rows = torch.cat([torch.arange(0, 2000, 3), torch.arange(500, 900)]).to(torch.int32)
    plan = token_batches(src_len.int(), tgt_len.int(), 100, torch.Generator().manual_seed(3), rows)
    expected = greedy(src_len[rows], tgt_len[rows], 100, 3)
    assert [b.tolist() for b in plan] == [rows[b].tolist() for b in expected]
    assert plan.order.dtype == torch.int32 and plan.order.shape == rows.shape  # 4 bytes a sentence
    assert len(token_batches(src_len[:0], tgt_len[:0], 100)) == 0


def plan_digest(batches) -> str:
    """A hash of a sequence of batches: each batch's sentence indices, in order, and where it ends."""
    h = hashlib.sha256()
    for batch in batches:
        h.update(batch.to(torch.int64).numpy().tobytes() + b"|")
    return h.hexdigest()[:16]


def test_training_plan_is_the_one_of_before(toy_data, tmp_path):
    # pinned from the plan of commit c141dfa (a list of int64 tensors): the same batches, in the same order,
    # for the same seed, over the mapped corpus, with pairs skipped by --max-len
    vocab = Vocab.load(toy_data / "spm.model")
    train = load_corpus(toy_data / "train.src", toy_data / "train.tgt", vocab, vocab, toy_data / "train")
    config = TrainConfig(max_tokens=60, max_steps=1, max_len=8, seed=5)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny"))
    trainer = Trainer(model, vocab, vocab, train, ValidSet(train, [], []), tmp_path, config, torch.device("cpu"))
    assert 0 < trainer.data.skipped_long < len(train)
    digests = [plan_digest(trainer.data.epoch_batches(epoch)) for epoch in (0, 1)]
    assert digests == ["4072a9ea4c7290a5", "3e56e0ee8999c438"]
