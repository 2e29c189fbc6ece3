"""Offline word-level KD: the teachers' top-k log-probabilities for every target token of a corpus,
computed once with teacher forcing and stored compactly in memory-mapped arrays that training reads lazily.

OUT is a small JSON record (the settings: the corpus' fingerprint, the teachers, k, ...); beside it, with
OUT's suffix replaced, `.ids.npy` (tokens × k, int32), `.logp.npy` (tokens × k, float16, log-probabilities
at temperature 1) and `.offsets.npy` (sentences + 1, int64: each sentence's first row, then the total).
The arrays are preallocated in the run's directory (kdmt.shards.work_path) and filled shard by shard (of sentences)
by any number of processes (kdmt.shards), each writing its own rows; the last process moves them into
place and writes OUT. A killed run resumes with any number of processes, to the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor

from kdmt.batching import make_batch, token_batches
from kdmt.cache import file_sha256
from kdmt.data import TokenizedCorpus
from kdmt.errors import KdmtError
from kdmt.files import read_json, record_json, write_text
from kdmt.kd import routed_logits, teacher_distribution
from kdmt.languages import PairRows
from kdmt.model import Transformer
from kdmt.shards import Manifest, ShardedRun, work_path

FORMAT = "kdmt-soft-targets-3"  # 3: the record holds the sha256 of each array
ARRAYS = ("ids", "logp", "offsets")


@dataclass
class SoftTargetSettings:
    """What stored soft targets depend on; a resumed run must match the manifest's."""

    teachers: list[str]
    weights: list[float]
    topk: int
    batch_tokens: int = 4000  # padded tokens per batch (token_batches), within a shard
    shard_size: int = 10000  # sentences
    key: str = ""  # the fingerprint of the corpus
    inputs: dict[str, str] = field(default_factory=dict)  # teacher -> its content (kdmt.cache.file_identity)


def array_paths(out: Path) -> dict[str, Path]:
    """The arrays beside the record OUT: OUT with its suffix replaced by .ids.npy, .logp.npy, .offsets.npy."""
    return {name: out.with_suffix(f".{name}.npy") for name in ARRAYS}


