"""Translating lists of sentences: tokenize, batch, search, detokenize.

`TextTranslator` holds what every engine shares (text in, candidates out, the length limits); an engine
implements `translate_ids`: `Translator` with kdmt's own search over one checkpoint or an ensemble,
kdmt.engines.CTranslate2Translator with an exported CTranslate2 model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import groupby

import torch
from torch import Tensor

from kdmt.batching import pad, token_batches
from kdmt.checkpoint import Checkpoint
from kdmt.config import option
from kdmt.languages import tag_ids
from kdmt.options import COUNT, NONNEGATIVE, NONNEGATIVE_INT
from kdmt.search import Ensemble, Hypothesis, Sampling, beam_search, greedy_search, max_lengths, sample_search
from kdmt.selection import best_text
from kdmt.vocab import ENSEMBLE_VOCABULARIES, EOS, Vocab, check_vocabularies

Progress = Callable[[int], None]
BATCH_TOKENS = 4000  # source tokens per batch, of search and of score and soft-targets


@dataclass
class Candidate:
    """A translation with its score, and its length in target tokens."""

    text: str
    score: float | None  # None: a teacher command's translation, which has none
    length: int  # target tokens, without EOS (words, for a teacher command's: kdmt.filters.word_length)


@dataclass
class SearchOptions:
    """How the translations are searched for: the search options of translate, eval and distill."""

    beam: int = option(5, "Beam size (1: greedy search).", COUNT)
    lenpen: float = option(1.0, "Length penalty α: scores are divided by length**α.", NONNEGATIVE)
    max_len_a: float = option(1.5, "Maximum output length: a·|source| + b (this is a).", NONNEGATIVE)
    max_len_b: int = option(10, "Maximum output length: a·|source| + b (this is b).", NONNEGATIVE_INT)
    min_len: int = option(
        1,
        "Target tokens before a translation may end (1: never empty; the maximum length wins).",
        NONNEGATIVE_INT,  # 0: EOS may end a hypothesis at once
    )
    batch_tokens: int = option(BATCH_TOKENS, "Source tokens per batch.", COUNT)  # times the beam during search
    max_src_tokens: int = option(1024, "Sources longer than this many tokens are not translated (empty line).", COUNT)
    sampling: Sampling | None = None  # sample the candidates instead of beam search


class TextTranslator(ABC):
    """Translation of text with an engine's `translate_ids`. Text becomes token ids and back with kdmt's
    sentencepiece vocabularies (`encode`, `decode`, `target_tokens`: engines with other tokenizers override
    them, kdmt.pretrained); language tags (kdmt.languages) are dropped from the translations."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    options: SearchOptions
    device: torch.device
    max_positions: int  # of the target side: hypotheses are at most max_positions - 1 tokens
    max_src_tokens: int  # longer sources are not translated

    @abstractmethod
    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None, lines: list[int] | None = None
    ) -> list[list[Hypothesis]]:
        """The `nbest` best hypotheses for each source (token ids, EOS included), in input order; with
        options.sampling, `nbest` samples, each source's seeded with its number in `lines`."""

    @abstractmethod
    def num_parameters(self) -> int:
        """The parameters of the model(s) that translate."""

    @cached_property
    def tags(self) -> set[int]:
        """The target vocabulary's language tags, never part of a translation."""
        return set(tag_ids(self.tgt_vocab))

    def max_output_length(self, n_src_tokens: int) -> int:
        """The longest hypothesis (tokens, without EOS) the search allows for a source of `n_src_tokens`
        tokens, EOS counted: one this long was cut there, its EOS forced (search.max_lengths)."""
        src = torch.ones(1, n_src_tokens, dtype=torch.long)  # any id but PAD
        o = self.options
        return int(max_lengths(src, o.max_len_a, o.max_len_b, self.max_positions))

    def length_limits(self, lines: list[str]) -> list[tuple[int, int | None]]:
        """Each line's length in source tokens (without EOS) and the longest hypothesis the search allows it
        (max_output_length): what the filter of degenerate translations measures (kdmt.filters)."""
        return [(len(ids) - 1, self.max_output_length(len(ids))) for ids in self.encode(lines)]

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Each line's source token ids as `translate_ids` takes them (EOS included)."""
        return [ids + [EOS] for ids in self.src_vocab.encode(lines)]

    def decode(self, tokens: list[list[int]]) -> list[str]:
        """The text of hypotheses' target tokens (EOS excluded), language tags dropped."""
        tags = self.tags
        return self.tgt_vocab.decode([[t for t in ids if t not in tags] for ids in tokens] if tags else tokens)

    def target_tokens(self, texts: list[str]) -> int:
        """The target tokens of `texts`, EOS counted (a speed in tokens/s)."""
        return sum(len(ids) + 1 for ids in self.tgt_vocab.encode(texts))

    def limit_groups(self, src: list[list[int]]) -> Iterator[list[int]]:
        """The indices of `src` in batches of options.batch_tokens source tokens (kdmt.batching), each cut
        where the length limit changes (max_output_length): for engines that take one limit per call."""
        lengths = torch.tensor([len(s) for s in src])
        limits = {n: self.max_output_length(n) for n in set(lengths.tolist())}
        for batch in token_batches(lengths, lengths, self.options.batch_tokens):
            ids = batch.tolist()  # sorted by length: the sentences that share a limit are neighbours
            for _, group in groupby(ids, key=lambda i: limits[len(src[i])]):
                yield list(group)

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, progress: Progress | None = None, first_line: int = 0
    ) -> list[list[Candidate]]:
        """The `nbest` best candidates, best first, for each line (with options.sampling, `nbest` samples in
        the order drawn, line i's seeded with first_line + i). Empty lines, and lines longer than
        `max_src_tokens` tokens (EOS counted), are not translated: their list is empty."""
        encoded = self.encode(lines)
        todo = [
            i for i, (line, ids) in enumerate(zip(lines, encoded)) if line.strip() and len(ids) <= self.max_src_tokens
        ]
        numbers = [first_line + i for i in todo]
        results = self.translate_ids([encoded[i] for i in todo], nbest, progress, numbers) if todo else []
        out: list[list[Candidate]] = [[] for _ in lines]
        for i, hyps in zip(todo, results):
            texts = self.decode([h.tokens for h in hyps])
            out[i] = [Candidate(text, h.score, len(h.tokens)) for text, h in zip(texts, hyps)]
        if progress and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        return out

    def translate(self, lines: list[str], progress: Progress | None = None) -> list[str]:
        """The best translation of each line; an empty line for an empty (or over-long) one."""
        return [best_text(c) for c in self.translate_nbest(lines, 1, progress)]


