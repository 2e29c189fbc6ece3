"""A toy translation task (reverse a sequence of letters) and helpers to train a tiny model on it."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from kdmt.batching import Batch
from kdmt.data import TokenizedCorpus, load_corpus, read_parallel
from kdmt.model import Transformer, make_config
from kdmt.prepare import CleanOptions, VocabOptions, prepare
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.translate import Translator
from kdmt.vocab import BOS, EOS, PAD, Vocab

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
        VocabOptions(vocab_size=len(LETTERS) + 4, spm_type="word"),
    )
    return data


def train_toy(
    data: Path, out: Path, resume: bool = False, dropout: float = 0.0, device: str = "cpu", **overrides
) -> tuple[Trainer, dict]:
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
    trainer = Trainer(model, vocab, vocab, train, valid, out, config, torch.device(device))
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


@torch.no_grad()
def search_margin(model: Transformer, src: list[int], beam: int, limit: int, lenpen: float = 1.0, min_len: int = 0):
    """kdmt's beam search (kdmt.search: fairseq's rule; beam 1 is greedy search) replayed for one source
    (ids, EOS included) by teacher forcing, with the margin of its decisions: the smallest gap between two
    candidates whose swap would change what the search does (which candidate becomes final, which lives
    on), and between the best and the second final hypothesis; EOS only after `min_len` tokens (unless at
    the limit). Returns (the best tokens, the margin): an
    engine or a machine whose scores differ from these by less than half the margin decides alike."""
    x, live, finals, margin = torch.tensor([src]), [([], 0.0)], [], math.inf
    for t in range(limit + 1):
        tgt_in = torch.tensor([[BOS] + tokens for tokens, _ in live])
        logp = F.log_softmax(model(x.expand(len(live), -1), tgt_in)[:, -1].float(), dim=-1)
        logp[:, [PAD, BOS]] = -math.inf
        if t < min(min_len, limit):
            logp[:, EOS] = -math.inf
        if t >= limit:
            logp[:, torch.arange(logp.size(1)) != EOS] = -math.inf
        scores = torch.tensor([s for _, s in live])[:, None] + logp
        top = scores.flatten().topk(min(2 * beam + 1, int(torch.isfinite(scores).sum())))
        cands = [(float(s), i // logp.size(1), i % logp.size(1)) for s, i in zip(top.values, top.indices.tolist())]
        if len(cands) > beam and EOS in (cands[beam - 1][2], cands[beam][2]):  # which become final
            margin = min(margin, cands[beam - 1][0] - cands[beam][0])
        finals += [(s / (t + 1) ** lenpen, live[b][0]) for s, b, v in cands[:beam] if v == EOS]
        if len(finals) >= beam or t >= limit:
            break
        lives = [c for c in cands if c[2] != EOS]  # at most `beam` of 2·beam + 1 end in EOS
        margin = min(margin, lives[beam - 1][0] - lives[beam][0])  # which live on
        live = [(live[b][0] + [v], s) for s, b, v in lives[:beam]]
    finals.sort(key=lambda f: -f[0])
    if len(finals) > 1:
        margin = min(margin, finals[0][0] - finals[1][0])
    return finals[0][1], margin


def decided(translator: Translator, lines: list[str], margin: float) -> list[int]:
    """The non-empty lines on which kdmt's search (of `translator`'s first model) decides every step by more
    than `margin` (search_margin), and ends before the length limit (where kdmt forces EOS, CTranslate2 does
    not): on those, scores that differ from kdmt's by less than half the margin give kdmt's translation.
    Near ties are few: at least 90% of the lines count."""
    o, out = translator.options, []
    for i, (line, kdmts) in enumerate(zip(lines, translator.translate(lines))):
        if line.strip():
            src = translator.src_vocab.encode([line])[0] + [EOS]
            limit = translator.max_output_length(len(src))
            tokens, gap = search_margin(translator.models[0], src, o.beam, limit, o.lenpen, o.min_len)
            if gap > margin and len(tokens) < limit:
                assert translator.tgt_vocab.decode([tokens])[0] == kdmts, line  # the replay is kdmt's search
                out.append(i)
    assert len(out) >= 0.9 * sum(bool(line.strip()) for line in lines), "the toy model has too many near ties"
    return out
