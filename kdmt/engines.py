"""The engines that translate: kdmt's own search over checkpoints, or CTranslate2 over an exported directory.

`open_translator` takes what the user named — checkpoints, or a CTranslate2 directory written by
`kdmt export` — and returns a TextTranslator. `converted_teacher` converts a checkpoint to CTranslate2
once and caches it, for `kdmt distill --engine ctranslate2`.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kdmt import __version__
from kdmt.cache import cached, file_sha256
from kdmt.checkpoint import load_checkpoint
from kdmt.device import resolve_device
from kdmt.errors import KdmtError
from kdmt.export import SOURCE_SPM, TARGET_SPM, export_checkpoint, read_record, require
from kdmt.search import Hypothesis
from kdmt.translate import Progress, SearchOptions, TextTranslator, Translator
from kdmt.vocab import BOS, PAD, Vocab

ENGINES = ("kdmt", "ctranslate2")


class CTranslate2Translator(TextTranslator):
    """Translates with a CTranslate2 directory written by `kdmt export`, under kdmt's search options: the
    same batches, beam, length penalty and per-sentence length limit as kdmt's search (sentences are decoded
    in groups that share their limit), PAD and BOS never generated. On the CPU, `threads` batches are decoded
    at once, one thread each (CTranslate2's advice for throughput; 0: as many as torch uses).

    Both stop a sentence once `beam` hypotheses are finished (fairseq's rule) and end none before --min-len
    tokens (CTranslate2's min_decoding_length), so the outputs equal kdmt's but for near ties and where the searches end
    differently: a hypothesis that reaches the length limit is closed by kdmt with a forced EOS and left open
    by CTranslate2; and with --lenpen 0 CTranslate2 stops once its best candidate is finished."""

    def __init__(
        self, directory: Path, options: SearchOptions, device: str = "cpu", threads: int = 0, device_index: int = 0
    ):
        ctranslate2 = require("ctranslate2")
        self.record = read_record(directory)
        if self.record is None or self.record["format"] != "ctranslate2":
            raise KdmtError(f"{directory}: not a CTranslate2 directory written by kdmt export")
        try:
            threads = threads or torch.get_num_threads()
            self.translator = ctranslate2.Translator(
                str(directory),
                device=device,
                device_index=device_index,
                inter_threads=threads if device == "cpu" else 1,
                intra_threads=1,
            )
        except (RuntimeError, ValueError) as e:
            raise KdmtError(f"{directory}: CTranslate2 cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.src_vocab, self.tgt_vocab = Vocab.load(directory / SOURCE_SPM), Vocab.load(directory / TARGET_SPM)
        self.src_pieces, tgt_pieces = self.src_vocab.pieces(), self.tgt_vocab.pieces()
        self.tgt_ids = {piece: i for i, piece in enumerate(tgt_pieces)}
        self.suppress = [[tgt_pieces[PAD]], [tgt_pieces[BOS]]]
        self.options = options
        self.device = torch.device(device, device_index) if device == "cuda" else torch.device(device)
        self.max_positions = self.record["config"]["max_positions"]
        self.max_src_tokens = min(options.max_src_tokens, self.max_positions)

    def num_parameters(self) -> int:
        return self.record["parameters"]

    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None
    ) -> list[list[Hypothesis]]:
        o = self.options
        pending = []  # all batches are queued at once: CTranslate2 decodes `threads` of them in parallel
        for group in self.limit_groups(src):
            limit = self.max_output_length(len(src[group[0]]))
            results = self.translator.translate_batch(
                [[self.src_pieces[t] for t in src[i][:-1]] for i in group],  # the model appends EOS
                beam_size=o.beam,
                num_hypotheses=nbest,
                length_penalty=o.lenpen,
                max_decoding_length=limit,
                min_decoding_length=min(o.min_len, limit),
                max_input_length=0,
                return_scores=True,
                suppress_sequences=self.suppress,
                asynchronous=True,
            )
            pending.append((group, results))
        out: list[list[Hypothesis]] = [[] for _ in src]
        for group, results in pending:
            for i, result in zip(group, results):
                result = result.result()
                out[i] = [
                    Hypothesis([self.tgt_ids[p] for p in pieces], score)
                    for pieces, score in zip(result.hypotheses, result.scores)
                ]
            if progress:
                progress(len(group))
        return out


def is_export(path: Path) -> bool:
    """Whether `path` is a directory written by `kdmt export`."""
    return path.is_dir() and read_record(path) is not None


def open_translator(
    models: list[Path], device: str | None, options: SearchOptions, bf16: bool = True, threads: int = 0
) -> tuple[list[dict[str, Any]], TextTranslator]:
    """A translator for checkpoints (an ensemble when several; bf16 on CUDA unless not `bf16`) or for one
    CTranslate2 directory, with each model's record of how it was made. `threads` (0: as many as torch
    uses) sets the CPU threads of either engine."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    records = [read_record(m) if m.is_dir() else None for m in models]
    exported = [(m, r) for m, r in zip(models, records) if r is not None]
    if exported:
        if len(models) > 1:
            raise KdmtError("CTranslate2 has no ensembles: give one exported directory, or checkpoints")
        path, record = exported[0]
        if record["format"] != "ctranslate2":
            raise KdmtError(f"{path}: a {record['format']} export; kdmt translates CTranslate2 exports")
        translator = CTranslate2Translator(path, options, dev.type, threads, dev.index or 0)
        meta = {**record["meta"], "export": {"format": "ctranslate2", "quantization": record["quantization"]}}
        return [meta], translator
    checkpoints = [load_checkpoint(m, dev) for m in models]
    dtype = torch.bfloat16 if dev.type == "cuda" and bf16 else None
    return [c.meta for c in checkpoints], Translator(checkpoints, options, dtype)


def cache_dir() -> Path:
    """Where converted models are kept: $KDMT_CACHE, else $XDG_CACHE_HOME/kdmt, else ~/.cache/kdmt."""
    if root := os.environ.get("KDMT_CACHE"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdmt"


def converted_teacher(checkpoint: Path, quantization: str = "float32") -> Path:
    """A CTranslate2 conversion of `checkpoint`, made once (kdmt.cache: by one process of those that ask at
    once) and kept in the cache under the checkpoint's content hash, the quantization and the versions of
    kdmt and ctranslate2 that convert (another version converts again)."""
    if not checkpoint.is_file():
        raise KdmtError(f"{checkpoint}: no such checkpoint")
    versions = f"kdmt{__version__}-ct2{require('ctranslate2').__version__}"
    path = cache_dir() / "ctranslate2" / f"{file_sha256(checkpoint)[:20]}-{quantization}-{versions}"
    convert = partial(export_checkpoint, checkpoint, path, "ctranslate2", quantization, force=True)
    return cached(path.with_name(f"{path.name}.lock"), lambda: path if is_export(path) else None, convert, str(path))
