"""Teachers made elsewhere: Hugging Face seq2seq models, and CTranslate2 directories that kdmt did not write.

A Hugging Face teacher is a `save_pretrained` directory with its tokenizer (or a hub id, downloaded where
the network allows it: HF_HUB_OFFLINE is respected) of a supported model type (MODEL_TYPES). It translates
through one of two engines: `transformers` (generate()) or `ctranslate2` (the model converted once with
ctranslate2's TransformersConverter and cached under the hash of the directory's files, the quantization
and both packages' versions). Either way text is tokenized and detokenized by the model's own tokenizer,
and kdmt's search options map onto the engine's: beam, length penalty, min_len, n-best, and the length limit
a·|source| + b (capped by the model's positions). Many-to-many models take language codes (--src-lang,
--tgt-lang: the tokenizer's source language and the target language's token, forced first), and models
that need one a source prefix (T5's task prefix, MADLAD's <2xx>).

A CTranslate2 directory made elsewhere translates with its own tokenizer: source.spm/target.spm (an OPUS-MT
model converted by ct2-opus-mt-converter) or the Hugging Face tokenizer files beside the model.

Safety: a stranger's directory never runs code. trust_remote_code is never set; a config or tokenizer that
asks for custom code (auto_map) is refused; weights are read from safetensors, or from a pickled
pytorch_model.bin only by transformers' weights-only loader; a local directory is opened offline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdmt.cache import cache_dir, cached, file_sha256
from kdmt.ctranslate2_search import load_ctranslate2, translate_groups
from kdmt.errors import KdmtError
from kdmt.export import read_record, require, staged
from kdmt.search import Hypothesis
from kdmt.translate import Progress, SearchOptions, TextTranslator

# model_type -> (its name, whether it takes language codes, whether CTranslate2 converts it)
MODEL_TYPES: dict[str, tuple[str, bool, bool]] = {
    "marian": ("MarianMT", False, True),
    "m2m_100": ("M2M100/NLLB", True, True),
    "mbart": ("MBart-50", True, True),
    "t5": ("T5", False, True),
    "mt5": ("MT5", False, True),
    "blenderbot": ("kdmt export --format huggingface", False, False),
}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
OPUS_SPM = ("source.spm", "target.spm")
DEFAULT_MAX_POSITIONS = 512  # models with no position table of their own (T5's relative positions; OPUS-MT)
# Three-letter codes (NLLB's deu_Latn) whose BLEU is tokenized otherwise: kdmt.metrics.bleu_tokenizer
_ISO_639_1 = {"zho": "zh", "jpn": "ja", "kor": "ko", "tha": "th", "lao": "lo", "khm": "km", "mya": "my"}


@dataclass
class PretrainedOptions:
    """What a pretrained model needs beside the search options."""

    src_lang: str | None = None  # many-to-many models: the tokenizer's source language (NLLB deu_Latn, ...)
    tgt_lang: str | None = None  # many-to-many models: the target language, whose token is forced first
    source_prefix: str = ""  # prepended to every source line (T5: "translate German to English: ")
    quantization: str = "float32"  # the CTranslate2 engine's weights


def is_huggingface(path: Path) -> bool:
    """Whether `path` is a Hugging Face model directory (a config.json with a model_type)."""
    return _config(path) is not None


def is_foreign_ctranslate2(path: Path) -> bool:
    """Whether `path` is a CTranslate2 model directory that kdmt export did not write."""
    return path.is_dir() and (path / "model.bin").is_file() and read_record(path) is None


def resolve(name: str | Path) -> Path:
    """The local directory of a model: `name` itself, or a hub id's snapshot (its configs, tokenizer files
    and safetensors weights; none from the network under HF_HUB_OFFLINE)."""
    path = Path(name)
    if path.exists():
        return path
    if str(name).startswith((".", "/")) or str(name).count("/") != 1:
        raise KdmtError(f"{name}: no such file or directory")
    hub = require("huggingface_hub")
    try:
        return Path(
            hub.snapshot_download(
                str(name),
                allow_patterns=["*.json", "*.model", "*.spm", "*.txt", "model.safetensors*"],
                local_files_only=bool(os.environ.get("HF_HUB_OFFLINE")),
            )
        )
    except Exception as e:  # the hub's errors have no common base class: offline, unknown repo, gated, ...
        raise KdmtError(
            f"{name}: no such file or directory, nor a model on the Hugging Face hub ({str(e).splitlines()[0][:160]})"
        ) from None


def _config(path: Path) -> dict[str, Any] | None:
    file = path / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise KdmtError(f"{file}: not valid JSON") from None
    return config if isinstance(config, dict) and "model_type" in config else None


def refuse_custom_code(directory: Path) -> None:
    """Refuse, in one line, a directory whose config or tokenizer asks for custom code (auto_map)."""
    for name in ("config.json", "tokenizer_config.json"):
        file = directory / name
        if not file.is_file():
            continue
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise KdmtError(f"{file}: not valid JSON") from None
        if isinstance(settings, dict) and settings.get("auto_map"):
            raise KdmtError(f"{file}: asks for custom code (auto_map); kdmt never runs a model's own code")


def check_safe(directory: Path) -> dict[str, Any]:
    """The config of a Hugging Face directory that is safe to open: a supported model type, no custom code
    (auto_map in the config or the tokenizer's), weights present. Refused in one line otherwise."""
    config = _config(directory)
    if config is None:
        raise KdmtError(f"{directory}: not a Hugging Face model directory (no config.json with a model_type)")
    refuse_custom_code(directory)
    model_type = config["model_type"]
    if model_type not in MODEL_TYPES:
        supported = ", ".join(f"{t} ({MODEL_TYPES[t][0]})" for t in MODEL_TYPES)
        raise KdmtError(f"{directory}: model type {model_type!r} is not supported; kdmt takes {supported}")
    if not any((directory / w).is_file() for w in WEIGHTS):
        raise KdmtError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")
    return config


def content_hash(directory: Path) -> str:
    """The sha256 of every file's name and content in `directory` (its subdirectories' too)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(directory)}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()


def default_engine(directory: Path) -> str:
    """ctranslate2 when it is installed and converts the model type, transformers otherwise."""
    model_type = check_safe(directory)["model_type"]
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return "transformers"
    return "ctranslate2" if MODEL_TYPES[model_type][2] else "transformers"


def load_tokenizer(directory: Path) -> Any:
    """The directory's own tokenizer, opened offline and without custom code."""
    transformers = require("transformers")
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KdmtError(f"{directory}: cannot load its tokenizer ({str(e).splitlines()[0][:200]})") from None


def load_model(directory: Path, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """The directory's seq2seq model, opened offline without custom code: safetensors weights where there
    are some, else pytorch_model.bin through transformers' weights-only loader."""
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()  # no bar on stderr as the weights load
    safetensors = any((directory / w).is_file() for w in WEIGHTS[:2])
    try:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            str(directory),
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=safetensors,
            dtype=dtype,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise KdmtError(f"{directory}: cannot load the model ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval()


def converted(directory: Path, quantization: str = "float32") -> Path:
    """A CTranslate2 conversion of the Hugging Face model in `directory` (ctranslate2's own converter), made
    once (kdmt.cache) under the hash of the directory's files, the quantization and the versions of
    ctranslate2 and transformers (another version converts again)."""
    ctranslate2, transformers = require("ctranslate2"), require("transformers")
    model_type = check_safe(directory)["model_type"]
    if not MODEL_TYPES[model_type][2]:
        convertible = ", ".join(t for t, (_, _, ct2) in MODEL_TYPES.items() if ct2)
        raise KdmtError(f"CTranslate2 converts {convertible}, not {model_type}: use --engine transformers")
    versions = f"ct2{ctranslate2.__version__}-tf{transformers.__version__}"
    path = cache_dir() / "ctranslate2" / f"hf-{content_hash(directory)[:20]}-{quantization}-{versions}"

    def convert() -> None:
        with staged(path) as tmp:
            converter = ctranslate2.converters.TransformersConverter(str(directory), trust_remote_code=False)
            try:
                converter.convert(
                    str(tmp), quantization=None if quantization == "float32" else quantization, force=True
                )
            except (ValueError, RuntimeError, KeyError, AttributeError, NotImplementedError) as e:
                raise KdmtError(  # AttributeError: a config without a field the converter reads (normalize_before)
                    f"{directory}: CTranslate2 cannot convert it ({str(e).splitlines()[0][:200]}); "
                    "--engine transformers translates it"
                ) from None

    return cached(
        path.with_name(f"{path.name}.lock"),
        lambda: path if (path / "model.bin").is_file() else None,
        convert,
        str(path),
    )


def is_hub_id(name: str | Path) -> bool:
    """Whether `name` can only be a hub id (owner/name): no such path, and not a checkpoint's name."""
    text = str(name)
    return (
        not Path(text).exists()
        and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None
        and not text.endswith((".safetensors", ".pt"))
    )


def language_codes(tokenizer: Any) -> list[str]:
    """The language codes a many-to-many tokenizer knows (M2M100 de, MBart-50 de_DE, NLLB deu_Latn)."""
    if codes := getattr(tokenizer, "lang_code_to_id", None):
        return list(codes)
    return [t for t in tokenizer.all_special_tokens if re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", t)]


def iso_language(code: str | None) -> str | None:
    """A language code as kdmt's pairs name it: de for M2M100's de, MBart's de_DE and NLLB's deu_Latn
    (three-letter codes stay as they are, but for those whose BLEU is tokenized otherwise)."""
    if code is None:
        return None
    base = code.split("_")[0]
    return _ISO_639_1.get(base, base)


class HuggingFaceText:
    """Text to token ids and back with a Hugging Face tokenizer: `prefix` before every source line, the
    source language set, and the target language's token (`target_prefix`) forced first."""

    def __init__(self, tokenizer: Any, needs_languages: bool, options: PretrainedOptions, kind: str, name: str):
        self.tokenizer, self.prefix = tokenizer, options.source_prefix
        self.target_prefix: list[int] = []
        if not needs_languages:
            return
        known = language_codes(tokenizer)
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        for option, code in (("--src-lang", options.src_lang), ("--tgt-lang", options.tgt_lang)):
            if code is None:
                raise KdmtError(f"{name}: a {kind} model needs {option} (its codes: {shown})")
            if code not in known:
                raise KdmtError(f"{name}: {option} {code!r} is not one of its language codes ({shown})")
        try:
            tokenizer.src_lang, tokenizer.tgt_lang = options.src_lang, options.tgt_lang
        except (KeyError, ValueError) as e:
            raise KdmtError(f"{name}: its tokenizer cannot take these language codes ({e})") from None
        ids = [tokenizer.convert_tokens_to_ids(t) for t in (options.tgt_lang, f"__{options.tgt_lang}__")]
        self.target_prefix = [next(i for i in ids if i is not None and i != tokenizer.unk_token_id)]

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Each line's ids, as the tokenizer makes them (EOS and any source language token included)."""
        return self.tokenizer([self.prefix + line for line in lines])["input_ids"]

    def decode(self, tokens: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def target_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.tokenizer(text_target=texts)["input_ids"])

    def to_tokens(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)

    def to_ids(self, tokens: list[str]) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids(tokens)


class SentencePieceText:
    """Text to token ids and back for an OPUS-MT CTranslate2 directory: source.spm and target.spm, the ids
    those of the model's vocabularies. A source prefix that is a target token (>>fr<<) stays whole."""

    def __init__(self, directory: Path, config: dict[str, Any], options: PretrainedOptions):
        import sentencepiece as spm

        self.src_sp, self.tgt_sp = (spm.SentencePieceProcessor(model_file=str(directory / f)) for f in OPUS_SPM)
        shared = _vocabulary(directory, "shared_vocabulary")
        self.src_pieces = shared or _vocabulary(directory, "source_vocabulary")
        self.tgt_pieces = shared or _vocabulary(directory, "target_vocabulary")
        if not self.src_pieces or not self.tgt_pieces:
            raise KdmtError(f"{directory}: no vocabulary (shared_vocabulary.json or source/target_vocabulary.json)")
        self.src_ids = {p: i for i, p in enumerate(self.src_pieces)}
        self.tgt_ids = {p: i for i, p in enumerate(self.tgt_pieces)}
        self.unk = self.src_ids.get(config.get("unk_token", "<unk>"), 0)
        self.eos = self.src_ids.get(config.get("eos_token", "</s>"))
        self.prefix = options.source_prefix
        self.target_prefix: list[int] = []

    def encode(self, lines: list[str]) -> list[list[int]]:
        out = []
        for line in lines:
            text = self.prefix + line
            tag = re.match(r"(>>[^<>\s]+<<)\s*", text)
            pieces = ([tag.group(1)] if tag else []) + self.src_sp.encode(
                text[tag.end() :] if tag else text, out_type=str
            )
            out.append([self.src_ids.get(p, self.unk) for p in pieces] + ([self.eos] if self.eos is not None else []))
        return out

    def decode(self, tokens: list[list[int]]) -> list[str]:
        return [self.tgt_sp.decode_pieces([self.tgt_pieces[i] for i in ids]) for ids in tokens]

    def target_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) + 1 for ids in self.tgt_sp.encode(texts))

    def to_tokens(self, ids: list[int]) -> list[str]:
        return [self.src_pieces[i] for i in ids]

    def to_ids(self, tokens: list[str]) -> list[int]:
        return [self.tgt_ids[t] for t in tokens]


def _vocabulary(directory: Path, stem: str) -> list[str] | None:
    """A CTranslate2 vocabulary file (.json: a list; .txt: a token a line), or None."""
    if (json_file := directory / f"{stem}.json").is_file():
        return json.loads(json_file.read_text(encoding="utf-8"))
    if (txt := directory / f"{stem}.txt").is_file():
        return txt.read_text(encoding="utf-8").split("\n")[:-1]
    return None


class PretrainedTranslator(TextTranslator):
    """A TextTranslator whose text becomes ids and back through the model's own tokenizer (`text`)."""

    text: HuggingFaceText | SentencePieceText

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.text.encode(lines)

    def decode(self, tokens: list[list[int]]) -> list[str]:
        return self.text.decode(tokens)

    def target_tokens(self, texts: list[str]) -> int:
        return self.text.target_tokens(texts)

    def _limits(self, n_src_tokens: int) -> tuple[int, int]:
        """The most and fewest tokens a hypothesis may have after the target prefix (EOS not counted)."""
        limit = self.max_output_length(n_src_tokens)
        return limit, min(self.options.min_len, limit)


def max_positions(config: dict[str, Any], tokenizer: Any | None = None) -> int:
    """The model's position table (T5 has none: its tokenizer's maximum length, else 512)."""
    if n := config.get("max_position_embeddings") or config.get("n_positions"):
        return int(n)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1_000_000 else DEFAULT_MAX_POSITIONS


class TransformersTranslator(PretrainedTranslator):
    """Translates with a Hugging Face model's generate() under kdmt's search options (beam, length penalty,
    a·|source| + b tokens at most, EOS forced there, min_len at least, n-best; early stopping once `beam`
    hypotheses are finished, fairseq's rule as kdmt's), in batches of --batch-tokens source tokens that
    share their length limit; PAD never generated. bf16 on CUDA with `bf16`."""

    def __init__(
        self,
        directory: Path,
        config: dict[str, Any],
        options: SearchOptions,
        pretrained: PretrainedOptions,
        device: torch.device,
        bf16: bool = True,
        name: str | None = None,
    ):
        transformers = require("transformers")
        kind, needs_languages, _ = MODEL_TYPES[config["model_type"]]
        tokenizer = load_tokenizer(directory)
        self.text = HuggingFaceText(tokenizer, needs_languages, pretrained, kind, name or str(directory))
        dtype = torch.bfloat16 if device.type == "cuda" and bf16 else None
        self.model = load_model(directory, device, dtype)
        self.options, self.device = options, device
        self.max_positions = max_positions(config, tokenizer)
        self.max_src_tokens = min(options.max_src_tokens, self.max_positions)
        c = self.model.config
        self.pad = c.pad_token_id
        eos = c.eos_token_id
        start = c.decoder_start_token_id if c.decoder_start_token_id is not None else self.pad
        suppress = sorted({self.pad, *(self.model.generation_config.suppress_tokens or [])})
        prefix = self.text.target_prefix
        self.model.generation_config = transformers.GenerationConfig(  # kdmt's search alone, none of the model's
            num_beams=options.beam,
            length_penalty=options.lenpen,
            early_stopping=True if options.beam > 1 else None,
            do_sample=False,
            decoder_start_token_id=start,
            bos_token_id=getattr(c, "bos_token_id", None),  # T5 has none
            eos_token_id=eos,
            pad_token_id=self.pad,
            forced_bos_token_id=prefix[0] if prefix else None,
            forced_eos_token_id=eos,
            suppress_tokens=suppress,
        )

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @torch.no_grad()
    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None, lines: list[int] | None = None
    ) -> list[list[Hypothesis]]:
        o, n_prefix = self.options, len(self.text.target_prefix)
        out: list[list[Hypothesis]] = [[] for _ in src]
        for group in self.limit_groups(src):
            limit, shortest = self._limits(len(src[group[0]]))
            width = max(len(src[i]) for i in group)
            x = torch.full((len(group), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(x)
            for row, i in enumerate(group):
                x[row, : len(src[i])], mask[row, : len(src[i])] = torch.tensor(src[i]), 1
            result = self.model.generate(
                input_ids=x.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=n_prefix + limit + 1,  # the hypothesis, then EOS (forced there)
                min_new_tokens=n_prefix + shortest,
                num_return_sequences=nbest,
                output_scores=True,
                return_dict_in_generate=True,
            )
            sequences = result.sequences[:, 1:].tolist()  # without the decoder's start token
            if o.beam == 1:
                steps = self.model.compute_transition_scores(result.sequences, result.scores, normalize_logits=True)
                steps = steps.float().tolist()
            eos = self.model.generation_config.eos_token_id
            for row, tokens in enumerate(sequences):
                end = tokens.index(eos) if eos in tokens else len(tokens)
                hyp = tokens[n_prefix:end]
                if o.beam == 1:
                    score = sum(steps[row][n_prefix : end + 1]) / (len(hyp) + 1) ** o.lenpen
                else:
                    score = float(result.sequences_scores[row])
                out[group[row // nbest]].append(Hypothesis(hyp, score))
            if progress:
                progress(len(group))
        return out


class PretrainedCTranslate2Translator(PretrainedTranslator):
    """Translates with a CTranslate2 directory (converted from a Hugging Face model, or made elsewhere)
    under kdmt's search options through the decoding loop of kdmt's own exports (kdmt.ctranslate2_search),
    with the model's own tokenizer (`text`) and the target language's token as target_prefix."""

    def __init__(
        self,
        directory: Path,
        text: HuggingFaceText | SentencePieceText,
        options: SearchOptions,
        max_positions: int,
        device: str = "cpu",
        threads: int = 0,
        device_index: int = 0,
    ):
        self.config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        inter_threads = (threads or torch.get_num_threads()) if device == "cpu" else 1
        self.translator = load_ctranslate2(directory, device, device_index, inter_threads)
        self.directory, self.text, self.options = directory, text, options
        self.device = torch.device(device, device_index) if device == "cuda" else torch.device(device)
        self.max_positions = max_positions
        self.max_src_tokens = min(options.max_src_tokens, max_positions)
        self.target_prefix = text.to_tokens(text.target_prefix) if isinstance(text, HuggingFaceText) else []
        target = _vocabulary(directory, "shared_vocabulary") or _vocabulary(directory, "target_vocabulary") or []
        pad = getattr(getattr(text, "tokenizer", None), "pad_token", None) or "<pad>"
        self.suppress = [[pad]] if pad in target else None  # a Marian model has none (its decoder starts from zeros)

    def num_parameters(self) -> int:
        return ctranslate2_parameters(self.directory / "model.bin")

    def translate_ids(
        self, src: list[list[int]], nbest: int = 1, progress: Progress | None = None, lines: list[int] | None = None
    ) -> list[list[Hypothesis]]:
        strip = 1 if self.config.get("add_source_eos") else 0  # the model appends EOS itself
        return translate_groups(
            self,
            self.translator,
            src,
            lambda ids: self.text.to_tokens(ids[: len(ids) - strip]),
            self.text.to_ids,
            {"beam_size": self.options.beam},
            nbest,
            progress,
            self.target_prefix,
            self.suppress,
        )


def ctranslate2_parameters(model_bin: Path) -> int:
    """The weights in a CTranslate2 model.bin, counted from its header: version, spec name, revision, then
    each variable's name, shape, type and bytes (skipped)."""
    with open(model_bin, "rb") as f:

        def read(fmt: str) -> tuple:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def string() -> str:
            return f.read(read("<H")[0]).decode("utf-8", "replace")

        read("<I")  # format version
        string()  # spec name
        read("<I")  # spec revision
        total = 0
        for _ in range(read("<I")[0]):
            string()
            rank = read("<B")[0]
            shape = read(f"<{rank}I")
            read("<B")  # dtype
            f.seek(read("<I")[0], os.SEEK_CUR)
            total += math.prod(shape)
    return total


def open_pretrained(
    name: Path,
    engine: str | None,
    options: SearchOptions,
    pretrained: PretrainedOptions,
    device: torch.device,
    bf16: bool = True,
    threads: int = 0,
) -> tuple[dict[str, Any], TextTranslator]:
    """A translator for a Hugging Face directory or hub id (`engine` ctranslate2 or transformers; None: the
    default_engine), or for a CTranslate2 directory made elsewhere, with the record of what it is."""
    directory = resolve(name)
    record = read_record(directory)
    if is_foreign_ctranslate2(directory) and not is_huggingface(directory):
        if engine not in (None, "ctranslate2") or pretrained.quantization != "float32":
            raise KdmtError(
                f"{directory}: a CTranslate2 directory translates as it is (--engine ctranslate2, no --quantization)"
            )
        return _open_foreign_ctranslate2(directory, options, pretrained, device, threads)
    config = check_safe(directory)
    model_type = config["model_type"]
    engine = engine or default_engine(directory)
    if engine not in ("ctranslate2", "transformers"):
        raise KdmtError(f"{name}: a Hugging Face model translates with --engine ctranslate2 or transformers")
    if engine == "transformers":
        if pretrained.quantization != "float32":
            raise KdmtError("--quantization goes with --engine ctranslate2 (the transformers engine: --bf16 on CUDA)")
        translator: TextTranslator = TransformersTranslator(
            directory, config, options, pretrained, device, bf16, str(name)
        )
        engine_name = "transformers"
    else:
        kind, needs_languages, _ = MODEL_TYPES[model_type]
        ct2_dir = converted(directory, pretrained.quantization)
        tokenizer = load_tokenizer(directory)
        text = HuggingFaceText(tokenizer, needs_languages, pretrained, kind, str(name))
        positions = max_positions(config, tokenizer)
        translator = PretrainedCTranslate2Translator(
            ct2_dir, text, options, positions, device.type, threads, device.index or 0
        )
        engine_name = f"ctranslate2 {pretrained.quantization}"
    described = {"path": str(name), "type": model_type, "engine": engine_name}
    if MODEL_TYPES[model_type][1]:
        described |= {"src_lang": pretrained.src_lang, "tgt_lang": pretrained.tgt_lang}
    if record is not None:  # kdmt's own export: the checkpoint's record (its pairs, its tags)
        return {**record["meta"], "pretrained": described}, translator
    meta = {"role": "teacher", "pretrained": described}
    if MODEL_TYPES[model_type][1]:
        meta |= {"src_lang": iso_language(pretrained.src_lang), "tgt_lang": iso_language(pretrained.tgt_lang)}
    return meta, translator


def _open_foreign_ctranslate2(
    directory: Path, options: SearchOptions, pretrained: PretrainedOptions, device: torch.device, threads: int
) -> tuple[dict[str, Any], TextTranslator]:
    """A CTranslate2 directory made elsewhere, with source.spm/target.spm or a Hugging Face tokenizer."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise KdmtError(f"{directory}: no readable CTranslate2 config.json") from None
    if all((directory / f).is_file() for f in OPUS_SPM):
        text: HuggingFaceText | SentencePieceText = SentencePieceText(directory, config, pretrained)
        positions, kind = DEFAULT_MAX_POSITIONS, "OPUS-MT (source.spm, target.spm)"
    elif (directory / "tokenizer_config.json").is_file():
        refuse_custom_code(directory)
        tokenizer = load_tokenizer(directory)
        needs_languages = bool(language_codes(tokenizer))
        text = HuggingFaceText(tokenizer, needs_languages, pretrained, "many-to-many", str(directory))
        positions, kind = max_positions({}, tokenizer), type(tokenizer).__name__
    else:
        raise KdmtError(
            f"{directory}: a CTranslate2 directory needs its tokenizer: source.spm and target.spm (OPUS-MT), "
            "or a Hugging Face tokenizer's files (tokenizer_config.json)"
        )
    translator = PretrainedCTranslate2Translator(
        directory, text, options, positions, device.type, threads, device.index or 0
    )
    described = {"path": str(directory), "type": f"ctranslate2 directory, {kind}", "engine": "ctranslate2"}
    meta: dict[str, Any] = {"role": "teacher", "pretrained": described}
    if text.target_prefix:
        meta |= {"src_lang": iso_language(pretrained.src_lang), "tgt_lang": iso_language(pretrained.tgt_lang)}
    return meta, translator
