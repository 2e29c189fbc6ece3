"""Exporting a checkpoint to the engines students are deployed with: CTranslate2 and Hugging Face.

Both hold kdmt's network weight for weight (a pre-norm Transformer whose scaled embeddings are tied to
the output projection, with kdmt's sinusoidal position table):
- CTranslate2: built through ctranslate2's spec API (fused QKV, kdmt's position table, one vocabulary or
  two) and quantized as it is saved. The model appends EOS to each source itself, so the directory
  translates sentencepiece pieces as they come.
- Hugging Face: transformers' Blenderbot classes are exactly this architecture with a stored position
  table. (M2M100, pre-norm too, recomputes its sinusoids when it loads, with other frequencies and
  layout, so it cannot hold kdmt's.) A MarianTokenizer over the sentencepiece model(s) appends EOS as
  kdmt does; the generation config is kdmt's search with its default options (beam 5, length penalty 1,
  at least one token, PAD and BOS never generated, EOS forced at the length limit). generate() has no
  per-source limit: its max_length is kdmt's absolute one (max_positions − 1 tokens after BOS, then
  EOS), and kdmt's a·|source| + b is recorded beside it (kdmt_max_len_a, kdmt_max_len_b; huggingface_limit).
Each directory also holds source.spm and target.spm, and kdmt_export.json: where the model came from.
A directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kdmt import __version__
from kdmt.cache import file_sha256
from kdmt.checkpoint import Checkpoint, load_checkpoint
from kdmt.config import option
from kdmt.errors import KdmtError
from kdmt.files import read_json, record_json
from kdmt.translate import SearchOptions
from kdmt.vocab import BOS, EOS, PAD, UNK

QUANTIZATIONS = {
    "ctranslate2": ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16"),
    "huggingface": ("float32", "float16", "bfloat16"),
}
RECORD = "kdmt_export.json"
SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
EXTRA = "pip install 'kdmt[export]'"


@dataclass(frozen=True)
class ExportOptions:
    """The model directory export writes: its format and its weights."""

    format: str = option("ctranslate2", "ctranslate2 or huggingface.")
    quantization: str = option(
        "float32",
        "Weights: float32, int8, int8_float32, int16, float16 or bfloat16 (huggingface: float32, float16, bfloat16).",
    )

    def check(self) -> None:
        """Refuse a format or weights export does not write, and a format whose package is missing."""
        if self.format not in QUANTIZATIONS:
            raise KdmtError(f"unknown format {self.format!r}: choose ctranslate2 or huggingface")
        if self.quantization not in QUANTIZATIONS[self.format]:
            kinds = ", ".join(QUANTIZATIONS[self.format])
            raise KdmtError(f"--quantization for {self.format} is one of {kinds}, not {self.quantization!r}")
        require("ctranslate2" if self.format == "ctranslate2" else "transformers")


def require(module: str) -> ModuleType:
    """Import an engine of the optional `export` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KdmtError(f"{module} is not installed: {EXTRA}") from None


def read_record(directory: Path) -> dict[str, Any] | None:
    """The record of an exported directory, or None when `directory` is not one."""
    path = Path(directory) / RECORD
    if not path.exists():
        return None
    try:
        record = read_json(path)
        if record["format"] in QUANTIZATIONS and isinstance(record["config"], dict):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise KdmtError(f"{path}: not a valid kdmt export record")