@dataclass
class SoftTargetStore:
    index: np.ndarray  # (target tokens of the corpus, k) int32, memory-mapped
    logprobs: np.ndarray  # (target tokens of the corpus, k) float16, at temperature 1, memory-mapped
    offsets: np.ndarray  # (sentences + 1) int64: the first row of each sentence, then the number of rows
    key: str  # the fingerprint of the corpus
    teachers: list[str]

    def lookup(self, sentences: Tensor, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Top-k ids and log-probs of a batch's sentences, (B, width, k), padded with id 0 and log-prob 0."""
        i = sentences.numpy()
        starts, lengths = torch.from_numpy(self.offsets[i]), torch.from_numpy(self.offsets[i + 1] - self.offsets[i])
        mask = torch.arange(width) < lengths[:, None]
        rows = (starts[:, None] + torch.arange(width))[mask].numpy()
        k = self.index.shape[1]
        index = torch.zeros(len(i), width, k, dtype=torch.int64)
        logprobs = torch.zeros(len(i), width, k, dtype=torch.float32)
        index[mask] = torch.from_numpy(self.index[rows]).long()
        logprobs[mask] = torch.from_numpy(self.logprobs[rows]).float()
        return index.to(device), logprobs.to(device)

    @classmethod
    def load(cls, path: Path) -> SoftTargetStore:
        """Open the record and map its arrays (read-only: nothing is read until looked up), after checking
        each array's sha256 against the record's (one read of the arrays)."""
        if not path.is_file():
            raise KdmtError(f"{path}: no such file")
        try:
            record = read_json(path)
            version = record["format"]
            store = cls._mapped(path, record) if version == FORMAT else None
        except KdmtError:
            raise
        except Exception:
            version, store = None, None
        if store is not None:
            return store
        if isinstance(version, str) and version.startswith("kdmt-soft-targets-"):
            raise KdmtError(
                f"{path}: written by an older kdmt ({version}), without its arrays' sha256: run kdmt soft-targets again"
            )
        raise KdmtError(f"{path}: not a kdmt soft-targets file, or its arrays are missing or damaged")

    @classmethod
    def _mapped(cls, path: Path, record: dict[str, Any]) -> SoftTargetStore | None:
        """The arrays of a record of this FORMAT, mapped; None when their kinds or shapes are not the record's."""
        again = f"delete {path} and run kdmt soft-targets again"
        for name, array in array_paths(path).items():
            try:
                digest = file_sha256(array)
            except OSError as e:
                raise KdmtError(f"{array}: cannot be read ({e.strerror}): {again}") from None
            if digest != record["sha256_arrays"][name]:
                raise KdmtError(f"{array}: damaged (not the sha256 that {path.name} records): {again}")
        ids, logp, offsets = (np.load(p, mmap_mode="r") for p in array_paths(path).values())
        kinds = (ids.dtype, logp.dtype, offsets.dtype) == (np.int32, np.float16, np.int64)
        shape = (record["tokens"], record["settings"]["topk"])
        if kinds and ids.shape == logp.shape == shape and offsets.shape == (record["sentences"] + 1,):
            return cls(ids, logp, offsets, record["settings"]["key"], record["settings"]["teachers"])
        return None


def finished(out: Path, settings: dict[str, Any]) -> bool:
    """Whether OUT holds the soft targets of a finished run with these settings, in this FORMAT."""
    try:
        record = read_json(out)
        same = record["format"] == FORMAT and record["settings"] == settings
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return same and all(p.is_file() for p in array_paths(out).values())


def shard_sentences(shard: int, settings: SoftTargetSettings, n: int) -> range:
    return range(shard * settings.shard_size, min(n, (shard + 1) * settings.shard_size))


@torch.no_grad()
def compute_soft_targets(
    teachers: list[Transformer],
    corpus: TokenizedCorpus,
    settings: SoftTargetSettings,
    out: Path,
    progress: Callable[[int], None] | None = None,
    after_shard: Callable[[int], None] | None = None,
    routes: PairRows | None = None,
) -> SoftTargetStore | None:
    """Teacher-force the teachers over the corpus and keep the top-k of their averaged distribution, in OUT
    and its arrays; with `routes` (several language pairs), each sentence's of its own pair's teacher alone.
    The store when they are complete; None while other processes compute the last shards."""
    settings.key = corpus.fingerprint()
    record = json.loads(json.dumps(asdict(settings)))  # as it reads back from JSON
    work = ShardedRun(work_path(out), record, lambda: finished(out, record))
    partial = {name: work.path / f"{name}.npy" for name in ARRAYS}
    tokens = int(corpus.tgt_len.sum())

    def plan() -> dict[str, Any]:
        """Preallocate the arrays (sparse files), and write the offsets."""
        for name, dtype in (("ids", np.int32), ("logp", np.float16)):
            open_memmap(partial[name], mode="w+", dtype=dtype, shape=(tokens, settings.topk)).flush()
        offsets = open_memmap(partial["offsets"], mode="w+", dtype=np.int64, shape=(len(corpus) + 1,))
        offsets[1:] = np.cumsum(corpus.tgt_len.numpy())
        offsets.flush()
        return {"shards": -(-len(corpus) // settings.shard_size)}

    def assemble(manifest: Manifest) -> None:
        """Move the arrays into place, then write the record, which says that they are complete."""
        out.unlink(missing_ok=True)
        hashes = {}
        for name, path in array_paths(out).items():
            if partial[name].exists():
                os.replace(partial[name], path)
            hashes[name] = file_sha256(path)
        summary = {"format": FORMAT, "settings": record, "sentences": len(corpus), "tokens": tokens}
        write_text(out, record_json(summary | {"sha256_arrays": hashes}, indent=1))

    def array(name: str, mode: str) -> np.ndarray:
        """An array of the run: in its directory, or already in place (an assembly was killed midway)."""
        return np.load(partial[name] if partial[name].exists() else array_paths(out)[name], mmap_mode=mode)

    if work.open(plan) is not None:
        ids, logp, offsets = array("ids", "r+"), array("logp", "r+"), array("offsets", "r")

        def do(shard: int) -> dict[str, Any]:
            sentences = shard_sentences(shard, settings, len(corpus))
            fill_shard(teachers, settings, corpus, sentences, (ids, logp, offsets), progress, routes)
            return {}

        def done(shard: int, mine: bool) -> None:
            if mine and after_shard:
                after_shard(shard)
            elif not mine and progress:
                progress(len(shard_sentences(shard, settings, len(corpus))))

        work.work(do, done)
        del ids, logp, offsets  # unmapped before the files are moved
        if not work.finish(assemble):
            return None
    return SoftTargetStore.load(out)


def fill_shard(
    teachers: list[Transformer],
    settings: SoftTargetSettings,
    corpus: TokenizedCorpus,
    sentences: range,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    progress: Callable[[int], None] | None,
    routes: PairRows | None = None,
) -> None:
    """Compute the soft targets of a run of sentences into their rows of the arrays (ids, logp, offsets),
    flushed to disk."""
    ids, logp, offsets = arrays
    device = next(teachers[0].parameters()).device
    lengths = torch.maximum(corpus.src_len, corpus.tgt_len)[sentences.start : sentences.stop]
    for batch in token_batches(lengths, lengths, settings.batch_tokens):
        batch = batch + sentences.start
        b = make_batch(corpus, batch).to(device)
        if routes is None:
            probs = teacher_distribution([t(b.src, b.tgt_in) for t in teachers], settings.weights, 1.0)
        else:
            probs = teacher_distribution([routed_logits(teachers, b.src, b.tgt_in, routes.pair_of(batch))], [1.0], 1.0)
        top, top_ids = (x.cpu() for x in probs.topk(settings.topk, dim=-1))
        mask = torch.arange(top.size(1)) < corpus.tgt_len[batch][:, None]
        rows = (torch.from_numpy(offsets[batch.numpy()])[:, None] + torch.arange(top.size(1)))[mask].numpy()
        ids[rows] = top_ids[mask].int().numpy()
        logp[rows] = top[mask].log().half().numpy()
        if progress:
            progress(len(batch))
    ids.flush()
    logp.flush()
