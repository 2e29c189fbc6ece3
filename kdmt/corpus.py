"""The tokenized corpus: per side a flat array of token ids (each sentence followed by EOS) and its offsets,
written as it comes to memory-mappable .npy files, and read back mapped: only the lengths are loaded.

Files under a prefix P (e.g. DATA/train): P.src.ids.npy, P.tgt.ids.npy (uint16 ids when the vocabularies
have at most 65,535 pieces, else int32), P.src.off.npy, P.tgt.off.npy (int64, pairs + 1 offsets) and
P.ids.json, the record (pairs, dtype, fingerprint, the key it was made for), written last."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from kdmt.arrays import NpyAppender
from kdmt.errors import KdmtError
from kdmt.files import atomic_path, read_json, record_json, write_text
from kdmt.parallel import chunks, ordered_map
from kdmt.vocab import EOS, Vocab

FORMAT = "kdmt-ids-1"
SIDES = ("src", "tgt")
CHUNK_PAIRS = 20_000  # pairs a tokenization worker encodes at a time
LENGTH_CHUNK = 1 << 18  # values of an array read at a time (the lengths, the fingerprint)

Encoded = tuple[np.ndarray, np.ndarray]  # flat ids with EOS after each sentence (int32), lengths (int64)


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65_535 else np.int32)


def encode_flat(vocab: Vocab, lines: list[str]) -> Encoded:
    """The token ids of `lines`, flat, each sentence followed by EOS, and the sentences' lengths."""
    ids = vocab.sp.encode(lines, out_type=int, num_threads=1)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    flat = np.full(int(lengths.sum()), EOS, dtype=np.int32)
    words = np.ones(len(flat), dtype=bool)
    words[np.cumsum(lengths) - 1] = False
    flat[words] = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=len(flat) - len(ids))
    return flat, lengths


class CorpusHash:
    """The fingerprint of a corpus fed in pieces: sha256 of the ids (as int32) and lengths of each side."""

    def __init__(self) -> None:
        self.parts = {f"{side}.{kind}": hashlib.sha256() for side in SIDES for kind in ("ids", "len")}

    def update(self, side: str, encoded: Encoded) -> None:
        ids, lengths = encoded
        self.parts[f"{side}.ids"].update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
        self.parts[f"{side}.len"].update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(h.digest() for h in self.parts.values())).hexdigest()[:16]