class Translator(TextTranslator):
    """Translates text with kdmt's search over the models of one or more checkpoints that share a vocabulary.

    With `dtype` (e.g. torch.bfloat16 on CUDA) the models are converted to it for decoding.
    """

    def __init__(self, checkpoints: list[Checkpoint], options: SearchOptions | None = None, dtype=None):
        first = checkpoints[0]
        for c in checkpoints[1:]:
            check_vocabularies((first.src_vocab, first.tgt_vocab), (c.src_vocab, c.tgt_vocab), ENSEMBLE_VOCABULARIES)
        self.models = [c.model.eval() if dtype is None else c.model.eval().to(dtype) for c in checkpoints]
        self.ensemble = Ensemble(self.models)
        self.src_vocab, self.tgt_vocab = first.src_vocab, first.tgt_vocab
        self.options = options or SearchOptions()
        self.device = next(self.models[0].parameters()).device
        self.max_positions = self.ensemble.max_positions
        self.max_src_tokens = min([self.options.max_src_tokens] + [m.config.max_positions for m in self.models])

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self.models)

    def search(self, x: Tensor, nbest: int, seeds: list[int]) -> list[list[Hypothesis]]:
        """Decode one padded batch (with sampling, each sentence's generator seeded with its `seeds` entry);
        on a CUDA out-of-memory error, decode its halves instead.

        The halves are decoded after leaving the handler: until then the error's traceback keeps the
        failed attempt's tensors allocated."""
        o = self.options
        try:
            lengths = o.max_len_a, o.max_len_b, o.min_len
            if o.sampling:
                return sample_search(self.ensemble, x, nbest, o.sampling, seeds, o.lenpen, *lengths)
            if o.beam == 1:
                return [[h] for h in greedy_search(self.ensemble, x, o.lenpen, *lengths)]
            return beam_search(self.ensemble, x, o.beam, o.lenpen, nbest, *lengths)
        except torch.OutOfMemoryError:
            if x.size(0) == 1:
                raise
        if x.is_cuda:
            torch.cuda.empty_cache()
        half = x.size(0) // 2
        return self.search(x[:half], nbest, seeds[:half]) + self.search(x[half:], nbest, seeds[half:])

    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None, lines: list[int] | None = None
    ) -> list[list[Hypothesis]]:
        lines = lines if lines is not None else list(range(len(src)))
        sampling = self.options.sampling
        lengths = torch.tensor([len(s) for s in src])
        out: list[list[Hypothesis]] = [[] for _ in src]
        for batch in token_batches(lengths, lengths, self.options.batch_tokens):
            ids = batch.tolist()
            x = pad([torch.tensor(src[i]) for i in ids]).to(self.device)
            seeds = [sampling.line_seed(lines[i]) for i in ids] if sampling else []
            for i, hyps in zip(ids, self.search(x, nbest, seeds)):
                out[i] = hyps
            if progress:
                progress(len(ids))
        return out
