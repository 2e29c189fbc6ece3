"""The one home of "pick a candidate": which of a source's candidates (a beam's n-best, or samples) the
distilled corpus keeps, and in what order of preference, for `kdmt distill --select` and `--keep`.

- `best`: the candidates in the order the engine gives them (the beam's best first; samples as drawn);
- `seq-inter`: the closest to the reference, by sentence BLEU or chrF (Kim & Rush's seq-inter);
- `mbr`: minimum Bayes risk, the candidate with the highest mean utility (sentence chrF, or BLEU) against
  the other candidates (the medoid);
- `score`: the highest score of the teacher (the ensemble's), its log-probability divided by
  length**lenpen (per token with --lenpen 1).

Ties keep the earlier candidate. MBR's chrF is fastchrf's pairwise_chrf where it is installed (the `mbr`
extra: 8 (N = 8) to 17 (N = 32) times as fast as sacrebleu's sentence_score, with the same scores),
otherwise sacrebleu's statistics over each distinct candidate's character n-grams, read once (2.4 to 3.5
times as fast); scripts/bench_mbr.py measures the three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sacrebleu.metrics import CHRF
from sacrebleu.metrics.helpers import extract_all_char_ngrams

from kdmt.errors import KdmtError

try:
    import fastchrf
except ImportError:  # optional (the mbr extra)
    fastchrf = None
from kdmt.metrics import bleu_metric

if TYPE_CHECKING:
    from kdmt.translate import Candidate

SELECTIONS = ("best", "seq-inter", "mbr", "score")
METRICS = ("bleu", "chrf")


def check_selection(select: str, metric: str) -> None:
    if select not in SELECTIONS or metric not in METRICS:
        raise KdmtError(f"--select takes {', '.join(SELECTIONS)}; --select-metric {' or '.join(METRICS)}")


def ranked(merits: Sequence[float]) -> list[int]:
    """The one rule of picking: the indices of `merits`, the highest merit first, the earlier on ties."""
    return sorted(range(len(merits)), key=lambda i: (-merits[i], i))


def best_text(candidates: list[Candidate]) -> str:
    """A source's best translation: its first candidate's text (engines and `choose` put the best first);
    an empty line when it has none (an empty or over-long source, or every candidate dropped)."""
    return candidates[0].text if candidates else ""


def sentence_scores(texts: list[str], reference: str, metric: str, tgt_lang: str | None = None) -> list[float]:
    """Each text's sentence BLEU (tokenized for `tgt_lang`: kdmt.metrics.bleu_metric) or chrF against
    the reference."""
    scorer = bleu_metric(tgt_lang, sentence=True) if metric == "bleu" else CHRF()
    return [scorer.sentence_score(text, [reference]).score for text in texts]


def closest(texts: list[str], reference: str, metric: str, tgt_lang: str | None = None) -> int:
    """The index of the text with the highest sentence score against the reference (first on ties)."""
    return ranked(sentence_scores(texts, reference, metric, tgt_lang))[0]


def pairwise_chrf(texts: list[str]) -> list[list[float]]:
    """u[i][j]: the sentence chrF of texts[i] against the reference texts[j] (sacrebleu's): by fastchrf where
    it is installed, else by sacrebleu_pairwise_chrf."""
    if fastchrf is None:
        return sacrebleu_pairwise_chrf(texts)
    return fastchrf.pairwise_chrf([texts], [texts])[0]


def sacrebleu_pairwise_chrf(texts: list[str]) -> list[list[float]]:
    """pairwise_chrf by sacrebleu's statistics, each text's character n-grams extracted once."""
    chrf = CHRF()
    ngrams = [extract_all_char_ngrams(t, chrf.char_order, chrf.whitespace) for t in texts]

    def utility(hyp: list[Counter], ref: list[Counter]) -> float:
        stats = [x for h, r in zip(hyp, ref) for x in chrf._get_match_statistics(h, r)]
        return chrf._compute_f_score(stats)

    return [[utility(h, r) for r in ngrams] for h in ngrams]


def mbr_utilities(texts: list[str], metric: str = "chrf", tgt_lang: str | None = None) -> list[float]:
    """Each text's mean utility against the other texts (duplicates count as often as they occur): the
    MBR expectation with the candidates as pseudo-references. One text: 0."""
    distinct = list(dict.fromkeys(texts))
    if metric == "chrf":
        u = pairwise_chrf(distinct)
    else:
        u = [sentence_scores(distinct, ref, "bleu", tgt_lang) for ref in distinct]
        u = [list(row) for row in zip(*u)]  # u[i][j]: text i against reference j
    where = {t: i for i, t in enumerate(distinct)}
    count = Counter(texts)
    others = max(len(texts) - 1, 1)
    mean = [(sum(count[r] * u[i][j] for j, r in enumerate(distinct)) - u[i][i]) / others for i in range(len(distinct))]
    return [mean[where[t]] for t in texts]


def mbr(texts: list[str], metric: str = "chrf", tgt_lang: str | None = None) -> int:
    """The index of the medoid: the text with the highest mean utility against the others (first on ties)."""
    return ranked(mbr_utilities(texts, metric, tgt_lang))[0]


def preference(
    candidates: list[Candidate],
    select: str,
    metric: str,
    reference: str | None = None,
    tgt_lang: str | None = None,
) -> list[float]:
    """Each candidate's merit under `select` (higher is better)."""
    texts = [c.text for c in candidates]
    if select == "seq-inter":
        return sentence_scores(texts, reference or "", metric, tgt_lang)
    if select == "mbr":
        return mbr_utilities(texts, metric, tgt_lang)
    if select == "score":
        return [c.score for c in candidates]
    return [-float(i) for i in range(len(candidates))]


def choose(
    candidates: list[Candidate],
    select: str,
    metric: str,
    keep: int = 1,
    reference: str | None = None,
    tgt_lang: str | None = None,
) -> list[Candidate]:
    """The `keep` most preferred candidates with distinct texts, best first (earlier first on ties)."""
    chosen: dict[str, Candidate] = {}
    for i in ranked(preference(candidates, select, metric, reference, tgt_lang)):
        chosen.setdefault(candidates[i].text, candidates[i])
        if len(chosen) == keep:
            break
    return list(chosen.values())
