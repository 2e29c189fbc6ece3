"""The cross-entropy of sentence pairs under a model, teacher-forced: `kdmt score`, and the backward-model
filter of `kdmt distill --filter-backward` (a model of the other direction scores each distilled pair; the
pairs it finds least likely are dropped, as in Mozilla's translation pipeline).

A pair's score is its per-token cross-entropy: minus the log-probability of the target tokens and EOS given
the source, divided by their number (lower is better). With several checkpoints, the ensemble's
(log-probabilities averaged, as in its search). A pair with a side longer than the model's positions is
not scored: NaN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdmt.batching import pad, token_batches
from kdmt.checkpoint import load_checkpoint
from kdmt.ctranslate2_search import load_ctranslate2
from kdmt.device import resolve_device
from kdmt.engines import is_export
from kdmt.errors import KdmtError
from kdmt.export import SOURCE_SPM, TARGET_SPM, read_record
from kdmt.translate import Progress
from kdmt.vocab import BOS, ENSEMBLE_VOCABULARIES, EOS, Vocab, check_vocabularies


class PairScorer(ABC):
    """Per-token cross-entropy of (source, target) pairs of text."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    max_positions: int
    batch_tokens: int

    @abstractmethod
    def score_ids(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        """The cross-entropy of each pair of token ids (without EOS), in input order; each fits the positions."""

    def score(self, src: list[str], tgt: list[str], progress: Progress | None = None) -> list[float]:
        """The cross-entropy of each pair of lines; NaN where a side does not fit the model's positions."""
        if len(src) != len(tgt):
            raise KdmtError(f"line counts differ: {len(src)} sources, {len(tgt)} targets")
        src_ids, tgt_ids = self.src_vocab.encode(src), self.tgt_vocab.encode(tgt)
        fits = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids)) if max(len(s), len(t)) < self.max_positions]
        out = [math.nan] * len(src)
        for i, ce in zip(fits, self.score_ids([src_ids[i] for i in fits], [tgt_ids[i] for i in fits])):
            out[i] = ce
        if progress:
            progress(len(src))
        return out


class CheckpointScorer(PairScorer):
    """kdmt checkpoints (an ensemble when several), teacher-forced in batches of `batch_tokens` tokens."""

    def __init__(self, paths: list[Path], device: torch.device, batch_tokens: int = 4000):
        checkpoints = [load_checkpoint(p, device) for p in paths]
        first = checkpoints[0]
        for c in checkpoints[1:]:
            check_vocabularies((first.src_vocab, first.tgt_vocab), (c.src_vocab, c.tgt_vocab), ENSEMBLE_VOCABULARIES)
        self.models = [c.model.eval() for c in checkpoints]
        self.src_vocab, self.tgt_vocab = checkpoints[0].src_vocab, checkpoints[0].tgt_vocab
        self.max_positions = min(m.config.max_positions for m in self.models)
        self.batch_tokens, self.device = batch_tokens, device

    @torch.no_grad()
    def score_ids(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        out = [math.nan] * len(src)
        src_len, tgt_len = torch.tensor([len(s) + 1 for s in src]), torch.tensor([len(t) + 1 for t in tgt])
        for batch in token_batches(src_len, tgt_len, self.batch_tokens):
            ids = batch.tolist()
            x = pad([torch.tensor(src[i] + [EOS]) for i in ids]).to(self.device)
            y_in = pad([torch.tensor(tgt[i]) for i in ids], prefix=BOS).to(self.device)
            y_out = pad([torch.tensor(tgt[i] + [EOS]) for i in ids]).to(self.device)
            logp = torch.stack([F.log_softmax(m(x, y_in).float(), dim=-1) for m in self.models]).mean(0)
            token_logp = logp.gather(2, y_out[:, :, None]).squeeze(2)
            n = tgt_len[ids].to(self.device)
            mask = torch.arange(y_out.size(1), device=self.device)[None, :] < n[:, None]
            ce = -(token_logp * mask).sum(1) / n
            for i, value in zip(ids, ce.tolist()):
                out[i] = value
        return out


class CTranslate2Scorer(PairScorer):
    """A CTranslate2 directory written by `kdmt export`, through its Translator.score_batch."""

    def __init__(
        self, directory: Path, device: str = "cpu", threads: int = 0, batch_tokens: int = 4000, device_index: int = 0
    ):
        record = read_record(directory)
        if record is None or record["format"] != "ctranslate2":
            raise KdmtError(f"{directory}: not a CTranslate2 directory written by kdmt export")
        intra = threads or torch.get_num_threads()
        self.translator = load_ctranslate2(directory, device, device_index, intra_threads=intra)
        self.src_vocab, self.tgt_vocab = Vocab.load(directory / SOURCE_SPM), Vocab.load(directory / TARGET_SPM)
        self.src_pieces, self.tgt_pieces = self.src_vocab.pieces(), self.tgt_vocab.pieces()
        self.max_positions, self.batch_tokens = record["config"]["max_positions"], batch_tokens

    def score_ids(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        if not src:
            return []
        results = self.translator.score_batch(
            [[self.src_pieces[t] for t in s] for s in src],  # the model appends EOS
            [[self.tgt_pieces[t] for t in t_] for t_ in tgt],
            max_batch_size=self.batch_tokens,
            batch_type="tokens",
            max_input_length=0,
        )
        return [-float(np.mean(r.log_probs)) for r in results]


def open_scorer(models: list[Path], device: str | None, batch_tokens: int = 4000, threads: int = 0) -> PairScorer:
    """A scorer for checkpoints (an ensemble when several) or one CTranslate2 directory of `kdmt export`."""
    for m in models:
        if not m.exists():
            raise KdmtError(f"{m}: no such model")
    dev = resolve_device(device)
    if any(is_export(m) for m in models):
        if len(models) > 1:
            raise KdmtError("CTranslate2 has no ensembles: give one exported directory, or checkpoints")
        return CTranslate2Scorer(models[0], dev.type, threads, batch_tokens, dev.index or 0)
    return CheckpointScorer(models, dev, batch_tokens)
