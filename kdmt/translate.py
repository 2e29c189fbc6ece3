"""Translating lists of sentences with one checkpoint or an ensemble: tokenize, batch, search, detokenize."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdmt.batching import pad, token_batches
from kdmt.checkpoint import Checkpoint
from kdmt.errors import KdmtError
from kdmt.search import Ensemble, beam_search, greedy_search
from kdmt.vocab import EOS


@dataclass
class SearchOptions:
    beam: int = 5  # 1: greedy search
    lenpen: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_tokens: int = 4000  # source tokens per batch (times the beam during search)


class Translator:
    """Translates text with the models of one or more checkpoints that share a vocabulary."""

    def __init__(self, checkpoints: list[Checkpoint], options: SearchOptions | None = None):
        first = checkpoints[0]
        for c in checkpoints[1:]:
            if (c.src_vocab.fingerprint, c.tgt_vocab.fingerprint) != (
                first.src_vocab.fingerprint,
                first.tgt_vocab.fingerprint,
            ):
                raise KdmtError("the models of an ensemble must share their vocabularies")
        self.models = [c.model.eval() for c in checkpoints]
        self.ensemble = Ensemble(self.models)
        self.src_vocab, self.tgt_vocab = first.src_vocab, first.tgt_vocab
        self.options = options or SearchOptions()
        self.device = next(self.models[0].parameters()).device
        self.max_src_tokens = min(m.config.max_positions for m in self.models)

    def translate_ids(self, src: list[list[int]], progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Best hypothesis (token ids) for each source (token ids, EOS included), in input order."""
        o = self.options
        lengths = torch.tensor([len(s) for s in src])
        out: list[list[int]] = [[] for _ in src]
        for batch in token_batches(lengths, lengths, o.batch_tokens):
            ids = batch.tolist()
            x = pad([torch.tensor(src[i]) for i in ids]).to(self.device)
            if o.beam == 1:
                hyps = greedy_search(self.ensemble, x, o.max_len_a, o.max_len_b)
            else:
                hyps = [
                    h[0].tokens for h in beam_search(self.ensemble, x, o.beam, o.lenpen, 1, o.max_len_a, o.max_len_b)
                ]
            for i, h in zip(ids, hyps):
                out[i] = h
            if progress:
                progress(len(ids))
        return out

    def translate(self, lines: list[str], progress: Callable[[int], None] | None = None) -> list[str]:
        """Detokenized translations of `lines`, in order; an empty line translates to an empty line."""
        todo = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.src_vocab.encode([lines[i] for i in todo])
        src = [ids[: self.max_src_tokens - 1] + [EOS] for ids in encoded]
        hyps = self.tgt_vocab.decode(self.translate_ids(src, progress)) if src else []
        out = [""] * len(lines)
        for i, h in zip(todo, hyps):
            out[i] = h
        if progress and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        return out
