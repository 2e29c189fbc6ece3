"""kdmt eval's work: models translate a test set side by side, each scored (kdmt.metrics), timed and sized, and
each tested against the first."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from kdmt.checkpoint import LEGACY_SUFFIX, SUFFIX
from kdmt.data import read_parallel
from kdmt.errors import KdmtError
from kdmt.files import write_lines
from kdmt.languages import Pair, model_inputs, target_language
from kdmt.metrics import BOOTSTRAP_SAMPLES, paired_bootstrap, score
from kdmt.pretrained import is_hub_id, iso_language, resolve
from kdmt.progress import ProgressLine
from kdmt.translate import TextTranslator

WARM_UP_LINES = 32  # translated untimed before the timed run, which then pays no start-up costs
OpenModel = Callable[[Path], tuple[list[dict], TextTranslator]]  # a model's records and its translator


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


@dataclass
class Evaluation:
    """Models scored side by side on one test set."""

    reports: list[dict]  # EvalReport.to_dict() of each model, in order
    names: dict[str, str]  # each model's short name (short_names)
    compared: bool  # whether each model after the first was tested against it (compare_with_first)
    tgt_lang: str | None  # the target language, BLEU's tokenizer


def evaluate_models(
    models: list[Path],
    src: Path,
    ref: Path,
    open_model: OpenModel,
    pair: str | None = None,
    tgt_lang: str | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    hyps_dir: Path | None = None,
    console: Console | None = None,
) -> Evaluation:
    """kdmt eval: each model (a checkpoint, a model directory, a hub id; opened by `open_model`) translates
    `src` (with `pair`'s tags for a multilingual model) and is scored against `ref` (evaluate), into one target
    language (`tgt_lang`, else the one the models were trained into); each after the first is tested against
    it by `samples` resamples (compare_with_first). With `hyps_dir`, each model's translations are written there
    (NAME.hyp, NAME.PAIR.hyp)."""
    src_lines, ref_lines = read_parallel(src, ref)
    language_pair = Pair.parse(pair) if pair else None
    reports, languages = [], []
    for path in models:
        path = resolve(path) if is_hub_id(path) else path  # a hub id: its snapshot's directory
        metas, translator = open_model(path)
        inputs = model_inputs(src_lines, language_pair, metas[0])
        languages.append(iso_language(tgt_lang) or target_language(metas[0], language_pair))
        if languages[-1] != languages[0]:
            raise KdmtError(f"{path} translates into {languages[-1]}, not {languages[0]}: name the --tgt-lang")
        name = path.name if path.is_dir() else f"{path.parent.name}.{path.stem}"
        with ProgressLine(console or Console(quiet=True), f"eval {name}", len(src_lines), "sent", transient=True) as p:
            result, hyps = evaluate(translator, path, src, inputs, ref_lines, metas[0], p.advance, pair, languages[0])
        reports.append(result)
        if hyps_dir:
            write_lines(hyps_dir / f"{name}{f'.{pair}' if pair else ''}.hyp", hyps)
    names = short_names([r.checkpoint for r in reports])
    compared = compare_with_first(reports, names, ref_lines, languages[0], samples)
    return Evaluation([r.to_dict() for r in reports], names, compared, languages[0])


def short_names(checkpoints: list[str]) -> dict[str, str]:
    """Each checkpoint's path below the folder all of them share, without the file name when all checkpoint
    files have the same one: teacher1, student-seqkd, student-int8 (an exported directory); or
    checkpoint_best.safetensors, checkpoint_avg.safetensors. One alone keeps its path as given."""
    if len(set(checkpoints)) == 1:
        return {c: c for c in checkpoints}
    paths = [os.path.abspath(c) for c in checkpoints]
    common = os.path.commonpath([os.path.dirname(p) for p in paths])
    names = [os.path.relpath(p, common) for p in paths]
    files = [i for i, p in enumerate(paths) if p.endswith((SUFFIX, LEGACY_SUFFIX))]  # the others: exported directories
    if len({os.path.basename(paths[i]) for i in files}) == 1 and all(os.sep in names[i] for i in files):
        for i in files:
            names[i] = os.path.dirname(names[i])
    return dict(zip(checkpoints, names))


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
