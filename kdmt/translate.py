"""Translating lists of sentences with one checkpoint or an ensemble: tokenize, batch, search, detokenize."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdmt.batching import pad, token_batches
from kdmt.checkpoint import Checkpoint
from kdmt.errors import KdmtError
from kdmt.search import Ensemble, Hypothesis, beam_search, greedy_search
from kdmt.vocab import EOS

Progress = Callable[[int], None]


@dataclass
class SearchOptions:
    beam: int = 5  # 1: greedy search
    lenpen: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_tokens: int = 4000  # source tokens per batch (times the beam during search)
    max_src_tokens: int = 1024  # longer sources are not translated (an empty result)


class Translator:
    """Translates text with the models of one or more checkpoints that share a vocabulary.

    With `dtype` (e.g. torch.bfloat16 on CUDA) the models are converted to it for decoding.
    """

    def __init__(self, checkpoints: list[Checkpoint], options: SearchOptions | None = None, dtype=None):
        first = checkpoints[0]
        key = (first.src_vocab.fingerprint, first.tgt_vocab.fingerprint)
        if any((c.src_vocab.fingerprint, c.tgt_vocab.fingerprint) != key for c in checkpoints[1:]):
            raise KdmtError("the models of an ensemble must share their vocabularies")
        self.models = [c.model.eval() if dtype is None else c.model.eval().to(dtype) for c in checkpoints]
        self.ensemble = Ensemble(self.models)
        self.src_vocab, self.tgt_vocab = first.src_vocab, first.tgt_vocab
        self.options = options or SearchOptions()
        if self.options.beam < 1:
            raise KdmtError("the beam size must be at least 1")
        self.device = next(self.models[0].parameters()).device
        self.max_src_tokens = min([self.options.max_src_tokens] + [m.config.max_positions for m in self.models])

    def search(self, x: Tensor, nbest: int) -> list[list[Hypothesis]]:
        """Decode one padded batch; on a CUDA out-of-memory error, decode its halves instead."""
        o = self.options
        try:
            if o.beam == 1:
                return [[h] for h in greedy_search(self.ensemble, x, o.lenpen, o.max_len_a, o.max_len_b)]
            return beam_search(self.ensemble, x, o.beam, o.lenpen, nbest, o.max_len_a, o.max_len_b)
        except torch.OutOfMemoryError:
            if x.size(0) == 1:
                raise
            if x.is_cuda:
                torch.cuda.empty_cache()
            half = x.size(0) // 2
            return self.search(x[:half], nbest) + self.search(x[half:], nbest)

    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None
    ) -> list[list[Hypothesis]]:
        """The `nbest` best hypotheses for each source (token ids, EOS included), in input order."""
        lengths = torch.tensor([len(s) for s in src])
        out: list[list[Hypothesis]] = [[] for _ in src]
        for batch in token_batches(lengths, lengths, self.options.batch_tokens):
            ids = batch.tolist()
            x = pad([torch.tensor(src[i]) for i in ids]).to(self.device)
            for i, hyps in zip(ids, self.search(x, nbest)):
                out[i] = hyps
            if progress:
                progress(len(ids))
        return out

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, progress: Progress | None = None
    ) -> list[list[tuple[str, float]]]:
        """(translation, score) pairs, best first, for each line. Empty lines, and lines longer than
        `max_src_tokens` tokens, are not translated: their list is empty."""
        encoded = self.src_vocab.encode(lines)
        todo = [
            i for i, (line, ids) in enumerate(zip(lines, encoded)) if line.strip() and len(ids) < self.max_src_tokens
        ]
        results = self.translate_ids([encoded[i] + [EOS] for i in todo], nbest, progress) if todo else []
        out: list[list[tuple[str, float]]] = [[] for _ in lines]
        for i, hyps in zip(todo, results):
            out[i] = list(zip(self.tgt_vocab.decode([h.tokens for h in hyps]), [h.score for h in hyps]))
        if progress and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        return out

    def translate(self, lines: list[str], progress: Progress | None = None) -> list[str]:
        """The best translation of each line; an empty line for an empty (or over-long) one."""
        return [hyps[0][0] if hyps else "" for hyps in self.translate_nbest(lines, 1, progress)]
