"""Degenerate teacher translations, kept out of a distilled corpus (as production distillation pipelines do).

A weak teacher, greedy search above all, falls into loops ("a girl in a wooden wooden wooden wooden ...")
that run until the search cuts them. A student trained on them learns the loops. `degenerate` names the
first reason, in this order, that a hypothesis is degenerate:

- `repeat`: a word n-gram (n = 1..4) repeated at least `max_repeat` times in a row ("wooden wooden
  wooden", "a b a b a b"). Words are the hypothesis split at whitespace, compared exactly: what a reader
  sees, independent of the vocabulary (subword pieces would flag a run of digits or of dots). In a script
  written without spaces (Chinese, Japanese, Thai…: kdmt.data.words_or_characters) each character counts
  as a word, and n-grams of up to 16 of them (4 words of Thai's about 4 characters) are looked for.
- `length_limit`: the hypothesis is as long as the search allowed for its source (max_len_a·|source| +
  max_len_b tokens, |source| counting EOS, at most max_positions − 1): it was most likely cut there, its
  EOS forced (one that ends by itself at exactly that length is counted too). Not applied where the
  limit is unknown (a teacher command's translations).
- `ratio`: its length in target tokens over the source's (sentencepiece tokens, without EOS) is above
  `max_len_ratio` or below its inverse (an empty hypothesis included). A teacher command's translations
  have no tokens: both sides are measured in words (`word_length`), as the `repeat` rule counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdmt.data import words_or_characters

REASONS = ("repeat", "length_limit", "ratio")
MAX_NGRAM = 4
MAX_CHARACTER_NGRAM = 16  # in a script without spaces


@dataclass(frozen=True)
class FilterOptions:
    max_repeat: int = 3  # an n-gram this many times in a row is a loop
    max_len_ratio: float = 2.0  # target/source token ratio above this, or below its inverse


def repeated_ngram(words: list[str], max_repeat: int, max_n: int = MAX_NGRAM) -> bool:
    """Whether some n-gram (n ≤ max_n) occurs `max_repeat` times in a row: a run of (max_repeat − 1)·n
    consecutive positions i with words[i] == words[i − n]."""
    for n in range(1, max_n + 1):
        need, run = (max_repeat - 1) * n, 0
        for i in range(n, len(words)):
            run = run + 1 if words[i] == words[i - n] else 0
            if run >= need:
                return True
    return False


def word_length(text: str) -> int:
    """A text's length in words, as the `repeat` rule counts them: each character of a script written
    without spaces counts as one (kdmt.data.words_or_characters)."""
    return len(words_or_characters(text) or text.split())


def degenerate(
    hypothesis: str,
    hyp_tokens: int,
    src_tokens: int,
    max_tokens: int | None,
    options: FilterOptions = FilterOptions(),
) -> str | None:
    """The reason (one of REASONS, the first that applies) why `hypothesis` is degenerate, or None.

    hyp_tokens: its length in target tokens, without EOS; src_tokens: the source's, without EOS (both in
    words for a teacher command's); max_tokens: the longest hypothesis the search allowed for that source
    (Translator.max_output_length), None when unknown (no `length_limit` rule).
    """
    characters = words_or_characters(hypothesis)
    if characters is None and repeated_ngram(hypothesis.split(), options.max_repeat):
        return "repeat"
    if characters is not None and repeated_ngram(characters, options.max_repeat, MAX_CHARACTER_NGRAM):
        return "repeat"
    if max_tokens is not None and hyp_tokens >= max_tokens:
        return "length_limit"
    ratio = hyp_tokens / max(src_tokens, 1)
    if ratio > options.max_len_ratio or ratio < 1 / options.max_len_ratio:
        return "ratio"
    return None
