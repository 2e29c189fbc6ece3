"""Languages: pair names, the tags added to sources and stripped from outputs, the rows of each pair in a
multilingual corpus, and the sampling of pairs with a temperature (the per-pair routing of teachers is
kdmt.kd's).

A multilingual prepared directory (kdmt prepare --pair de-en --pair fr-en) holds one corpus of all pairs,
one pair after the other; each source starts with the target language's tag, <2en> (Johnson et al. 2017),
and optionally the source language's, <from_de>. Tags are sentencepiece user-defined symbols written with
the word boundary, ▁<2en>: one token each, which never leaks into the pieces of the sentence itself."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdmt.errors import KdmtError
from kdmt.vocab import Vocab

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TAG_PIECE = re.compile(r"▁<(?:2|from_)[A-Za-z][A-Za-z0-9_]*>")
_TAG = re.compile(r"<(?:2|from_)[A-Za-z][A-Za-z0-9_]*>(?:\s|$)")  # a tag at the start of a line


@dataclass(frozen=True)
class Pair:
    """A language pair, named SRC-TGT (e.g. de-en)."""

    src: str
    tgt: str

    @classmethod
    def parse(cls, name: str) -> Pair:
        parts = name.split("-")
        if len(parts) != 2 or not all(_CODE.fullmatch(p) for p in parts):
            raise KdmtError(f"cannot read the language pair {name!r} (example: de-en)")
        if parts[0] == parts[1]:
            raise KdmtError(f"the language pair {name!r} must name two languages")
        return cls(*parts)

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"


def parse_pairs(names: Sequence[str]) -> list[Pair]:
    pairs = [Pair.parse(name) for name in names]
    if len(set(pairs)) != len(pairs):
        raise KdmtError("each --pair may be given once")
    return pairs


def target_tag(lang: str) -> str:
    return f"<2{lang}>"


def source_tag(lang: str) -> str:
    return f"<from_{lang}>"


def tags(pairs: Sequence[Pair], source_tags: bool) -> list[str]:
    """The tags the pairs' sources carry, each once: the sentencepiece symbols to reserve (with ▁)."""
    found = [target_tag(p.tgt) for p in pairs] + ([source_tag(p.src) for p in pairs] if source_tags else [])
    return list(dict.fromkeys(found))


def symbols(pairs: Sequence[Pair], source_tags: bool) -> list[str]:
    """The user-defined sentencepiece symbols of the tags: each with the word boundary, one token."""
    return [f"▁{tag}" for tag in tags(pairs, source_tags)]


def tag_source(line: str, pair: Pair, source_tags: bool) -> str:
    """A source line with its pair's tags in front: '<2en> text', or '<2en> <from_de> text'."""
    prefix = [target_tag(pair.tgt)] + ([source_tag(pair.src)] if source_tags else [])
    return " ".join(prefix + [line])


def model_inputs(lines: list[str], pair: Pair | None, meta: dict, first_line: int = 1) -> list[str]:
    """Source lines as a model takes them, from its checkpoint's record `meta`. For a model trained on a
    multilingual prepared directory, each non-empty line carries the tags of one of its pairs: tagged for
    `pair` (one of its pairs) when given, a line that carries these tags already (e.g. DATA/train.PAIR.src)
    taken as it is; without `pair`, every line must carry a pair's tags already. For a model of one pair,
    lines are taken as they are (`pair`, if given, must be its pair). `first_line`: the number of the first
    line, for the errors."""
    pairs = meta.get("pairs")
    if pairs is None:
        own = meta.get("src_lang"), meta.get("tgt_lang")
        if pair is not None and None not in own and own != (pair.src, pair.tgt):
            raise KdmtError(f"--pair {pair.name}: the model translates {own[0]}-{own[1]}")
        return lines
    if pair is not None and pair.name not in pairs:
        raise KdmtError(f"--pair {pair.name}: the model translates {', '.join(pairs)}")
    source_tags = bool(meta.get("source_tags"))
    prefixes = tuple(tag_source("", Pair.parse(name), source_tags) for name in ([pair.name] if pair else pairs))
    out = []
    for n, line in enumerate(lines, first_line):
        if not line.strip() or line.startswith(prefixes):
            out.append(line)
        elif pair is None:
            raise KdmtError(
                f"the model translates {', '.join(pairs)}: name one with --pair (line {n} carries no tags of them)"
            )
        elif _TAG.match(line):
            raise KdmtError(f"line {n} carries other tags than --pair {pair.name}'s ({prefixes[0].strip()})")
        else:
            out.append(prefixes[0] + line)
    return out


