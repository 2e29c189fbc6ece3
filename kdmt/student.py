"""What is particular to students: their training corpus, vocabulary checks, initialisation from a teacher,
and the assembly of a student, its corpus and its objective from train-student's options."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdmt.checkpoint import Checkpoint, load_checkpoint
from kdmt.data import PreparedData, TokenizedCorpus
from kdmt.errors import KdmtError
from kdmt.files import read_lines
from kdmt.model import ModelConfig, Transformer
from kdmt.objectives import Distillation
from kdmt.soft_targets import SoftTargetStore
from kdmt.vocab import Vocab


def check_vocabulary(teachers: list[tuple[Path, Checkpoint]], src_vocab: Vocab, tgt_vocab: Vocab) -> None:
    """Every teacher must use the data's sentencepiece models: the student shares its tokenization."""
    for path, t in teachers:
        if (t.src_vocab.fingerprint, t.tgt_vocab.fingerprint) != (src_vocab.fingerprint, tgt_vocab.fingerprint):
            raise KdmtError(f"vocabulary mismatch: {path} was trained with other sentencepiece models than this data")


def mix(distilled: list[tuple[str, str]], reference: list[tuple[str, str]], ref_share: float, seed: int):
    """The most pairs such that references make up `ref_share` of them (a seeded sample of the larger side)."""
    if ref_share <= 0:
        return distilled
    if ref_share >= 1:
        return reference
    n_ref = min(len(reference), round(len(distilled) * ref_share / (1 - ref_share)))
    n_dist = min(len(distilled), round(n_ref * (1 - ref_share) / ref_share))
    rng = random.Random(seed)
    return rng.sample(distilled, n_dist) + rng.sample(reference, n_ref)


def student_corpus(
    data: PreparedData,
    distilled: Path | None,
    ref_share: float,
    seed: int,
    fallback_to_reference: bool = False,
) -> tuple[TokenizedCorpus, dict]:
    """The student's training pairs: the distilled targets (line-aligned with DATA/train.src), the
    references, or both mixed with `ref_share` references. A pair whose distilled line is empty (an
    empty, over-long or filtered line of `kdmt distill`) is dropped, or with `fallback_to_reference`
    takes the reference target instead."""
    src, ref = data.text("train")
    reference = list(zip(src, ref))
    if distilled is None:
        pairs, dropped, fallback = reference, 0, 0
    else:
        hyps = read_lines(distilled)
        if len(hyps) != len(src):
            raise KdmtError(
                f"line counts differ: {distilled} has {len(hyps)} lines, {data.root / 'train.src'} has {len(src)}"
            )
        kept = [(s, h if h.strip() else r) for s, h, r in zip(src, hyps, ref) if h.strip() or fallback_to_reference]
        fallback = sum(1 for h in hyps if not h.strip()) if fallback_to_reference else 0
        dropped = len(src) - len(kept)
        pairs = mix(kept, reference, ref_share, seed)
    if not pairs:
        raise KdmtError(
            f"every line of {distilled} is empty (filtered by kdmt distill?): --fallback-ref trains on the references"
        )
    corpus = TokenizedCorpus.encode([s for s, _ in pairs], [t for _, t in pairs], data.src_vocab, data.tgt_vocab)
    record = {
        "distilled": str(distilled) if distilled else None,
        "ref_share": ref_share if distilled else 1.0,
        "pairs": len(pairs),
        "dropped_empty": dropped,
        "fallback_ref": fallback,
    }
    return corpus, record


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

    teachers: list[Path] = field(default_factory=list)
    teacher_weights: list[float] | None = None
    distilled: Path | None = None  # seq-KD targets, line-aligned with DATA/train.src
    ref_share: float = 0.0
    fallback_ref: bool = False  # a pair whose distilled line is empty keeps its reference
    alpha: float = 0.0  # word-level KD weight
    temperature: float = 1.0
    topk: int | None = None
    soft_targets: Path | None = None  # stored top-k soft targets (offline word-KD)
    hidden_kd: str = "none"  # none, encoder, decoder or both
    hidden_beta: float = 1.0
    hidden_enc_layers: str | None = None  # '1,3,5': the teacher layer of each student layer
    hidden_dec_layers: str | None = None
    init_from_teacher: bool = False
    init_enc_layers: str | None = None
    init_dec_layers: str | None = None


@dataclass
class Student:
    """Everything the trainer needs for a student, and the record of how it is made."""

    model: Transformer
    objective: Distillation
    corpus: TokenizedCorpus
    meta: dict[str, Any]


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
    if (o.init_from_teacher or o.hidden_kd != "none") and not o.teachers:
        raise KdmtError("--init-from-teacher and --hidden-kd need --teacher")
    teachers = [(path, load_checkpoint(path, device)) for path in o.teachers]
    check_vocabulary(teachers, data.src_vocab, data.tgt_vocab)
    corpus, corpus_record = student_corpus(data, o.distilled, o.ref_share, seed, o.fallback_ref)
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
        o.teacher_weights,
        o.alpha,
        o.temperature,
        label_smoothing,
        o.topk,
        store,
        o.hidden_beta if pairs else 0.0,
        pairs,
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
        "teacher_weights": objective.weights,
        "word_kd": word_kd if o.alpha > 0 else None,
        "hidden_kd": {"pairs": pairs, "beta": o.hidden_beta} if pairs else None,
        "init_from_teacher": init,
    }
    return Student(model, objective, corpus, meta)
