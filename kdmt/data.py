"""Parallel text: checking, cleaning, the prepared work directory, and the tokenized corpus."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kdmt.errors import KdmtError
from kdmt.files import atomic_path, read_lines
from kdmt.vocab import EOS, Vocab

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


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; their line counts must agree."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise KdmtError(f"line counts differ: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}")
    return src, tgt


@dataclass
class CleanStats:
    """What cleaning removed, by reason (each pair counted under the first reason that applies)."""

    input: int = 0
    empty: int = 0
    too_long: int = 0
    ratio: int = 0
    duplicate: int = 0
    kept: int = 0


def length_in_words(text: str) -> float:
    """A sentence's length for cleaning: its whitespace-separated words, except that text in a script
    written without spaces between words is measured in characters, about 1.5 a word for CJK ideographs,
    2 for kana, and 4 for the alphabets of Thai, Lao, Khmer and Myanmar; CJK punctuation counts nothing.
    (Korean is written with spaces: Hangul counts in words.)"""
    if not _NOT_ONLY_WORDS.search(text):  # the common case: the same count, faster
        return len(text.split())
    words = len(_SPACED_WORD.findall(text))
    return words + sum(len(chars.findall(text)) / per_word for chars, per_word in _UNSPACED_CHARS)


def clean_pairs(
    src: list[str],
    tgt: list[str],
    max_words: int = 250,
    max_ratio: float = 3.0,
    dedup: bool = True,
) -> tuple[list[str], list[str], CleanStats]:
    """Drop empty pairs, pairs over `max_words` words, pairs whose length ratio exceeds `max_ratio`,
    and exact duplicate pairs; lengths are `length_in_words`. Whitespace is normalised to single spaces."""
    stats = CleanStats(input=len(src))
    seen: set[tuple[str, str]] = set()
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt):
        s, t = " ".join(s.split()), " ".join(t.split())
        ns, nt = length_in_words(s), length_in_words(t)
        if ns == 0 or nt == 0:
            stats.empty += 1
        elif ns > max_words or nt > max_words:
            stats.too_long += 1
        elif max(ns, nt) / min(ns, nt) > max_ratio:
            stats.ratio += 1
        elif dedup and (s, t) in seen:
            stats.duplicate += 1
        else:
            if dedup:
                seen.add((s, t))
            out_src.append(s)
            out_tgt.append(t)
    stats.kept = len(out_src)
    return out_src, out_tgt, stats


@dataclass
class Prepared:
    """What `kdmt prepare` wrote: the record in prepare.json of a prepared data directory."""

    src_lang: str
    tgt_lang: str
    joint_vocab: bool
    vocab_size: int
    stats: dict[str, dict] = field(default_factory=dict)

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
        return Prepared(**json.loads(marker.read_text()))
    except (ValueError, TypeError) as e:
        raise KdmtError(f"{marker} is damaged ({e})") from None


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
        """The tokenized corpus of a split, from its cache when that is current."""
        src, tgt, cache = (self.root / f"{split}.{ext}" for ext in ("src", "tgt", "ids.pt"))
        return load_corpus(src, tgt, self.src_vocab, self.tgt_vocab, cache)


def save_prepared(root: Path, prepared: Prepared) -> None:
    with atomic_path(root / PREPARED_MARKER) as tmp:
        tmp.write_text(json.dumps(asdict(prepared), indent=2) + "\n")


class TokenizedCorpus:
    """Token ids of a parallel corpus in two flat tensors with offsets; each sentence ends in EOS."""

    def __init__(self, src: torch.Tensor, src_len: torch.Tensor, tgt: torch.Tensor, tgt_len: torch.Tensor):
        self.src, self.src_len, self.tgt, self.tgt_len = src, src_len, tgt, tgt_len
        self.src_off = torch.cumsum(src_len, 0) - src_len
        self.tgt_off = torch.cumsum(tgt_len, 0) - tgt_len

    @classmethod
    def encode(cls, src: list[str], tgt: list[str], src_vocab: Vocab, tgt_vocab: Vocab) -> TokenizedCorpus:
        def flat(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.tensor([len(x) + 1 for x in ids], dtype=torch.int64)
            data = torch.tensor([t for x in ids for t in (*x, EOS)], dtype=torch.int32)
            return data, lengths

        return cls(*flat(src_vocab.encode(src)), *flat(tgt_vocab.encode(tgt)))

    def __len__(self) -> int:
        return len(self.src_len)

    def fingerprint(self) -> str:
        """A hash of the token ids: what was made from one corpus (soft targets, a run) fits only that corpus."""
        h = hashlib.sha256()
        for t in (self.src, self.src_len, self.tgt, self.tgt_len):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = int(self.src_off[i]), int(self.tgt_off[i])
        return self.src[s : s + int(self.src_len[i])], self.tgt[t : t + int(self.tgt_len[i])]

    def save(self, path: Path, key: str) -> None:
        """Write the ids with `key` (the vocabularies' fingerprints) that `load` checks."""
        d = {"src": self.src, "src_len": self.src_len, "tgt": self.tgt, "tgt_len": self.tgt_len, "key": key}
        with atomic_path(path) as tmp:
            torch.save(d, tmp)

    @classmethod
    def load(cls, path: Path, key: str) -> TokenizedCorpus | None:
        """The cached ids, or None when the file is unreadable or was made with other vocabularies."""
        try:
            d = torch.load(path, weights_only=True)
            if d.get("key") != key:
                return None
            return cls(d["src"], d["src_len"], d["tgt"], d["tgt_len"])
        except Exception:
            return None


def load_corpus(
    src_path: Path,
    tgt_path: Path,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    cache: Path | None = None,
) -> TokenizedCorpus:
    """Tokenize a parallel text corpus, reusing `cache` when it is newer than both text files
    and was made with the same vocabularies."""
    key = f"{src_vocab.fingerprint}-{tgt_vocab.fingerprint}"
    if cache is not None and cache.is_file():
        newest_text = max(src_path.stat().st_mtime, tgt_path.stat().st_mtime)
        if cache.stat().st_mtime >= newest_text and (corpus := TokenizedCorpus.load(cache, key)):
            return corpus
    corpus = TokenizedCorpus.encode(*read_parallel(src_path, tgt_path), src_vocab, tgt_vocab)
    if len(corpus) == 0:
        raise KdmtError(f"{src_path}: the corpus is empty")
    if cache is not None:
        corpus.save(cache, key)
    return corpus
