"""What is particular to students: their training corpus, vocabulary checks, initialisation from a teacher,
and the assembly of a student, its corpus and its objective from train-student's options."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdmt.cache import cached, content_key
from kdmt.checkpoint import Checkpoint, load_checkpoint
from kdmt.config import option
from kdmt.corpus import CHUNK_PAIRS, CorpusSink, encode_flat, ids_dtype, open_corpus, write_corpus
from kdmt.data import PreparedData, TokenizedCorpus, stream_parallel
from kdmt.errors import KdmtError
from kdmt.files import stream_lines
from kdmt.languages import PairRows, PairSampler, per_pair
from kdmt.model import ModelConfig, Transformer
from kdmt.objectives import Distillation, SelectiveKD
from kdmt.options import COUNT, NONNEGATIVE, POSITIVE, SHARE, Range
from kdmt.parallel import chunks
from kdmt.pretrained import is_huggingface
from kdmt.pretrained_kd import PretrainedTeacher, load_pretrained_teacher
from kdmt.soft_targets import SoftTargetStore
from kdmt.vocab import Vocab, check_vocabularies, vocab_key


def check_vocabulary(teachers: list[tuple[Path, Checkpoint]], src_vocab: Vocab, tgt_vocab: Vocab) -> None:
    """Every teacher must use the data's sentencepiece models: the student shares its tokenization."""
    for path, t in teachers:
        error = f"vocabulary mismatch: {path} was trained with other sentencepiece models than this data"
        check_vocabularies((src_vocab, tgt_vocab), (t.src_vocab, t.tgt_vocab), error)


def load_teachers(
    data: PreparedData, paths: Sequence[Path], pairs: Sequence[str], device: torch.device, topk: int | None = None
) -> list[tuple[Path, Checkpoint]]:
    """The teachers' checkpoints, each with the data's sentencepiece models (check_vocabulary; a Hugging
    Face directory: the data prepared with --vocab-from it, kdmt.pretrained_kd) and, where
    `pairs` names the pair each one teaches (none: one pair), trained on that pair; each with at least `topk`
    pieces in its target vocabulary (word-KD keeps its `topk` most probable)."""
    teachers = [
        (path, load_pretrained_teacher(path, data, device) if is_huggingface(path) else load_checkpoint(path, device))
        for path in paths
    ]
    check_vocabulary(teachers, data.src_vocab, data.tgt_vocab)
    for name, (path, teacher) in zip(pairs, teachers):
        if name not in teacher.meta.get("pairs", [name]):
            raise KdmtError(f"{path} was not trained on {name} (its pairs: {', '.join(teacher.meta['pairs'])})")
    for path, t in teachers:
        if topk is not None and topk > len(t.tgt_vocab):
            raise KdmtError(f"--topk {topk} exceeds the {len(t.tgt_vocab)} pieces of {path}'s target vocabulary")
    return teachers


def mix_indices(n_distilled: int, n_reference: int, ref_share: float, seed: int) -> tuple[Sequence[int], Sequence[int]]:
    """The positions of the distilled and of the reference pairs that make the most pairs such that references
    make up `ref_share` of them (a seeded sample of the larger side, in the order drawn)."""
    if ref_share <= 0:
        return range(n_distilled), range(0)
    if ref_share >= 1:
        return range(0), range(n_reference)
    n_ref = min(n_reference, round(n_distilled * ref_share / (1 - ref_share)))
    n_dist = min(n_distilled, round(n_ref * (1 - ref_share) / ref_share))
    rng = random.Random(seed)
    return rng.sample(range(n_distilled), n_dist), rng.sample(range(n_reference), n_ref)


