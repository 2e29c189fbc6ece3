"""Parallel text: reading and cleaning it as it streams, the prepared work directory, and its tokenized
corpora (kdmt.corpus), tokenized once and then mapped."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import compress, zip_longest
from pathlib import Path

import numpy as np

from kdmt.arrays import HashSet
from kdmt.cache import cached, content_key
from kdmt.corpus import TokenizedCorpus, open_corpus, write_tokenized
from kdmt.errors import KdmtError
from kdmt.files import read_json, read_lines, record_json, stream_lines, write_text
from kdmt.languages import PairRows
from kdmt.parallel import chunks, ordered_map
from kdmt.vocab import Vocab, vocab_key

PREPARED_MARKER = "prepare.json"

# Scripts written without spaces between words, with about how many of their characters make a word.
_UNSPACED = {
    "\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff": 1.5,  # CJK ideographs
    "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f": 2.0,  # hiragana, katakana
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff": 4.0,  # Thai, Lao, Myanmar, Khmer
}
_UNSPACED_CHARS = [(re.compile(f"[{chars}]"), per_word) for chars, per_word in _UNSPACED.items()]
_CJK_PUNCTUATION = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
_SPACED_WORD = re.compile(f"[^\\s{''.join(_UNSPACED)}{_CJK_PUNCTUATION}]+")
_NOT_ONLY_WORDS = re.compile(f"[{''.join(_UNSPACED)}{_CJK_PUNCTUATION}]")
_WORD_OR_CHARACTER = re.compile(f"{_NOT_ONLY_WORDS.pattern}|{_SPACED_WORD.pattern}")


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; their line counts must agree."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise _count_mismatch(src_path, len(src), tgt_path, len(tgt))
    return src, tgt


def stream_parallel(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """The pairs of a parallel corpus as they are read; when one side ends first, the rest of the other is
    counted and the line counts are reported."""
    for pair in zip_longest(stream_lines(src_path), stream_lines(tgt_path)):
        if None in pair:
            break
        yield pair
    else:
        return
    src, tgt = (stream_lines(path) for path in (src_path, tgt_path))
    n_src, n_tgt = sum(1 for _ in src), sum(1 for _ in tgt)  # counted again, to name both
    raise _count_mismatch(src_path, n_src, tgt_path, n_tgt)


def _count_mismatch(src_path: str | Path, n_src: int, tgt_path: str | Path, n_tgt: int) -> KdmtError:
    return KdmtError(f"line counts differ: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}")


@dataclass
class CleanStats:
    """What cleaning removed, by reason (each pair counted under the first reason that applies)."""

    input: int = 0
    empty: int = 0
    too_long: int = 0
    ratio: int = 0
    duplicate: int = 0
    kept: int = 0


def length_in_words(text: str, words: list[str] | None = None) -> float:
    """A sentence's length for cleaning: its whitespace-separated words, except that text in a script
    written without spaces between words is measured in characters, about 1.5 a word for CJK ideographs,
    2 for kana, and 4 for the alphabets of Thai, Lao, Khmer and Myanmar; CJK punctuation counts nothing.
    (Korean is written with spaces: Hangul counts in words.) `words` is text.split(), if the caller has it."""
    if not _NOT_ONLY_WORDS.search(text):  # the common case: the same count, faster
        return len(text.split() if words is None else words)
    unspaced = sum(len(chars.findall(text)) / per_word for chars, per_word in _UNSPACED_CHARS)
    return len(_SPACED_WORD.findall(text)) + unspaced


def words_or_characters(text: str) -> list[str] | None:
    """The characters and words of a text with some in a script written without spaces between words (as
    length_in_words tells them): each such character, and each CJK punctuation mark, on its own, the rest
    cut at whitespace; None for a text in spaced scripts alone (its words are text.split())."""
    return _WORD_OR_CHARACTER.findall(text) if _NOT_ONLY_WORDS.search(text) else None


def clean_stream(
    pairs: Iterable[tuple[str, str]],
    stats: CleanStats,
    max_words: int = 250,
    max_ratio: float = 3.0,
    dedup: bool = True,
    chunk: int = 8192,
    workers: int = 1,
) -> Iterator[list[tuple[str, str]]]:
    """The pairs that cleaning keeps, in input order, chunk by chunk, counting in `stats` what it drops
    (`stats.input` is up to date at each chunk): empty pairs, pairs
    over `max_words` words, pairs whose length ratio exceeds `max_ratio` (lengths are `length_in_words`),
    and exact duplicates. Whitespace is normalised to single spaces. A pair is known again by a 64-bit hash
    (8 bytes a kept pair in memory; two distinct pairs among n collide with odds of about n²/2⁶⁵). Chunks of
    `chunk` pairs are normalised, measured and hashed in `workers` processes; duplicates are found here."""
    select = partial(_select, max_words=max_words, max_ratio=max_ratio, dedup=dedup)
    batches = chunks(pairs, chunk)
    seen = HashSet()
    for kept, hashes, counts in map(select, batches) if workers <= 1 else ordered_map(select, batches, workers):
        for reason, n in counts.items():
            setattr(stats, reason, getattr(stats, reason) + n)
        if dedup and kept:
            fresh = seen.add_new(hashes)
            stats.duplicate += len(kept) - int(fresh.sum())
            kept = list(compress(kept, fresh))
        stats.kept += len(kept)
        yield kept


def _select(
    batch: list[tuple[str, str]], max_words: int, max_ratio: float, dedup: bool
) -> tuple[list[tuple[str, str]], np.ndarray | None, dict[str, int]]:
    """The pairs of `batch` that pass the length checks, normalised; their hashes (for `dedup`); the counts
    of the pairs read and of those dropped, by reason."""
    kept, counts = [], {"input": len(batch), "empty": 0, "too_long": 0, "ratio": 0}
    for s, t in batch:
        s_words, t_words = s.split(), t.split()
        s, t = " ".join(s_words), " ".join(t_words)
        if reason := _rejection(length_in_words(s, s_words), length_in_words(t, t_words), max_words, max_ratio):
            counts[reason] += 1
        else:
            kept.append((s, t))
    hashes = np.fromiter((pair_hash(s, t) for s, t in kept), dtype=np.uint64, count=len(kept)) if dedup else None
    return kept, hashes, counts


def _rejection(ns: float, nt: float, max_words: int, max_ratio: float) -> str | None:
    """Why cleaning drops a pair of these lengths (a field of CleanStats), or None."""
    if ns == 0 or nt == 0:
        return "empty"
    if ns > max_words or nt > max_words:
        return "too_long"
    if max(ns, nt) / min(ns, nt) > max_ratio:
        return "ratio"
    return None


def pair_hash(s: str, t: str) -> int:
    """A 64-bit hash of a whitespace-normalised pair (in which a tab cannot occur)."""
    return int.from_bytes(hashlib.blake2b(f"{s}\t{t}".encode(), digest_size=8).digest(), "little")


def clean_pairs(
    src: list[str], tgt: list[str], max_words: int = 250, max_ratio: float = 3.0, dedup: bool = True
) -> tuple[list[str], list[str], CleanStats]:
    """`clean_stream` of a corpus in memory: the kept sources and targets, and the counts."""
    stats = CleanStats()
    kept = [pair for chunk in clean_stream(zip(src, tgt), stats, max_words, max_ratio, dedup) for pair in chunk]
    return [s for s, _ in kept], [t for _, t in kept], stats


@dataclass
class Prepared:
    """What `kdmt prepare` wrote: the record in prepare.json of a prepared data directory."""

    src_lang: str
    tgt_lang: str
    joint_vocab: bool
    vocab_size: int
    stats: dict[str, dict] = field(default_factory=dict)
    pairs: list[dict] | None = None  # several pairs: each one's name and counts, in the order of their rows
    source_tags: bool | None = None  # several pairs: whether sources carry the source language's tag too
    vocab_from: dict[str, str] | None = None  # prepared in a pretrained teacher's vocabulary (kdmt.pretrained_kd)

    def pair_rows(self, split: str) -> PairRows | None:
        """The rows each pair holds in a split (train, valid); None for the data of one pair."""
        if self.pairs is None:
            return None
        return PairRows([p["pair"] for p in self.pairs], [p["stats"][split]["kept"] for p in self.pairs])

    def src_vocab_path(self, root: Path) -> Path:
        return root / ("spm.model" if self.joint_vocab else f"spm.{self.src_lang}.model")

    def tgt_vocab_path(self, root: Path) -> Path:
        return root / ("spm.model" if self.joint_vocab else f"spm.{self.tgt_lang}.model")


def load_prepared(root: str | Path) -> Prepared:
    root = Path(root)
    marker = root / PREPARED_MARKER
    if not marker.is_file():
        raise KdmtError(f"{root} is not a prepared data directory (no {PREPARED_MARKER}; run kdmt prepare)")
    try:
        return Prepared(**read_json(marker))
    except (ValueError, TypeError) as e:
        raise KdmtError(f"{marker} is damaged ({str(e).splitlines()[0][:200]}): run kdmt prepare again") from None


@dataclass
class PreparedData:
    """A prepared data directory, opened: its record and vocabularies; its corpora on demand."""

    root: Path
    info: Prepared
    src_vocab: Vocab
    tgt_vocab: Vocab

    @classmethod
    def open(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        info = load_prepared(root)
        src_vocab = Vocab.load(info.src_vocab_path(root))
        tgt_vocab = src_vocab if info.joint_vocab else Vocab.load(info.tgt_vocab_path(root))
        return cls(root, info, src_vocab, tgt_vocab)

    def text(self, split: str) -> tuple[list[str], list[str]]:
        """The cleaned text of a split (train, valid): its source and target lines."""
        return read_parallel(self.root / f"{split}.src", self.root / f"{split}.tgt")

    def corpus(self, split: str) -> TokenizedCorpus:
        """The tokenized corpus of a split, mapped from its files (tokenized again if they are not current)."""
        src, tgt = self.root / f"{split}.src", self.root / f"{split}.tgt"
        return load_corpus(src, tgt, self.src_vocab, self.tgt_vocab, self.root / split)


def save_prepared(root: Path, prepared: Prepared) -> None:
    record = {key: value for key, value in asdict(prepared).items() if value is not None}  # one pair: as before
    write_text(root / PREPARED_MARKER, record_json(record))


def load_corpus(
    src_path: Path,
    tgt_path: Path,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    cache: Path | None = None,
) -> TokenizedCorpus:
    """A parallel text corpus, tokenized: in memory without `cache`; else written (streaming) to the files
    under the prefix `cache` (kdmt.corpus) and mapped from them, reused while they are complete and made from
    the same text (by content) with the same vocabularies (kdmt.cache: built once, under `cache`.lock)."""
    if cache is None:
        corpus = TokenizedCorpus.encode(*read_parallel(src_path, tgt_path), src_vocab, tgt_vocab)
        if len(corpus) == 0:
            raise KdmtError(f"{src_path}: the corpus is empty")
        return corpus
    key = corpus_key(src_path, tgt_path, src_vocab, tgt_vocab)

    def build() -> None:
        write_tokenized(stream_parallel(src_path, tgt_path), src_vocab, tgt_vocab, cache, key)

    return cached(Path(f"{cache}.lock"), lambda: open_corpus(cache, key), build, str(cache))[0]


def corpus_key(src_path: Path, tgt_path: Path, src_vocab: Vocab, tgt_vocab: Vocab) -> dict:
    """What a tokenized corpus depends on: its text files (by content) and the vocabularies."""
    return vocab_key(src_vocab, tgt_vocab) | {"text": content_key([src_path, tgt_path])}
