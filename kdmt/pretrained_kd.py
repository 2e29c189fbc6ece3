"""Word-level KD from a pretrained (Hugging Face MarianMT) teacher, in the teacher's own vocabulary.

`kdmt prepare --vocab-from DIR` writes the prepared data in the teacher's vocabulary: kdmt sentencepiece
models with exactly the pieces, scores and normalisation of the teacher's source.spm and target.spm (so
exactly its segmentation), re-ordered so that kdmt's special ids hold (pad 0, unk 1, bos 2, eos 3; a
missing one added as a control piece). Each kdmt id's teacher id (by piece, from vocab.json; a piece
that vocab.json lacks is the teacher's <unk>, as its tokenizer makes it) is written to DATA/teacher-vocab.json
and named in prepare.json, with the fingerprint of the teacher's vocabulary files. A sample of the cleaned
corpus is encoded both ways, and the prepare is refused if the teacher's tokenizer gives other ids.

`PretrainedTeacher` runs the teacher teacher-forced on its own ids (kdmt ids mapped; the decoder starts with
the config's decoder_start_token_id) and returns logits over kdmt's target ids: each teacher id's
probability goes to its kdmt piece, so that top-k in kdmt's ids is the teacher's own top-k, ids mapped.
Teacher ids without a kdmt target piece (pieces of source.spm alone in a shared vocab.json, ids beyond
vocab.json) add their probability to kdmt's <unk>; kdmt pieces that vocab.json lacks get none.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdmt.checkpoint import Checkpoint
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.files import atomic_path, write_text
from kdmt.pretrained import OPUS_SPM, check_safe, load_model, load_tokenizer
from kdmt.vocab import EOS, PAD, UNK, Vocab

MAPPING_FILE = "teacher-vocab.json"
SEGMENTATION_SAMPLE = 10_000  # cleaned training pairs whose encodings are compared with the teacher tokenizer's
_NORMAL, _UNKNOWN, _CONTROL = 1, 2, 3  # sentencepiece's ModelProto.SentencePiece.Type
# TrainerSpec's fields: the special ids (int32) and pieces (string), in kdmt's order pad, unk, bos, eos
_SPECIAL_IDS, _SPECIAL_PIECES = (43, 40, 41, 42), (48, 45, 46, 47)
_DEFAULT_PIECES = ("<pad>", "<unk>", "<s>", "</s>")


def refusal(teacher: Path) -> KdmtError:
    """Why a pretrained teacher of another vocabulary cannot teach word-level KD, and what to do."""
    return KdmtError(
        f"the teacher's vocabulary is not the prepared data's: prepare with --vocab-from {teacher} for "
        f"word-level KD, or use sequence-level KD (kdmt distill -t {teacher})"
    )


# --- sentencepiece's ModelProto, read and written at the wire level (protobuf is not required) ----------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32: ten bytes, as protobuf writes them
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes, bytes]]:
    """Each field of a message: its number, its value (an int, or the bytes of a length-delimited or
    fixed-width one) and its whole encoding."""
    i = 0
    while i < len(data):
        start = i
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = data[i : i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("truncated")
        yield number, value, data[start:i]


def _string_field(number: int, value: str) -> bytes:
    raw = value.encode()
    return _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw


def _piece(name: str, kind: int) -> bytes:
    """A ModelProto.SentencePiece: the piece, score 0, its type."""
    body = _string_field(1, name) + _encode_varint(2 << 3 | 5) + struct.pack("<f", 0.0) + _encode_varint(3 << 3)
    return _encode_varint(1 << 3 | 2) + _encode_varint(len(body) + 1) + body + _encode_varint(kind)


def kdmt_model(proto: bytes) -> bytes:
    """The sentencepiece model `proto` with its pieces re-ordered (the others after kdmt's specials, in
    their order) and its trainer spec's special ids rewritten so that pad 0, unk 1, bos 2, eos 3 hold."""
    pieces: list[tuple[str, int, bytes]] = []  # piece, type, encoding
    trainer, rest = b"", []
    for number, value, raw in _fields(proto):
        if number == 1:
            fields = {n: v for n, v, _ in _fields(value)}
            pieces.append((fields.get(1, b"").decode(), fields.get(3, _NORMAL), raw))
        elif number == 2:
            trainer = value
        else:
            rest.append(raw)
    trainer_fields = list(_fields(trainer))
    named = {n: v.decode() for n, v, _ in trainer_fields if n in _SPECIAL_PIECES}
    specials = [named.get(n, default) for n, default in zip(_SPECIAL_PIECES, _DEFAULT_PIECES)]
    by_name = {name: (kind, raw) for name, kind, raw in pieces}
    head = []
    for name, kind in zip(specials, (_CONTROL, _UNKNOWN, _CONTROL, _CONTROL)):
        found = by_name.get(name)
        if found is not None and found[0] != kind:
            raise KdmtError(f"the teacher's sentencepiece piece {name!r} is not of the type kdmt needs for it")
        head.append(found[1] if found else _piece(name, kind))
    body = [raw for name, _, raw in pieces if name not in specials]
    kept = [raw for n, _, raw in trainer_fields if n not in _SPECIAL_IDS]
    ids = [_encode_varint(n << 3) + _encode_varint(i) for i, n in enumerate(_SPECIAL_IDS)]
    spec = b"".join(kept + ids)
    return b"".join(head + body) + _encode_varint(2 << 3 | 2) + _encode_varint(len(spec)) + spec + b"".join(rest)


