"""The engines that translate: kdmt's own search over checkpoints, CTranslate2 over an exported directory,
and (kdmt.pretrained) Hugging Face models and CTranslate2 directories made elsewhere.

`open_translator` takes what the user named — checkpoints, a CTranslate2 directory written by `kdmt export`,
a Hugging Face model — and returns a TextTranslator. `converted_teacher` converts a checkpoint to CTranslate2
once and caches it, for `kdmt distill --engine ctranslate2`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from kdmt import __version__
from kdmt.cache import cache_dir, cached, file_sha256
from kdmt.checkpoint import load_checkpoint
from kdmt.ctranslate2_search import load_ctranslate2, translate_groups
from kdmt.device import resolve_device
from kdmt.errors import KdmtError
from kdmt.export import SOURCE_SPM, TARGET_SPM, ExportOptions, export_checkpoint, read_record, require
from kdmt.pretrained import PretrainedOptions, is_foreign_ctranslate2, is_hub_id, is_huggingface, open_pretrained
from kdmt.search import Hypothesis
from kdmt.translate import Progress, SearchOptions, TextTranslator, Translator
from kdmt.vocab import BOS, PAD, Vocab

ENGINES = ("kdmt", "ctranslate2", "transformers")


class CTranslate2Translator(TextTranslator):
    """Translates with a CTranslate2 directory written by `kdmt export`, under kdmt's search options: the
    same batches, beam, length penalty and per-sentence length limit as kdmt's search (sentences are decoded
    in groups that share their limit: kdmt.ctranslate2_search), PAD and BOS never generated. On the CPU,
    `threads` batches are decoded at once, one thread each (CTranslate2's advice for throughput; 0: as many
    as torch uses).

    Both stop a sentence once `beam` hypotheses are finished (fairseq's rule) and end none before --min-len
    tokens (CTranslate2's min_decoding_length), so the outputs equal kdmt's but for near ties and where the searches end
    differently: a hypothesis that reaches the length limit is closed by kdmt with a forced EOS and left open
    by CTranslate2; and with --lenpen 0 CTranslate2 stops once its best candidate is finished."""

    def __init__(
        self, directory: Path, options: SearchOptions, device: str = "cpu", threads: int = 0, device_index: int = 0
    ):
        self.record = read_record(directory)
        if self.record is None or self.record["format"] != "ctranslate2":
            raise KdmtError(f"{directory}: not a CTranslate2 directory written by kdmt export")
        self.directory, self.device_name, self.device_index = directory, device, device_index
        self.translator = self.load((threads or torch.get_num_threads()) if device == "cpu" else 1)
        self.src_vocab, self.tgt_vocab = Vocab.load(directory / SOURCE_SPM), Vocab.load(directory / TARGET_SPM)
        self.src_pieces, tgt_pieces = self.src_vocab.pieces(), self.tgt_vocab.pieces()
        self.tgt_ids = {piece: i for i, piece in enumerate(tgt_pieces)}
        self.suppress = [[tgt_pieces[PAD]], [tgt_pieces[BOS]]]
        self.options = options
        self.device = torch.device(device, device_index) if device == "cuda" else torch.device(device)
        self.max_positions = self.record["config"]["max_positions"]
        self.max_src_tokens = min(options.max_src_tokens, self.max_positions)

    def load(self, inter_threads: int) -> Any:
        """A ctranslate2.Translator of the directory, decoding `inter_threads` batches at once."""
        return load_ctranslate2(self.directory, self.device_name, self.device_index, inter_threads)

    def num_parameters(self) -> int:
        return self.record["parameters"]

    def sampler(self, first_line: int) -> tuple[Any, dict[str, Any]]:
        """The translator and the search arguments of a call. With sampling, a fresh translator with one
        worker thread after ctranslate2.set_random_seed(seed of `first_line`): a worker's generator is seeded
        when the thread first samples, so the draws are those of a new process with that seed, and one
        worker decodes the call's batches in order. A call's samples then depend on the seed, its first line
        and its batches (distill: its shard), not on what the process translated before."""
        o = self.options
        if o.sampling is None:
            return self.translator, {"beam_size": o.beam}
        require("ctranslate2").set_random_seed(o.sampling.line_seed(first_line))
        return self.load(1), {
            "beam_size": 1,
            "sampling_topk": o.sampling.topk,
            "sampling_topp": o.sampling.topp,
            "sampling_temperature": o.sampling.temperature,
        }

    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None, lines: list[int] | None = None
    ) -> list[list[Hypothesis]]:
        translator, search = self.sampler(lines[0] if lines else 0)
        return translate_groups(
            self,
            translator,
            src,
            lambda ids: [self.src_pieces[t] for t in ids[:-1]],  # the model appends EOS
            lambda pieces: [self.tgt_ids[p] for p in pieces],
            search,
            nbest,
            progress,
            suppress=self.suppress,
        )


def is_export(path: Path) -> bool:
    """Whether `path` is a directory written by `kdmt export`."""
    return path.is_dir() and read_record(path) is not None


def open_translator(
    models: list[Path],
    device: str | None,
    options: SearchOptions,
    bf16: bool = True,
    threads: int = 0,
    engine: str | None = None,
    pretrained: PretrainedOptions | None = None,
) -> tuple[list[dict[str, Any]], TextTranslator]:
    """A translator for what the user named, with each model's record of how it was made: kdmt checkpoints
    (an ensemble when several; bf16 on CUDA unless not `bf16`), through kdmt's search or (`engine`
    ctranslate2, one checkpoint) converted to CTranslate2; a CTranslate2 directory (kdmt's export, or one
    made elsewhere); a Hugging Face model directory or hub id (kdmt.pretrained: `engine` ctranslate2 or
    transformers, by default ctranslate2 where it converts the model). `threads` (0: as many as torch uses)
    sets the CPU threads of any engine."""
    if engine is not None and engine not in ENGINES:
        raise KdmtError(f"--engine is one of {', '.join(ENGINES)}, not {engine!r}")
    pretrained = pretrained or PretrainedOptions()
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    foreign = [m for m in models if is_hub_id(m) or is_huggingface(m) or is_foreign_ctranslate2(m)]
    records = [read_record(m) if m.is_dir() else None for m in models]
    if foreign or any(r is not None for r in records):
        if len(models) > 1:
            raise KdmtError(
                "ensembles are of kdmt checkpoints (CTranslate2 has no ensembles): give one model directory"
            )
        record = records[0]
        if options.sampling is not None and (record is None or record["format"] == "huggingface"):
            raise KdmtError("--sampling goes with kdmt checkpoints and kdmt's CTranslate2 exports, not this model")
        if record is None or record["format"] == "huggingface":
            meta, translator = open_pretrained(models[0], engine, options, pretrained, dev, bf16, threads)
            return [meta], translator
        if engine not in (None, "ctranslate2") or pretrained.quantization != "float32":
            raise KdmtError(
                f"{models[0]}: a CTranslate2 export translates as it is (--engine ctranslate2, no --quantization)"
            )
        translator = CTranslate2Translator(models[0], options, dev.type, threads, dev.index or 0)
        meta = {**record["meta"], "export": {"format": "ctranslate2", "quantization": record["quantization"]}}
        return [meta], translator
    if engine == "transformers":
        raise KdmtError("--engine transformers takes a Hugging Face model directory, not kdmt checkpoints")
    if pretrained.src_lang or pretrained.source_prefix:
        raise KdmtError(
            "--src-lang and --source-prefix go with a Hugging Face model (or a CTranslate2 one made elsewhere)"
        )
    if engine == "ctranslate2":
        if len(models) > 1:
            raise KdmtError(
                "CTranslate2 has no ensembles: --engine ctranslate2 takes one checkpoint (--engine kdmt more)"
            )
        path = converted_teacher(models[0], pretrained.quantization)
        translator = CTranslate2Translator(path, options, dev.type, threads, dev.index or 0)
        return [read_record(path)["meta"]], translator
    if pretrained.quantization != "float32":
        raise KdmtError("--quantization goes with --engine ctranslate2")
    checkpoints = [load_checkpoint(m, dev) for m in models]
    dtype = torch.bfloat16 if dev.type == "cuda" and bf16 else None
    return [c.meta for c in checkpoints], Translator(checkpoints, options, dtype)


def converted_teacher(checkpoint: Path, quantization: str = "float32") -> Path:
    """A CTranslate2 conversion of `checkpoint`, made once (kdmt.cache: by one process of those that ask at
    once) and kept in the cache under the checkpoint's content hash, the quantization and the versions of
    kdmt and ctranslate2 that convert (another version converts again)."""
    if not checkpoint.is_file():
        raise KdmtError(f"{checkpoint}: no such checkpoint")
    versions = f"kdmt{__version__}-ct2{require('ctranslate2').__version__}"
    path = cache_dir() / "ctranslate2" / f"{file_sha256(checkpoint)[:20]}-{quantization}-{versions}"
    convert = partial(export_checkpoint, checkpoint, path, ExportOptions("ctranslate2", quantization), force=True)
    return cached(path.with_name(f"{path.name}.lock"), lambda: path if is_export(path) else None, convert, str(path))


def engine_name(meta: dict[str, Any], engine: str | None, quantization: str = "float32") -> str:
    """How a model opened by open_translator with `engine` decodes, as distill records it: kdmt,
    "ctranslate2 QUANTIZATION" or transformers."""
    if pretrained := meta.get("pretrained"):
        return pretrained["engine"]
    if export := meta.get("export"):
        return f"ctranslate2 {export['quantization']}"
    return "kdmt" if engine in (None, "kdmt") else f"{engine} {quantization}"
