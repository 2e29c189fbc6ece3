"""kdmt's own search beside CTranslate2 (float32 and int8), same weights, same batches, in one run.

Each checkpoint is exported with `kdmt export` (float32 and int8) and the test set translated by the three
engines, --repeats times in turn after an untimed warm-up; the table gives BLEU, chrF, the median
sentences/s, the ratio to kdmt, and how often each engine's output equals kdmt's. With --distill-src, the
first checkpoint (the teacher) also distils the first --distill-lines lines of that corpus through
`kdmt distill`'s code with --engine kdmt and --engine ctranslate2 (repeated the same way; a fresh output
each time), and the share of identical lines is reported. With --huggingface, each checkpoint's
transformers export translates the test set with generate() (beam 5; one run), beside kdmt's output.
Example (2 CPU threads, beam 5):

    python scripts/bench_engines.py work/demo/teacher/checkpoint_best.safetensors \\
        work/demo/student-seqkd/checkpoint_best.safetensors \\
        --src data/multi30k/test_2016_flickr.de.gz --ref data/multi30k/test_2016_flickr.en.gz --threads 2 \\
        --distill-src work/demo/data/train.src --distill-lines 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import torch

from kdmt.checkpoint import load_checkpoint
from kdmt.data import read_parallel
from kdmt.device import describe_device
from kdmt.distill import DistillSettings, distill_corpus, teacher_identity
from kdmt.engines import CTranslate2Translator
from kdmt.evaluate import WARM_UP_LINES, size_on_disk
from kdmt.export import ExportOptions, export_checkpoint, huggingface_limit
from kdmt.files import read_lines, write_lines
from kdmt.metrics import score
from kdmt.translate import SearchOptions, TextTranslator, Translator


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each function over `repeats` rounds (the functions take turns), and a first result
    of each from an untimed run."""
    outputs = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def engines(
    checkpoint: Path, work: Path, options: SearchOptions, threads: int
) -> dict[str, tuple[TextTranslator, Path]]:
    """kdmt's translator of a checkpoint, and CTranslate2's of its float32 and int8 exports, with their files."""
    out: dict[str, tuple[TextTranslator, Path]] = {
        "kdmt float32": (Translator([load_checkpoint(checkpoint)], options), checkpoint)
    }
    for quantization in ("float32", "int8"):
        directory = work / f"{checkpoint.parent.name}-{quantization}"
        export_checkpoint(checkpoint, directory, ExportOptions("ctranslate2", quantization), force=True)
        out[f"ctranslate2 {quantization}"] = (CTranslate2Translator(directory, options, "cpu", threads), directory)
    return out


def translation_rows(args, checkpoint: Path, work: Path) -> list[dict]:
    src, refs = read_parallel(args.src, args.ref)
    translators = engines(checkpoint, work, SearchOptions(beam=args.beam), args.threads)
    for t, _ in translators.values():
        t.translate(src[:WARM_UP_LINES])
    fns = {name: (lambda t=t: t.translate(src)) for name, (t, _) in translators.items()}
    seconds, outputs = timed(fns, args.repeats)
    rows = []
    for name, hyps in outputs.items():
        s = score(hyps, refs)
        rows.append(
            {
                "model": str(checkpoint),
                "engine": name,
                "bleu": round(s.bleu, 2),
                "chrf": round(s.chrf, 2),
                "sentences_per_s": round(len(src) / seconds[name], 1),
                "speed_vs_kdmt": round(seconds["kdmt float32"] / seconds[name], 2),
                "same_output_as_kdmt": round(sum(a == b for a, b in zip(hyps, outputs["kdmt float32"])) / len(src), 4),
                "size_mb": round(size_on_disk(translators[name][1]) / 1e6, 1),
            }
        )
    return rows