def student_corpus(
    data: PreparedData,
    distilled: Sequence[str | Path] | None,
    ref_share: float,
    seed: int,
    fallback_to_reference: bool = False,
) -> tuple[TokenizedCorpus, dict]:
    """The student's training pairs: the distilled targets, the references, or both mixed with `ref_share`
    references. `distilled` is one file line-aligned with DATA/train.src or, for several pairs, one
    PAIR=FILE for each, line-aligned with DATA/train.PAIR.src. A pair whose distilled line is empty (an
    empty, over-long or filtered line of `kdmt distill`) is dropped, or with `fallback_to_reference`
    takes the reference target instead. Where FILE.keep is there (`kdmt distill --keep`), each of its
    targets is one more pair, with its line's source, after that line's (counted as extra_targets). On the
    references alone, this is DATA's own corpus; with distilled files, a corpus tokenized once into
    DATA/student-HASH.* (kdmt.corpus; HASH names the files' paths and these settings), and mapped from there
    while the distilled files (by content), the data and these settings are the same (kdmt.cache: built
    once, under DATA/student-HASH.lock)."""
    train, pairs = data.corpus("train"), data.info.pair_rows("train")
    if not distilled:
        counts = {"dropped_empty": 0, "fallback_ref": 0, "extra_targets": 0}
        counts |= {"pair_rows": pairs.counts} if pairs else {}
        return train, _corpus_record(None, 1.0, len(train), counts)
    files, per_pair_rows = _distilled_files(distilled, pairs)
    for file in files:
        if not file.is_file():
            raise KdmtError(f"{file}: no such file")
    if pairs is not None and ref_share > 0:
        raise KdmtError("several pairs: --ref-share is not supported; --fallback-ref keeps references where needed")
    settings = {"ref_share": ref_share, "seed": seed if 0 < ref_share < 1 else None, "fallback": fallback_to_reference}
    named = settings | {"files": [str(f.resolve()) for f in files]}
    prefix = data.root / f"student-{hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:8]}"
    key = {**settings, **vocab_key(data.src_vocab, data.tgt_vocab), "data": train.fingerprint()}
    key["distilled"] = content_key(files + [k for k in map(keep_file, files) if k])

    def build() -> None:
        counts = {"dropped_empty": 0, "fallback_ref": 0, "extra_targets": 0}
        counts |= {"pair_rows": [0] * len(pairs.names)} if pairs else {}
        lines = _distilled_lines(files, per_pair_rows, data.root / "train.tgt", fallback_to_reference, counts)
        _write_student_corpus(prefix, key, data, train, lines, counts, settings, ", ".join(map(str, files)))

    corpus, counts = cached(Path(f"{prefix}.lock"), lambda: open_corpus(prefix, key), build, str(prefix))
    record = [f"{n}={f}" for n, f in zip(per_pair_rows.names, files)] if per_pair_rows else str(files[0])
    return corpus, _corpus_record(record, ref_share, len(corpus), counts)


def _distilled_files(values: Sequence[str | Path], pairs: PairRows | None) -> tuple[list[Path], PairRows | None]:
    """The distilled files, and the rows of each pair where there is one file per pair (PAIR=FILE)."""
    if len(values) == 1 and (pairs is None or str(values[0]).partition("=")[0] not in pairs.names):
        return [Path(values[0])], None
    if pairs is None:
        raise KdmtError("give one --distilled file, line-aligned with DATA/train.src")
    return per_pair(values, pairs.names, "--distilled PAIR=FILE"), pairs


def _corpus_record(distilled: str | list[str] | None, ref_share: float, pairs: int, counts: dict) -> dict:
    return {"distilled": distilled, "ref_share": ref_share, "pairs": pairs, **counts}