# --- the teacher's vocabulary, and the prepared data's record of it -------------------------------------


def _is_marian(directory: Path, config: dict[str, Any]) -> bool:
    files = (*OPUS_SPM, "vocab.json")
    return config["model_type"] == "marian" and all((directory / f).is_file() for f in files)


def fingerprint(directory: Path, config: dict[str, Any]) -> str:
    """What the teacher's ids depend on: its sentencepiece models, vocab.json and special ids."""
    digest = hashlib.sha256()
    for name in (*OPUS_SPM, "vocab.json"):
        digest.update(hashlib.sha256((directory / name).read_bytes()).digest())
    special = [config.get(k) for k in ("pad_token_id", "eos_token_id", "decoder_start_token_id", "vocab_size")]
    digest.update(json.dumps(special).encode())
    return digest.hexdigest()[:16]


@dataclass
class TeacherVocab:
    """A MarianMT teacher's vocabulary as kdmt's: its sentencepiece models re-ordered, and the teacher id of
    each kdmt id of either side."""

    directory: Path
    config: dict[str, Any]
    src: Vocab
    tgt: Vocab
    joint: bool  # source.spm and target.spm are one model
    src_ids: list[int]
    tgt_ids: list[int]

    @classmethod
    def read(cls, directory: Path) -> TeacherVocab:
        config = check_safe(directory)
        if not _is_marian(directory, config):
            raise KdmtError(
                f"--vocab-from takes a MarianMT directory (source.spm, target.spm, vocab.json): {directory}"
            )
        try:
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
                raise ValueError("not an object of piece ids")
        except (ValueError, UnicodeDecodeError) as e:
            raise KdmtError(f"{directory / 'vocab.json'}: not a vocabulary ({e})") from None
        protos = [(directory / name).read_bytes() for name in OPUS_SPM]
        try:
            src, tgt = (Vocab(kdmt_model(p)) for p in protos)
        except (ValueError, IndexError, AttributeError, UnicodeDecodeError):
            raise KdmtError(f"{directory}: source.spm or target.spm is not a sentencepiece model") from None
        if "<unk>" not in vocab:
            raise KdmtError(f"{directory / 'vocab.json'}: no <unk>")
        for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not isinstance(config.get(key), int):
                raise KdmtError(f"{directory / 'config.json'}: no {key}")

        def ids(v: Vocab) -> list[int]:
            mapped = [vocab.get(piece, vocab["<unk>"]) for piece in v.pieces()]
            mapped[PAD], mapped[EOS] = config["pad_token_id"], config["eos_token_id"]
            return mapped

        return cls(directory, config, src, tgt, protos[0] == protos[1], ids(src), ids(tgt))

    def check_segmentation(self, pairs: list[tuple[str, str]]) -> None:
        """Refuse in one line when the teacher's tokenizer gives other ids than kdmt's models, mapped, on
        `pairs` (a sample of the cleaned corpus)."""
        if not pairs:
            return
        tokenizer = load_tokenizer(self.directory)
        eos = self.config["eos_token_id"]
        for side, (vocab, mapping) in enumerate(((self.src, self.src_ids), (self.tgt, self.tgt_ids))):
            lines = [pair[side] for pair in pairs]
            theirs = tokenizer(text_target=lines) if side else tokenizer(lines)
            ours = [[mapping[i] for i in ids] + [eos] for ids in vocab.encode(lines)]
            wrong = [line for line, a, b in zip(lines, ours, theirs["input_ids"]) if a != list(b)]
            if wrong:
                raise KdmtError(
                    f"--vocab-from {self.directory}: its tokenizer splits {len(wrong)} of {len(lines)} sampled "
                    f"{('source', 'target')[side]} sentences otherwise than its sentencepiece model "
                    f"(first: {wrong[0][:80]!r}); cannot prepare in its vocabulary"
                )

    def record(self) -> dict[str, str]:
        """What prepare.json records (Prepared.vocab_from)."""
        return {
            "teacher": str(self.directory),
            "model_type": self.config["model_type"],
            "fingerprint": fingerprint(self.directory, self.config),
            "mapping": MAPPING_FILE,
        }

    def write(self, out: Path, src_path: Path, tgt_path: Path) -> None:
        """Write kdmt's sentencepiece model(s) and the id mapping into the prepared directory `out`."""
        for path, vocab in {src_path: self.src, tgt_path: self.tgt}.items():
            with atomic_path(path) as tmp:
                tmp.write_bytes(vocab.proto)
        mapping = {"src": self.src_ids, "tgt": self.tgt_ids}
        write_text(out / MAPPING_FILE, json.dumps(mapping) + "\n")