def huggingface_rows(args, checkpoint: Path, work: Path) -> list[dict]:
    """The checkpoint exported to transformers, translating the test set with generate() and the exported
    generation config (beam 5), in batches of sentences of one length so that each has kdmt's length limit."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    src, refs = read_parallel(args.src, args.ref)
    directory = work / f"{checkpoint.parent.name}-hf"
    export_checkpoint(checkpoint, directory, ExportOptions("huggingface"), force=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    kdmt = Translator([load_checkpoint(checkpoint)], SearchOptions(beam=5))
    ids = tokenizer(src).input_ids
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_length.setdefault(len(x), []).append(i)
    hyps = [""] * len(src)
    start = time.perf_counter()
    with torch.inference_mode():
        for length, rows in by_length.items():
            for k in range(0, len(rows), 64):
                batch = tokenizer([src[i] for i in rows[k : k + 64]], return_tensors="pt", padding=True)
                out = model.generate(**batch, max_new_tokens=huggingface_limit(model.generation_config, length))
                for i, text in zip(rows[k : k + 64], tokenizer.batch_decode(out, skip_special_tokens=True)):
                    hyps[i] = text
    seconds = time.perf_counter() - start
    ours = kdmt.translate(src)
    s = score(hyps, refs)
    return [
        {
            "model": str(checkpoint),
            "engine": "transformers generate() float32",
            "bleu": round(s.bleu, 2),
            "chrf": round(s.chrf, 2),
            "sentences_per_s": round(len(src) / seconds, 1),  # one run, not a median
            "same_output_as_kdmt": round(sum(a == b for a, b in zip(hyps, ours)) / len(src), 4),
        }
    ]


def distill_rows(args, teacher: Path, work: Path) -> list[dict]:
    source = work / "distill.src"
    write_lines(source, read_lines(args.distill_src)[: args.distill_lines])
    options = SearchOptions(beam=args.beam)
    exported = work / f"{teacher.parent.name}-float32"  # by translation_rows
    translators = {
        "kdmt": Translator([load_checkpoint(teacher)], options),
        "ctranslate2 float32": CTranslate2Translator(exported, options, "cpu", args.threads),
    }
    runs = itertools.count()

    def run(name: str) -> list[str]:
        out = work / f"distill-{next(runs)}.tgt"
        settings = DistillSettings(
            teachers=[teacher_identity(teacher)],
            source=str(source),
            beam=args.beam,
            lenpen=1.0,
            max_len_a=1.5,
            max_len_b=10,
            max_src_tokens=1024,
            nbest=1,
            select=None,
            select_metric="bleu",
            reference=None,
            shard_size=1000,
            engine=name,
        )
        distill_corpus(translators[name], settings, out)
        return read_lines(out)

    seconds, outputs = timed({name: (lambda n=name: run(n)) for name in translators}, args.repeats)
    n = len(outputs["kdmt"])
    return [
        {
            "model": str(teacher),
            "engine": name,
            "lines": n,
            "lines_per_s": round(n / seconds[name], 1),
            "speed_vs_kdmt": round(seconds["kdmt"] / seconds[name], 2),
            "same_lines_as_kdmt": round(sum(a == b for a, b in zip(outputs[name], outputs["kdmt"])) / n, 4),
        }
        for name in translators
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--ref", type=Path, required=True)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--distill-src", type=Path, help="A corpus the first checkpoint distils with both engines.")
    ap.add_argument("--distill-lines", type=int, default=2000)
    ap.add_argument("--huggingface", action="store_true", help="Also the transformers export (beam 5).")
    ap.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "device": describe_device(torch.device("cpu")),
            "torch": torch.__version__,
            "ctranslate2": ctranslate2.__version__,
            "threads": args.threads,
            "beam": args.beam,
            "repeats": args.repeats,
            "translation": [row for c in args.checkpoints for row in translation_rows(args, c, work)],
        }
        if args.huggingface:
            result["huggingface"] = [row for c in args.checkpoints for row in huggingface_rows(args, c, work)]
        if args.distill_src:
            result["distill"] = distill_rows(args, args.checkpoints[0], work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
