"""A toy translation task (reverse a sequence of letters) and helpers to train a tiny model on it."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from kdmt.batching import Batch
from kdmt.data import TokenizedCorpus, load_corpus, read_parallel
from kdmt.model import Transformer, make_config
from kdmt.prepare import CleanOptions, VocabOptions, prepare
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.vocab import BOS, PAD, Vocab

LETTERS = "abcdefghij"


def toy_pairs(n: int, seed: int, min_len: int = 3, max_len: int = 8) -> tuple[list[str], list[str]]:
    """Source: random letters; target: the same letters reversed."""
    rng = random.Random(seed)
    src = [" ".join(rng.choices(LETTERS, k=rng.randint(min_len, max_len))) for _ in range(n)]
    return src, [" ".join(reversed(s.split())) for s in src]


def prepare_toy(root: Path, n_train: int = 3000) -> Path:
    """A prepared data directory for the toy task (word-level sentencepiece: one piece per letter)."""
    data = root / "data"
    prepare(
        data,
        "src",
        "tgt",
        zip(*toy_pairs(n_train, seed=1)),
        zip(*toy_pairs(100, seed=2)),
        CleanOptions(dedup=False),
        VocabOptions(size=len(LETTERS) + 4, model_type="word"),
    )
    return data


def train_toy(data: Path, out: Path, resume: bool = False, dropout: float = 0.0, **overrides) -> tuple[Trainer, dict]:
    """Train a tiny model on the toy task through the real trainer."""
    vocab = Vocab.load(data / "spm.model")
    settings = dict(
        max_tokens=1500,
        lr=1e-3,
        warmup=100,
        max_steps=600,
        valid_interval=200,
        valid_bleu_sents=0,
        log_interval=1,
        label_smoothing=0.0,
        seed=3,
    )
    config = TrainConfig(**{**settings, **overrides})
    torch.manual_seed(config.seed)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny", dropout=dropout))
    train = load_corpus(data / "train.src", data / "train.tgt", vocab, vocab, data / "train")
    valid = ValidSet(
        load_corpus(data / "valid.src", data / "valid.tgt", vocab, vocab),
        *read_parallel(data / "valid.src", data / "valid.tgt"),
    )
    trainer = Trainer(model, vocab, vocab, train, valid, out, config, torch.device("cpu"))
    return trainer, trainer.run(resume)


def toy_setup(data: Path) -> tuple[Vocab, TokenizedCorpus, ValidSet]:
    """The toy task's vocabulary, training corpus and validation set."""
    vocab = Vocab.load(data / "spm.model")
    train = load_corpus(data / "train.src", data / "train.tgt", vocab, vocab)
    valid = ValidSet(
        load_corpus(data / "valid.src", data / "valid.tgt", vocab, vocab),
        *read_parallel(data / "valid.src", data / "valid.tgt"),
    )
    return vocab, train, valid


def make_batch_from(target: torch.Tensor) -> Batch:
    """A batch with the given (PAD-padded) targets and random sources, for the objectives alone."""
    src = torch.randint(4, 11, (target.size(0), 4))
    tgt_in = torch.cat([torch.full((target.size(0), 1), BOS), target[:, :-1]], dim=1)
    return Batch(src, tgt_in, target, int((target != PAD).sum()))