def target_language(meta: dict, pair: Pair | None = None) -> str | None:
    """The language a model translates into: `pair`'s target, else the one target language of the pairs in
    its checkpoint's record `meta` (None when it names several, or none)."""
    if pair is not None:
        return pair.tgt
    targets = {Pair.parse(name).tgt for name in meta["pairs"]} if meta.get("pairs") else {meta.get("tgt_lang")}
    return targets.pop() if len(targets) == 1 and None not in targets else None


def tag_ids(vocab: Vocab) -> list[int]:
    """The ids of a vocabulary's language tags (none in a vocabulary made for one pair)."""
    return [i for i, piece in enumerate(vocab.pieces()) if _TAG_PIECE.fullmatch(piece)]


@dataclass
class PairRows:
    """The pairs of a corpus and the rows each one holds, one pair after the other."""

    names: list[str]
    counts: list[int]

    @property
    def bounds(self) -> np.ndarray:
        """Each pair's first row, then the number of rows."""
        return np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    def rows(self, name: str) -> range:
        if name not in self.names:
            raise KdmtError(f"no pair {name} here (pairs: {', '.join(self.names)})")
        i = self.names.index(name)
        return range(int(self.bounds[i]), int(self.bounds[i + 1]))

    def pair_of(self, rows: Tensor) -> Tensor:
        """The index of the pair of each row."""
        return torch.from_numpy(self.index(rows.numpy()))

    def index(self, rows: np.ndarray) -> np.ndarray:
        """The index of the pair of each row, of an array."""
        return np.searchsorted(self.bounds, rows, side="right") - 1


def per_pair(values: Sequence[str | Path], pairs: Sequence[str], usage: str) -> list[Path]:
    """The files of a repeated option given as PAIR=FILE (`usage`, e.g. "--teacher PAIR=CHECKPOINT"), one for
    each of several pairs, in the pairs' order (none given: none)."""
    found: dict[str, Path] = {}
    for text in map(str, values):
        pair, _, path = text.partition("=")
        if not path or pair not in pairs or pair in found:
            raise KdmtError(f"several pairs ({', '.join(pairs)}): give one {usage} for each")
        found[pair] = Path(path)
    if found and len(found) != len(pairs):
        raise KdmtError(f"several pairs: give one {usage} for each of {', '.join(pairs)}")
    return [found[pair] for pair in pairs] if found else []


def bleu_key(pair: str | None) -> str:
    """The name of a validation BLEU figure: valid_bleu, or valid_bleu_PAIR for each of several pairs."""
    return "valid_bleu" if pair is None else f"valid_bleu_{pair}"


def pair_weights(counts: Sequence[int], temperature: float) -> np.ndarray:
    """How often each pair is drawn: proportional to (its share of the data)^(1/T) (Arivazhagan et al. 2019):
    T = 1 keeps the data's proportions, a larger T draws small pairs more often, T → ∞ evenly."""
    share = np.asarray(counts, dtype=np.float64) / sum(counts)
    weights = share ** (1.0 / temperature)
    return weights / weights.sum()


class PairSampler:
    """The sentences an epoch takes: as many as the data has, each pair's number set by pair_weights; a pair
    with fewer sentences than its number repeats all of them and draws the rest, one with more draws them."""

    def __init__(self, pairs: PairRows, temperature: float):
        self.pairs, self.temperature = pairs, temperature

    def __call__(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        of_pair = self.pairs.pair_of(indices)
        groups = [indices[of_pair == p] for p in range(len(self.pairs.names))]
        wanted = np.round(pair_weights([max(len(g), 1) for g in groups], self.temperature) * len(indices))
        drawn = []
        for group, n in zip(groups, wanted.astype(int).tolist()):
            if len(group) == 0:
                continue
            whole, rest = divmod(n, len(group))
            drawn += [group] * whole + [group[torch.randperm(len(group), generator=generator)[:rest]]]
        return torch.cat(drawn)