def _write_student_corpus(
    prefix: Path,
    key: dict,
    data: PreparedData,
    train: TokenizedCorpus,
    lines: Iterator[tuple[int, str]],
    counts: dict,
    settings: dict,
    names: str,
) -> None:
    """Tokenize the kept distilled `lines` with their sources, in line order (`counts` counts them): the
    student's corpus itself, or, to be mixed with references, a temporary one that the mix draws from."""
    pairs = data.info.pair_rows("train")
    dtype = ids_dtype(max(len(data.src_vocab), len(data.tgt_vocab)))
    empty = f"every line of {names} is empty (filtered by kdmt distill?): --fallback-ref trains on the references"
    if settings["ref_share"] <= 0:
        with write_corpus(prefix, dtype, key, counts) as sink:
            _tokenize_distilled(sink, lines, train, data.tgt_vocab, pairs, counts)
            if sink.pairs == 0:
                raise KdmtError(empty)
        return
    with tempfile.TemporaryDirectory(prefix=f".{prefix.name}.", dir=prefix.parent) as tmp:
        with write_corpus(Path(tmp) / "kept", dtype, {}) as sink:
            _tokenize_distilled(sink, lines, train, data.tgt_vocab)
        kept = open_corpus(Path(tmp) / "kept", {})[0] if sink.pairs else None
        drawn = mix_indices(sink.pairs, len(train), settings["ref_share"], settings["seed"])
        if sum(map(len, drawn)) == 0:
            raise KdmtError(empty)
        with write_corpus(prefix, dtype, key, counts) as out:
            for source, rows in zip((kept, train), drawn):
                for chunk in chunks(rows, CHUNK_PAIRS):
                    index = np.array(chunk, dtype=np.int64)
                    out.add(source.rows("src", index), source.rows("tgt", index))


def _distilled_lines(
    files: list[Path], per_pair_rows: PairRows | None, references: Path, fallback: bool, counts: dict
) -> Iterator[tuple[int, str]]:
    """(line number, target) of each kept line: the distilled line, or the reference where it is empty and
    `fallback`; the others are counted in `counts`."""
    if per_pair_rows is None:
        pairs = stream_parallel(files[0], references)
    else:
        pairs = zip(_per_pair_lines(files, per_pair_rows), stream_lines(references))
    starts = [0] + list(itertools.accumulate(per_pair_rows.counts))[:-1] if per_pair_rows else [0]
    extras = itertools.chain.from_iterable(
        _extra_targets(k, start) for file, start in zip(files, starts) if (k := keep_file(file))
    )
    extra = next(extras, None)
    for row, (hyp, ref) in enumerate(pairs):
        if hyp.strip():
            yield row, hyp
        elif fallback:
            counts["fallback_ref"] += 1
            yield row, ref
        else:
            counts["dropped_empty"] += 1
        while extra is not None and extra[0] == row:
            counts["extra_targets"] += 1
            yield extra
            extra = next(extras, None)
    if extra is not None:
        raise KdmtError(f"a --keep target of line {extra[0] + 1} is beyond the distilled lines (or out of order)")


def keep_file(distilled: Path) -> Path | None:
    """The more targets of a distilled file (`kdmt distill --keep`: DISTILLED.keep), where there are."""
    path = Path(f"{distilled}.keep")
    return path if path.is_file() else None


def _extra_targets(path: Path, start: int) -> Iterator[tuple[int, str]]:
    """(row, target) of each line `index ||| target` of `path` (kdmt distill's OUT.keep), the index counted
    from row `start`; the rows must come in order."""
    last = -1
    for n, line in enumerate(stream_lines(path), 1):
        index, sep, target = line.partition(" ||| ")
        if not sep or not index.isdigit() or int(index) < last:
            raise KdmtError(f"{path}:{n}: not a line `index ||| target` of kdmt distill --keep, in order")
        last = int(index)
        yield start + last, target


def _per_pair_lines(files: list[Path], rows: PairRows) -> Iterator[str]:
    """The lines of one file per pair, one after the other; each must hold exactly its pair's rows."""
    for file, name, count in zip(files, rows.names, rows.counts):
        n = 0
        for n, line in enumerate(stream_lines(file), 1):
            if n > count:
                break
            yield line
        if n != count:
            n = sum(1 for _ in stream_lines(file))
            raise KdmtError(f"line counts differ: {file} has {n} lines, the data's {name} sentences {count}")


