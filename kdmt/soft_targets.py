"""Offline word-level KD: the teachers' top-k log-probabilities for every target token of a corpus,
computed once with teacher forcing and stored compactly (int32 token ids, float16 log-probs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from kdmt.batching import make_batch, token_batches
from kdmt.data import TokenizedCorpus
from kdmt.errors import KdmtError
from kdmt.files import atomic_path
from kdmt.model import Transformer


def teacher_distribution(logits: list[Tensor], weights: list[float], temperature: float) -> Tensor:
    """The teachers' soft targets: the weighted average of softmax(logits / T), (B, T, V), float32."""
    total = sum(weights)
    return sum(w / total * F.softmax(x.float() / temperature, dim=-1) for w, x in zip(weights, logits))


@dataclass
class SoftTargetStore:
    index: Tensor  # (target tokens of the corpus, k) int32
    logprobs: Tensor  # (target tokens of the corpus, k) float16, at temperature 1
    offsets: Tensor  # first row of each sentence
    lengths: Tensor  # target tokens of each sentence (EOS included)
    key: str  # the fingerprint of the corpus
    teachers: list[str]

    def lookup(self, sentences: Tensor, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Top-k ids and log-probs of a batch's sentences, (B, width, k), padded with id 0 and log-prob 0."""
        k = self.index.size(1)
        index = torch.zeros(len(sentences), width, k, dtype=torch.int64)
        logprobs = torch.zeros(len(sentences), width, k, dtype=torch.float32)
        for row, i in enumerate(sentences.tolist()):
            start, n = int(self.offsets[i]), int(self.lengths[i])
            index[row, :n] = self.index[start : start + n]
            logprobs[row, :n] = self.logprobs[start : start + n].float()
        return index.to(device), logprobs.to(device)

    def save(self, path: Path) -> None:
        state = {
            "format": "kdmt-soft-targets-1",
            "index": self.index,
            "logprobs": self.logprobs,
            "lengths": self.lengths,
            "key": self.key,
            "teachers": self.teachers,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Path) -> SoftTargetStore:
        if not path.is_file():
            raise KdmtError(f"{path}: no such file")
        try:
            s = torch.load(path, weights_only=True)
            assert s["format"] == "kdmt-soft-targets-1"
            lengths = s["lengths"]
            return cls(s["index"], s["logprobs"], torch.cumsum(lengths, 0) - lengths, lengths, s["key"], s["teachers"])
        except Exception:
            raise KdmtError(f"{path}: not a kdmt soft-targets file") from None


@torch.no_grad()
def compute_soft_targets(
    teachers: list[Transformer],
    weights: list[float],
    corpus: TokenizedCorpus,
    topk: int,
    teacher_names: list[str],
    batch_tokens: int = 4000,
    progress: Callable[[int], None] | None = None,
) -> SoftTargetStore:
    """Teacher-force the teachers over the corpus and keep the top-k of their averaged distribution."""
    device = next(teachers[0].parameters()).device
    index = torch.zeros(int(corpus.tgt_len.sum()), topk, dtype=torch.int32)
    logprobs = torch.zeros(int(corpus.tgt_len.sum()), topk, dtype=torch.float16)
    lengths = torch.maximum(corpus.src_len, corpus.tgt_len)
    for batch in token_batches(lengths, lengths, batch_tokens):
        b = make_batch(corpus, batch).to(device)
        probs = teacher_distribution([t(b.src, b.tgt_in) for t in teachers], weights, 1.0)
        top, ids = probs.topk(topk, dim=-1)
        for row, i in enumerate(batch.tolist()):
            start, n = int(corpus.tgt_off[i]), int(corpus.tgt_len[i])
            index[start : start + n] = ids[row, :n].int().cpu()
            logprobs[start : start + n] = top[row, :n].log().half().cpu()
        if progress:
            progress(len(batch))
    return SoftTargetStore(index, logprobs, corpus.tgt_off, corpus.tgt_len, corpus.fingerprint(), teacher_names)