def export_checkpoint(
    checkpoint: Path, out: Path, options: ExportOptions = ExportOptions(), force: bool = False
) -> dict[str, Any]:
    """Write `checkpoint` as a model directory `out` of `options`; its record. An existing non-empty `out` is
    replaced only with `force`, and only once the new directory is complete."""
    options.check()
    fmt, quantization = options.format, options.quantization
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise KdmtError(f"{out} exists and is not empty: choose another directory, or --force to replace it")
    ckpt = load_checkpoint(checkpoint)
    record = {
        "format": fmt,
        "quantization": quantization,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "kdmt": __version__,
        "config": asdict(ckpt.model.config),
        "parameters": ckpt.model.num_parameters(),
        "meta": ckpt.meta,
    }
    with staged(out) as tmp:
        (tmp / SOURCE_SPM).write_bytes(ckpt.src_vocab.proto)
        (tmp / TARGET_SPM).write_bytes(ckpt.tgt_vocab.proto)
        if fmt == "ctranslate2":
            write_ctranslate2(ckpt, tmp, quantization)
        else:
            write_huggingface(ckpt, tmp, quantization)
        (tmp / RECORD).write_text(record_json(record))
    return record


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out` that becomes `out` when the block succeeds, and is removed when
    it fails; an earlier `out` is removed only after the rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _numpy(ckpt: Checkpoint) -> dict[str, Any]:
    """The model's parameters as float32 numpy arrays, by kdmt name (a shared embedding under both names)."""
    return {k: v.detach().float().cpu().numpy() for k, v in ckpt.model.state_dict().items()}


def write_ctranslate2(ckpt: Checkpoint, directory: Path, quantization: str = "float32") -> None:
    """A CTranslate2 model of `ckpt` in `directory` (model.bin, config.json, vocabularies)."""
    require("ctranslate2")
    from ctranslate2.converters.utils import fuse_linear
    from ctranslate2.specs import common_spec, transformer_spec

    c, sd = ckpt.model.config, _numpy(ckpt)
    spec = transformer_spec.TransformerSpec.from_config((c.enc_layers, c.dec_layers), c.n_heads, pre_norm=True)

    def linear(dst, name: str) -> None:
        dst.weight, dst.bias = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def norm(dst, name: str) -> None:
        dst.gamma, dst.beta = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def fused(dst, names: list[str]) -> None:
        parts = [common_spec.LinearSpec() for _ in names]
        for part, name in zip(parts, names):
            linear(part, name)
        fuse_linear(dst, parts)

    def ffn(dst, name: str, norm_name: str) -> None:
        norm(dst.layer_norm, norm_name)
        linear(dst.linear_0, f"{name}.ff.0")
        linear(dst.linear_1, f"{name}.ff.3")

    positions = ckpt.model.positions.float().cpu().numpy()
    for side, table in ((spec.encoder, "src_embed.weight"), (spec.decoder, "tgt_embed.weight")):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = sd[table]
        side.scale_embeddings = True
        side.position_encodings.encodings = positions
    for i, layer in enumerate(spec.encoder.layer):
        name = f"encoder.{i}"
        fused(layer.self_attention.linear[0], [f"{name}.attn.{x}" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{name}.attn.out")
        norm(layer.self_attention.layer_norm, f"{name}.norm1")
        ffn(layer.ffn, name, f"{name}.norm2")
    for i, layer in enumerate(spec.decoder.layer):
        name = f"decoder.{i}"
        fused(layer.self_attention.linear[0], [f"{name}.self_attn.{x}" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{name}.self_attn.out")
        norm(layer.self_attention.layer_norm, f"{name}.norm1")
        linear(layer.attention.linear[0], f"{name}.cross_attn.q")
        fused(layer.attention.linear[1], [f"{name}.cross_attn.{x}" for x in "kv"])
        linear(layer.attention.linear[2], f"{name}.cross_attn.out")
        norm(layer.attention.layer_norm, f"{name}.norm2")
        ffn(layer.ffn, name, f"{name}.norm3")
    norm(spec.encoder.layer_norm, "enc_norm")
    norm(spec.decoder.layer_norm, "dec_norm")
    spec.decoder.projection.weight = sd["tgt_embed.weight"]
    spec.register_source_vocabulary(ckpt.src_vocab.pieces())
    spec.register_target_vocabulary(ckpt.tgt_vocab.pieces())
    spec.config.add_source_eos = True  # kdmt's sources end in EOS
    spec.validate()
    spec.optimize(quantization=None if quantization == "float32" else quantization)
    spec.save(str(directory))


def huggingface_limit(generation_config: Any, n_src_tokens: int) -> int:
    """kdmt's per-source length limit in generate()'s terms: the max_new_tokens (EOS counted) for a source
    of `n_src_tokens` tokens (EOS counted), from an exported generation config (a·|source| + b tokens, at
    most max_positions − 1, then EOS)."""
    g = generation_config
    return min(int(n_src_tokens * g.kdmt_max_len_a + g.kdmt_max_len_b), g.max_length - 2) + 1


def write_huggingface(ckpt: Checkpoint, directory: Path, dtype: str = "float32") -> None:
    """A transformers model of `ckpt` (BlenderbotForConditionalGeneration, safetensors) with its tokenizer,
    over the sentencepiece models already in `directory`."""
    transformers = require("transformers")
    c, sd = ckpt.model.config, ckpt.model.state_dict()
    if not c.share_embeddings:
        raise KdmtError("the Hugging Face export needs a joint vocabulary (kdmt prepare --joint-vocab)")
    config = transformers.BlenderbotConfig(
        vocab_size=c.tgt_vocab_size,
        max_position_embeddings=c.max_positions,
        d_model=c.d_model,
        encoder_layers=c.enc_layers,
        decoder_layers=c.dec_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        activation_function="relu",
        dropout=c.dropout,
        scale_embedding=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        forced_eos_token_id=EOS,
        encoder_no_repeat_ngram_size=0,
        tie_word_embeddings=True,
    )
    model = transformers.BlenderbotForConditionalGeneration(config).eval()
    weights = {"model.shared.weight": sd["tgt_embed.weight"], "lm_head.weight": sd["tgt_embed.weight"]}
    for side in ("encoder", "decoder"):
        weights[f"model.{side}.embed_positions.weight"] = ckpt.model.positions
        weights[f"model.{side}.embed_tokens.weight"] = sd["tgt_embed.weight"]
    for dst, src in _huggingface_names(c.enc_layers, c.dec_layers):
        for kind in ("weight", "bias"):
            weights[f"{dst}.{kind}"] = sd[f"{src}.{kind}"]
    weights["final_logits_bias"] = torch.zeros(1, c.tgt_vocab_size)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:  # a transformers version that names its parameters otherwise
        raise KdmtError(f"this transformers version lays Blenderbot out otherwise ({(missing + unexpected)[:3]})")
    search = SearchOptions()  # kdmt's defaults
    model.generation_config = transformers.GenerationConfig(
        num_beams=search.beam,
        length_penalty=search.lenpen,
        early_stopping=True,
        max_length=c.max_positions + 1,  # BOS, at most max_positions − 1 tokens (kdmt's cap), EOS
        min_new_tokens=search.min_len,
        kdmt_max_len_a=search.max_len_a,  # kdmt's per-source limit, which generate() cannot apply itself
        kdmt_max_len_b=search.max_len_b,
        decoder_start_token_id=BOS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        forced_eos_token_id=EOS,
        suppress_tokens=[PAD, BOS],
    )
    model.to(getattr(torch, dtype)).save_pretrained(str(directory))
    vocab = directory / "vocab.json"
    vocab.write_text(json.dumps({p: i for i, p in enumerate(ckpt.tgt_vocab.pieces())}, ensure_ascii=False))
    tokenizer = transformers.MarianTokenizer(
        str(directory / SOURCE_SPM),
        str(directory / TARGET_SPM),
        str(vocab),
        unk_token=ckpt.tgt_vocab.sp.id_to_piece(UNK),
        eos_token=ckpt.tgt_vocab.sp.id_to_piece(EOS),
        pad_token=ckpt.tgt_vocab.sp.id_to_piece(PAD),
        model_max_length=c.max_positions,
    )
    tokenizer.save_pretrained(str(directory))


def _huggingface_names(enc_layers: int, dec_layers: int) -> Iterator[tuple[str, str]]:
    """(transformers name, kdmt name) of every linear layer and layer norm."""

    def attention(dst: str, src: str) -> Iterator[tuple[str, str]]:
        for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
            yield f"{dst}.{a}", f"{src}.{b}"

    for i in range(enc_layers):
        d, s = f"model.encoder.layers.{i}", f"encoder.{i}"
        yield from attention(f"{d}.self_attn", f"{s}.attn")
        yield from ((f"{d}.self_attn_layer_norm", f"{s}.norm1"), (f"{d}.final_layer_norm", f"{s}.norm2"))
        yield from ((f"{d}.fc1", f"{s}.ff.0"), (f"{d}.fc2", f"{s}.ff.3"))
    for i in range(dec_layers):
        d, s = f"model.decoder.layers.{i}", f"decoder.{i}"
        yield from attention(f"{d}.self_attn", f"{s}.self_attn")
        yield from attention(f"{d}.encoder_attn", f"{s}.cross_attn")
        yield from ((f"{d}.self_attn_layer_norm", f"{s}.norm1"), (f"{d}.encoder_attn_layer_norm", f"{s}.norm2"))
        yield from ((f"{d}.final_layer_norm", f"{s}.norm3"), (f"{d}.fc1", f"{s}.ff.0"), (f"{d}.fc2", f"{s}.ff.3"))
    yield from (("model.encoder.layer_norm", "enc_norm"), ("model.decoder.layer_norm", "dec_norm"))