# --- the teacher, teacher-forced on kdmt's batches ---------------------------------------------------


class PretrainedTeacher(nn.Module):
    """A Hugging Face seq2seq model that takes kdmt's ids and gives logits over kdmt's target ids (see the
    module's docstring): a teacher for kdmt.objectives.Distillation and kdmt.soft_targets."""

    def __init__(self, model: nn.Module, src_ids: list[int], tgt_ids: list[int], start: int):
        super().__init__()
        self.model = model
        self.start = start  # the decoder's first input: config.decoder_start_token_id
        self.register_buffer("src_ids", torch.tensor(src_ids), persistent=False)
        self.register_buffer("tgt_ids", torch.tensor(tgt_ids), persistent=False)
        size = model.get_output_embeddings().weight.size(0)
        back = torch.full((size,), UNK)  # teacher id -> kdmt target id
        if not all(0 <= i < size for i in src_ids + tgt_ids + [start]):
            raise KdmtError(f"the teacher's ids run to {size - 1}: its id mapping names others")
        for k, t in enumerate(tgt_ids):
            if t != tgt_ids[UNK] or k == UNK:  # the pieces that vocab.json lacks take none
                back[t] = k
        self.register_buffer("back", back, persistent=False)

    def forward(self, src: Tensor, tgt_in: Tensor, hidden: Any = None) -> Tensor:
        """Logits (B, T, kdmt's target vocabulary) of teacher-forced `tgt_in` (BOS first) after `src`."""
        if hidden is not None:
            raise KdmtError("a Hugging Face teacher gives no hidden states to kdmt")
        limit = self.model.config.max_position_embeddings
        if max(src.size(1), tgt_in.size(1)) > limit:
            raise KdmtError(
                f"a sentence of {max(src.size(1), tgt_in.size(1))} tokens exceeds the teacher's {limit} positions: "
                "prepare with a smaller --max-words"
            )
        decoder_in = self.tgt_ids[tgt_in]
        decoder_in[:, 0] = self.start
        logits = self.model(
            input_ids=self.src_ids[src], attention_mask=src != PAD, decoder_input_ids=decoder_in
        ).logits.float()
        return to_kdmt(logits, self.back, len(self.tgt_ids))


def to_kdmt(logits: Tensor, back: Tensor, size: int) -> Tensor:
    """Logits over `size` kdmt ids whose softmax is that of the teacher's `logits` (..., V), each teacher
    id's probability moved to kdmt id back[id] (summed where several share one); -inf where none."""
    top = logits.amax(-1, keepdim=True)
    mass = torch.zeros(*logits.shape[:-1], size, device=logits.device)
    return mass.index_add_(-1, back, (logits - top).exp()).log() + top


def load_pretrained_teacher(directory: Path, data: PreparedData, device: torch.device) -> Checkpoint:
    """A Hugging Face teacher of `data` as a kdmt Checkpoint (the data's vocabularies, a PretrainedTeacher):
    refused in one line unless the data was prepared with --vocab-from a teacher of this vocabulary."""
    config = check_safe(directory)
    record = data.info.vocab_from
    if record is None or not _is_marian(directory, config) or record["fingerprint"] != fingerprint(directory, config):
        raise refusal(directory)
    file = data.root / record["mapping"]
    try:
        mapping = json.loads(file.read_text())
        src_ids, tgt_ids = mapping["src"], mapping["tgt"]
        if (len(src_ids), len(tgt_ids)) != (len(data.src_vocab), len(data.tgt_vocab)):
            raise ValueError("its sizes are not the vocabularies'")
        if not all(isinstance(i, int) for i in src_ids + tgt_ids):
            raise ValueError("not lists of ids")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KdmtError(f"{file}: missing or damaged ({e}); prepare again with --vocab-from {directory}") from None
    model = load_model(directory, device)
    teacher = PretrainedTeacher(model, src_ids, tgt_ids, config["decoder_start_token_id"]).to(device)
    meta = {"role": "teacher", "pretrained": {"directory": str(directory), "model_type": config["model_type"]}}
    return Checkpoint(teacher, data.src_vocab, data.tgt_vocab, meta)