class TokenizedCorpus:
    """Token ids of a parallel corpus: per side a flat array (in memory, or mapped from disk) and offsets;
    each sentence ends in EOS. `src_len`, `tgt_len` (int32 tensors, EOS included) are in memory: given as
    `lengths` (src, tgt), or the offsets' differences."""

    def __init__(
        self,
        ids: dict[str, np.ndarray],
        offsets: dict[str, np.ndarray],
        fingerprint: str,
        lengths: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.ids, self.offsets, self._fingerprint = ids, offsets, fingerprint
        if lengths is None:
            lengths = tuple(np.diff(offsets[side]).astype(np.int32) for side in SIDES)
        self.src_len, self.tgt_len = (torch.from_numpy(side) for side in lengths)

    @classmethod
    def encode(cls, src: list[str], tgt: list[str], src_vocab: Vocab, tgt_vocab: Vocab) -> TokenizedCorpus:
        """Tokenize a small corpus in memory."""
        encoded, digest = {}, CorpusHash()
        for side, lines, vocab in (("src", src, src_vocab), ("tgt", tgt, tgt_vocab)):
            encoded[side] = encode_flat(vocab, lines)
            digest.update(side, encoded[side])
        offsets = {side: np.concatenate(([0], np.cumsum(lengths))) for side, (_, lengths) in encoded.items()}
        return cls({side: ids for side, (ids, _) in encoded.items()}, offsets, digest.hexdigest())

    def __len__(self) -> int:
        return len(self.src_len)

    def fingerprint(self) -> str:
        """A hash of the token ids, computed when they were written: what was made from one corpus (soft
        targets, a run) fits only that corpus."""
        return self._fingerprint

    def subset(self, rows: range) -> TokenizedCorpus:
        """The consecutive pairs `rows` (e.g. one language pair's), over the same arrays."""
        fingerprint = hashlib.sha256(f"{self._fingerprint}:{rows.start}:{rows.stop}".encode()).hexdigest()[:16]
        offsets = {side: self.offsets[side][rows.start : rows.stop + 1] for side in SIDES}
        lengths = (self.src_len[rows.start : rows.stop].numpy(), self.tgt_len[rows.start : rows.stop].numpy())
        return TokenizedCorpus(self.ids, offsets, fingerprint, lengths)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The source and target ids of pair `i` (int32 tensors, EOS included)."""
        return self._sentence("src", i), self._sentence("tgt", i)

    def _sentence(self, side: str, i: int) -> torch.Tensor:
        offsets = self.offsets[side]
        return torch.from_numpy(self.ids[side][offsets[i] : offsets[i + 1]].astype(np.int32))

    def rows(self, side: str, rows: np.ndarray) -> Encoded:
        """The flat ids and lengths of the sentences `rows` of one side, in that order."""
        offsets = self.offsets[side]
        starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
        flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
        return self.ids[side][flat].astype(np.int32), lengths


class CorpusSink:
    """Where a corpus is written pair chunk by pair chunk: its arrays, its running fingerprint and size."""

    def __init__(self, arrays: dict[str, NpyAppender]):
        self.arrays, self.digest, self.pairs = arrays, CorpusHash(), 0
        for side in SIDES:
            arrays[f"{side}.off"].append(np.zeros(1, dtype=np.int64))

    def add(self, src: Encoded, tgt: Encoded) -> None:
        for side, (ids, lengths) in (("src", src), ("tgt", tgt)):
            ids_file, off_file = self.arrays[f"{side}.ids"], self.arrays[f"{side}.off"]
            off_file.append(ids_file.length + np.cumsum(lengths))
            ids_file.append(ids)
            self.digest.update(side, (ids, lengths))
        self.pairs += len(src[1])


def _paths(prefix: Path) -> dict[str, Path]:
    return {f"{side}.{kind}": Path(f"{prefix}.{side}.{kind}.npy") for side in SIDES for kind in ("ids", "off")}


def record_path(prefix: Path) -> Path:
    return Path(f"{prefix}.ids.json")


@contextmanager
def write_corpus(prefix: Path, dtype: np.dtype, key: dict, info: dict | None = None) -> Iterator[CorpusSink]:
    """Write a corpus under `prefix` through the sink yielded: to temporary files, renamed when the block
    succeeds, then the record with `key` and `info`. The old record goes first: a crash leaves no record."""
    record = record_path(prefix)
    for path in (record, *_paths(prefix).values()):
        if path.is_dir():
            raise KdmtError(f"{path} is a directory, where kdmt keeps a tokenized corpus's file: remove it")
    record.unlink(missing_ok=True)
    with ExitStack() as stack:
        arrays = {}
        for name, path in _paths(prefix).items():
            tmp = stack.enter_context(atomic_path(path))
            arrays[name] = stack.enter_context(NpyAppender(tmp, np.int64 if name.endswith("off") else dtype))
        sink = CorpusSink(arrays)
        yield sink
    tokens = {side: arrays[f"{side}.ids"].length for side in SIDES}
    fields = dict(format=FORMAT, pairs=sink.pairs, dtype=np.dtype(dtype).name, tokens=tokens)
    fields |= dict(fingerprint=sink.digest.hexdigest(), key=key, info=info or {})
    write_text(record, record_json(fields))


def open_corpus(prefix: Path, key: dict) -> tuple[TokenizedCorpus, dict] | None:
    """The corpus under `prefix`, mapped, and its record's info; None when it is missing, incomplete or
    damaged (a truncated file, sizes that disagree, ids or offsets whose fingerprint is not the record's),
    or was made for another `key`. Checking the fingerprint reads the arrays once, a chunk at a time."""
    try:
        return _open_corpus(prefix, key)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _open_corpus(prefix: Path, key: dict) -> tuple[TokenizedCorpus, dict] | None:
    record = read_json(record_path(prefix))
    if record.get("format") != FORMAT or record.get("key") != key or record["pairs"] < 1:
        return None
    # the offsets copy-on-write, so that torch takes them as they are (never written, never copied)
    maps = {
        name: np.load(path, mmap_mode="c" if name.endswith("off") else "r") for name, path in _paths(prefix).items()
    }
    for side in SIDES:
        ids, offsets = maps[f"{side}.ids"], maps[f"{side}.off"]
        if ids.dtype != np.dtype(record["dtype"]) or offsets.dtype != np.int64 or len(offsets) != record["pairs"] + 1:
            return None
        if offsets[0] != 0 or offsets[-1] != len(ids) or len(ids) != record["tokens"][side]:
            return None
    lengths, digest = {}, CorpusHash()
    for side in SIDES:
        lengths[side] = read_lengths(maps[f"{side}.off"])
        digest.update(side, (np.empty(0, np.int32), lengths[side]))
        for chunk in read_chunks(maps[f"{side}.ids"]):
            digest.update(side, (chunk, np.empty(0, np.int64)))
    if digest.hexdigest() != record["fingerprint"]:
        return None
    corpus = TokenizedCorpus(
        {side: np.asarray(maps[f"{side}.ids"]) for side in SIDES},
        {side: np.asarray(maps[f"{side}.off"]) for side in SIDES},
        record["fingerprint"],
        (lengths["src"], lengths["tgt"]),
    )
    return corpus, record["info"]


def read_chunks(array: np.memmap) -> Iterator[np.ndarray]:
    """The values of a mapped 1-D array, read from its file LENGTH_CHUNK at a time: the mapping's pages
    stay out of this process's memory until training reads them."""
    with open(array.filename, "rb") as f:
        f.seek(array.offset)
        for start in range(0, len(array), LENGTH_CHUNK):
            yield np.fromfile(f, dtype=array.dtype, count=min(LENGTH_CHUNK, len(array) - start))


def read_lengths(offsets: np.memmap) -> np.ndarray:
    """The sentence lengths (int32) of a mapped offsets file, read a chunk at a time (read_chunks);
    ValueError unless the offsets increase, by less than 2³¹ (the lengths, with the first offset, are
    then the offsets)."""
    lengths, done, last = np.empty(len(offsets) - 1, dtype=np.int32), 0, None
    for chunk in read_chunks(offsets):
        steps = np.diff(chunk if last is None else np.concatenate((last, chunk)))
        if len(steps) and (steps.min() < 1 or steps.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{offsets.filename}: offsets that do not increase, or by 2³¹ or more")
        lengths[done : done + len(steps)] = steps
        done, last = done + len(steps), chunk[-1:]
    return lengths


def write_tokenized(
    pairs: Iterable[tuple[str, str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    prefix: Path,
    key: dict,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Tokenize `pairs` in `workers` processes into the files under `prefix`, as they come, telling
    `progress` the pairs written after each chunk."""
    with write_corpus(prefix, ids_dtype(max(len(src_vocab), len(tgt_vocab))), key) as sink:
        for src, tgt in tokenize(pairs, src_vocab, tgt_vocab, workers):
            sink.add(src, tgt)
            if progress:
                progress(sink.pairs)
        if sink.pairs == 0:
            raise KdmtError(f"{prefix}: the corpus is empty")


def tokenize(
    pairs: Iterable[tuple[str, str]], src_vocab: Vocab, tgt_vocab: Vocab, workers: int = 1
) -> Iterator[tuple[Encoded, Encoded]]:
    """The token ids of `pairs`, chunk by chunk in input order, encoded in `workers` processes."""
    pieces = chunks(pairs, CHUNK_PAIRS)
    if workers <= 1:
        return (_encode_pairs((src_vocab, tgt_vocab), chunk) for chunk in pieces)
    return ordered_map(_encode_in_worker, pieces, workers, _start_worker, (src_vocab.proto, tgt_vocab.proto))


_worker_vocabs: tuple[Vocab, Vocab] | None = None


def _start_worker(src_proto: bytes, tgt_proto: bytes) -> None:
    global _worker_vocabs
    _worker_vocabs = Vocab(src_proto), Vocab(tgt_proto)


def _encode_in_worker(chunk: list[tuple[str, str]]) -> tuple[Encoded, Encoded]:
    assert _worker_vocabs is not None
    return _encode_pairs(_worker_vocabs, chunk)


def _encode_pairs(vocabs: tuple[Vocab, Vocab], chunk: list[tuple[str, str]]) -> tuple[Encoded, Encoded]:
    return encode_flat(vocabs[0], [s for s, _ in chunk]), encode_flat(vocabs[1], [t for _, t in chunk])