def _tokenize_distilled(
    sink: CorpusSink,
    lines: Iterator[tuple[int, str]],
    train: TokenizedCorpus,
    vocab: Vocab,
    pairs: PairRows | None = None,
    counts: dict | None = None,
) -> None:
    """Write the kept lines with their sources; with several language `pairs`, count each pair's rows kept
    in counts["pair_rows"] (the lines come in order: each pair's rows stay together)."""
    for chunk in chunks(lines, CHUNK_PAIRS):
        rows = np.fromiter((row for row, _ in chunk), dtype=np.int64, count=len(chunk))
        sink.add(train.rows("src", rows), encode_flat(vocab, [target for _, target in chunk]))
        if pairs is not None and counts is not None:
            kept = np.bincount(pairs.index(rows), minlength=len(pairs.names))
            counts["pair_rows"] = [a + int(b) for a, b in zip(counts["pair_rows"], kept)]


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer, the teacher layer it is matched with: evenly spaced, last with last.

    layer_map(3, 6) == [1, 3, 5]; a student deeper than its teacher shares each teacher layer among
    consecutive student layers in equal blocks: layer_map(6, 3) == [0, 0, 1, 1, 2, 2].
    """
    if student_layers <= teacher_layers:
        return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]
    return [((i + 1) * teacher_layers - 1) // student_layers for i in range(student_layers)]


def parse_layers(text: str | None, student_layers: int, teacher_layers: int) -> list[int]:
    """'0,2,4' -> [0, 2, 4]; None -> evenly spaced teacher layers (layer_map)."""
    if text is None:
        return layer_map(student_layers, teacher_layers)
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise KdmtError(f"cannot read the layer list {text!r} (example: 0,2,4)") from None
    if len(layers) != student_layers or not all(0 <= x < teacher_layers for x in layers):
        raise KdmtError(f"the layer list {text!r} must name {student_layers} teacher layers in 0..{teacher_layers - 1}")
    return layers


@torch.no_grad()
def init_from_teacher(student: Transformer, teacher: Transformer, enc_layers: list[int], dec_layers: list[int]) -> None:
    """Copy the embeddings, final norms and the chosen teacher layers (student layer i <- teacher
    layer enc_layers[i]) into the student; the shapes must agree."""
    s, t = student.config, teacher.config
    if (s.d_model, s.d_ff, s.n_heads) != (t.d_model, t.d_ff, t.n_heads) or s.share_embeddings != t.share_embeddings:
        raise KdmtError(
            f"cannot initialise from the teacher: student d_model/d_ff/heads {s.d_model}/{s.d_ff}/{s.n_heads} "
            f"differ from the teacher's {t.d_model}/{t.d_ff}/{t.n_heads}"
        )
    pairs = [
        (student.tgt_embed, teacher.tgt_embed),
        (student.src_embed, teacher.src_embed),
        (student.enc_norm, teacher.enc_norm),
        (student.dec_norm, teacher.dec_norm),
    ]
    pairs += [(student.encoder[i], teacher.encoder[j]) for i, j in enumerate(enc_layers)]
    pairs += [(student.decoder[i], teacher.decoder[j]) for i, j in enumerate(dec_layers)]
    for dst, src in pairs:
        dst.load_state_dict(src.state_dict())


# The sides of each --hidden-kd choice.
HIDDEN_SIDES = {"none": (), "encoder": ("encoder",), "decoder": ("decoder",), "both": ("encoder", "decoder")}


@dataclass
class StudentOptions:
    """How a student learns from its teachers: the options of `kdmt train-student` beyond the trainer's."""

    teacher: list[Path] | None = option(
        None,
        "Teacher checkpoint (or a MarianMT directory: data prepared with --vocab-from it); repeat for several.",
        flags=("--teacher", "-t"),
    )
    teacher_weight: list[float] | None = option(
        None, "Weight of each teacher's soft targets (default equal).", NONNEGATIVE
    )
    distilled: list[str] | None = option(
        None,
        "Distilled targets (seq-KD), line-aligned with DATA/train.src; several pairs: or PAIR=FILE for each "
        "pair, line-aligned with DATA/train.PAIR.src.",
    )
    ref_share: float = option(0.0, "Share of reference pairs mixed with the distilled ones.", SHARE)
    fallback_ref: bool = option(
        False, "Where the distilled line is empty (filtered), train on the reference instead of dropping."
    )
    alpha: float = option(0.0, "Word-level KD weight α (0: off).", SHARE)
    temperature: float = option(1.0, "Word-level KD temperature T.", POSITIVE)
    topk: int | None = option(None, "Keep only the teacher's top-k probabilities (word-KD).", COUNT)
    soft_targets: Path | None = option(None, "Stored top-k soft targets (kdmt soft-targets): offline word-KD.")
    hidden_kd: str = option("none", "Hidden-state KD on: none, encoder, decoder or both.")
    hidden_beta: float = option(1.0, "Hidden-state KD weight β.", NONNEGATIVE)
    hidden_enc_layers: str | None = option(None, "Teacher encoder layer matched with each student layer, e.g. 1,3,5.")
    hidden_dec_layers: str | None = option(None, "Teacher decoder layer matched with each student layer.")
    init_from_teacher: bool = option(False, "Copy embeddings and layers from the (first) teacher.")
    init_enc_layers: str | None = option(None, "Teacher encoder layers to copy, e.g. 0,2,4.")
    init_dec_layers: str | None = option(None, "Teacher decoder layers to copy, e.g. 5.")
    pair_temperature: float = option(
        1.0, "Multilingual data: each pair drawn ∝ (its share of the data)^(1/T); 1 keeps it.", POSITIVE
    )
    selective_kd: bool = option(
        False,
        "Selective distillation: per pair, word-KD off while the student's validation BLEU is "
        "at least its teacher's + --selective-margin, on again when it falls below.",
    )  # Tan et al. 2019
    selective_margin: float = option(
        1.0, "BLEU above the teacher's that switches word-KD off.", Range(float, -100, 100)
    )  # a difference of BLEU scores
    pair: str | None = option(
        None, "Multilingual data: train on this pair's sentences alone (--teacher as for one pair)."
    )


