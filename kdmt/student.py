"""What is particular to students: their training corpus, vocabulary checks, initialisation from a teacher."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from kdmt.checkpoint import Checkpoint
from kdmt.data import TokenizedCorpus, read_parallel
from kdmt.errors import KdmtError
from kdmt.files import read_lines
from kdmt.model import Transformer
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
    data: Path, src_vocab: Vocab, tgt_vocab: Vocab, distilled: Path | None, ref_share: float, seed: int
) -> tuple[TokenizedCorpus, dict]:
    """The student's training pairs: the distilled targets (line-aligned with DATA/train.src), the
    references, or both mixed with `ref_share` references. Pairs with an empty side are dropped."""
    src, ref = read_parallel(data / "train.src", data / "train.tgt")
    reference = list(zip(src, ref))
    if distilled is None:
        pairs, dropped = reference, 0
    else:
        hyps = read_lines(distilled)
        if len(hyps) != len(src):
            raise KdmtError(
                f"line counts differ: {distilled} has {len(hyps)} lines, {data / 'train.src'} has {len(src)}"
            )
        kept = [(s, h) for s, h in zip(src, hyps) if h.strip()]
        dropped = len(src) - len(kept)
        pairs = mix(kept, reference, ref_share, seed)
    if not pairs:
        raise KdmtError("the student's training corpus is empty")
    corpus = TokenizedCorpus.encode([s for s, _ in pairs], [t for _, t in pairs], src_vocab, tgt_vocab)
    record = {
        "distilled": str(distilled) if distilled else None,
        "ref_share": ref_share if distilled else 1.0,
        "pairs": len(pairs),
        "dropped_empty": dropped,
    }
    return corpus, record


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer, the teacher layer it is matched with: evenly spaced, last with last."""
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


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