@dataclass
class Student:
    """Everything the trainer needs for a student, and the record of how it is made."""

    model: Transformer
    objective: Distillation
    corpus: TokenizedCorpus
    meta: dict[str, Any]
    teachers: dict[str | None, list[Checkpoint]] = field(default_factory=dict)  # by pair (None: one pair)
    sampler: PairSampler | None = None

    def measure_teachers(self, bleu: Callable[[list[Checkpoint], str | None], dict[str, float]]) -> dict:
        """Selective distillation's reference: each pair's teacher's BLEU on that pair's validation sentences,
        from `bleu` (Trainer.bleu); the record of it."""
        selective = self.objective.selective
        if selective is None:
            raise KdmtError("no selective distillation to measure the teachers for")
        for pair, checkpoints in self.teachers.items():
            selective.teacher_bleu |= bleu(checkpoints, pair)
        return {"margin": selective.margin, "teacher_bleu": selective.teacher_bleu}


def build_student(
    data: PreparedData,
    config: ModelConfig,
    options: StudentOptions,
    label_smoothing: float,
    seed: int,
    device: torch.device,
) -> Student:
    """The student model (initialised from a teacher if asked), its training corpus and its objective."""
    o = options
    if o.hidden_kd not in HIDDEN_SIDES:
        raise KdmtError(f"--hidden-kd takes {', '.join(HIDDEN_SIDES)}")
    if (o.init_from_teacher or o.hidden_kd != "none" or o.selective_kd) and not o.teacher:
        raise KdmtError("--init-from-teacher, --hidden-kd and --selective-kd need --teacher")
    all_pairs = [p["pair"] for p in data.info.pairs] if data.info.pairs else None
    if o.pair is not None and (all_pairs is None or o.soft_targets is not None):
        raise KdmtError("--pair takes multilingual data (kdmt prepare --pair ...), and online word-KD only")
    names = all_pairs if o.pair is None else None  # the pairs trained side by side, each with its teacher
    if o.pair_temperature != 1 and not names:
        raise KdmtError("--pair-temperature draws the pairs of multilingual data")
    paths = per_pair(o.teacher or [], names, "--teacher PAIR=CHECKPOINT") if names else o.teacher or []
    trained_on = names or ([o.pair] * len(paths) if o.pair else [])  # the pair each teacher must know
    teachers = load_teachers(data, paths, trained_on, device, o.topk)
    if (o.init_from_teacher or o.hidden_kd != "none" or o.selective_kd) and any(
        isinstance(c.model, PretrainedTeacher) for _, c in teachers
    ):
        raise KdmtError(
            "--init-from-teacher, --hidden-kd and --selective-kd take kdmt teachers; a Hugging Face teacher "
            "teaches word-level KD (--alpha) and sequence-level KD (kdmt distill)"
        )
    corpus, corpus_record = student_corpus(data, o.distilled, o.ref_share, seed, o.fallback_ref)
    if o.pair is not None:
        corpus = corpus.subset(PairRows(all_pairs, corpus_record["pair_rows"]).rows(o.pair))
        corpus_record = {**corpus_record, "pair": o.pair, "pairs": len(corpus)}
    routes = PairRows(names, corpus_record["pair_rows"]) if names else None
    store = None
    if o.soft_targets is not None:
        store = SoftTargetStore.load(o.soft_targets)
        if store.key != corpus.fingerprint():
            raise KdmtError(f"{o.soft_targets} was computed on another corpus than this student's training corpus")
    torch.manual_seed(seed)
    model = Transformer(config)
    init = None
    if o.init_from_teacher:
        t = teachers[0][1].model
        enc = parse_layers(o.init_enc_layers, config.enc_layers, t.config.enc_layers)
        dec = parse_layers(o.init_dec_layers, config.dec_layers, t.config.dec_layers)
        init_from_teacher(model, t, enc, dec)
        init = {"teacher": str(teachers[0][0]), "encoder_layers": enc, "decoder_layers": dec}
    pairs = {}
    for side in HIDDEN_SIDES[o.hidden_kd]:
        t = teachers[0][1].model.config
        if side == "encoder":
            pairs[side] = parse_layers(o.hidden_enc_layers, config.enc_layers, t.enc_layers)
        else:
            pairs[side] = parse_layers(o.hidden_dec_layers, config.dec_layers, t.dec_layers)
    objective = Distillation(
        model,
        [c.model for _, c in teachers],
        o.teacher_weight,
        o.alpha,
        o.temperature,
        label_smoothing,
        o.topk,
        store,
        o.hidden_beta if pairs else 0.0,
        pairs,
        routes if teachers else None,
        SelectiveKD(names or [None], o.selective_margin) if o.selective_kd else None,
    )
    word_kd = {
        "alpha": o.alpha,
        "temperature": o.temperature,
        "topk": o.topk,
        "soft_targets": str(o.soft_targets) if o.soft_targets else None,
    }
    meta = {
        "role": "student",
        "corpus": corpus_record,
        "teachers": [str(p) for p, _ in teachers] or (store.teachers if store else []),
        "teacher_weights": objective.teachers.weights,
        "word_kd": word_kd if o.alpha > 0 else None,
        "hidden_kd": {"pairs": pairs, "beta": o.hidden_beta} if pairs else None,
        "init_from_teacher": init,
    }
    by_pair = {name: [c] for name, (_, c) in zip(names, teachers)} if names else {None: [c for _, c in teachers]}
    sampler = PairSampler(routes, o.pair_temperature) if routes and o.pair_temperature != 1 else None
    if names:
        meta |= {"teachers": [f"{n}={p}" for n, (p, _) in zip(names, teachers)], "pair_temperature": o.pair_temperature}
    return Student(model, objective, corpus, meta, by_pair if teachers else {}, sampler)
