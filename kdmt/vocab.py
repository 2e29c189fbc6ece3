"""Sentencepiece vocabularies: training, loading, and a fingerprint to catch mismatches."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm
import torch

from kdmt.errors import KdmtError
from kdmt.files import atomic_path

PAD, UNK, BOS, EOS = 0, 1, 2, 3
ENSEMBLE_VOCABULARIES = "the models of an ensemble must share their vocabularies"


class Vocab:
    """A sentencepiece model with kdmt's fixed special ids (pad 0, unk 1, bos 2, eos 3)."""

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises plain RuntimeError/OSError
            raise KdmtError(f"not a valid sentencepiece model ({e})") from None
        specials = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if specials != (PAD, UNK, BOS, EOS):
            raise KdmtError("sentencepiece model must use pad=0 unk=1 bos=2 eos=3 (train it with kdmt prepare)")
        self.fingerprint = hashlib.sha256(model_proto).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise KdmtError(f"{path}: no such file")
        try:
            return cls(path.read_bytes())
        except KdmtError as e:
            raise KdmtError(f"{path}: {e}") from None

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Vocab:
        return cls(t.numpy().tobytes())

    def to_tensor(self) -> torch.Tensor:
        """The model as a uint8 tensor, so a checkpoint can carry it under weights_only loading."""
        return torch.frombuffer(bytearray(self.proto), dtype=torch.uint8)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def pieces(self) -> list[str]:
        """Every piece, in id order."""
        return [self.sp.id_to_piece(i) for i in range(len(self))]

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Token ids of each line, without EOS."""
        return self.sp.encode(lines, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)


def vocab_key(src_vocab: Vocab, tgt_vocab: Vocab) -> dict[str, str]:
    """What token ids depend on, and what models used together must share: the source and target
    sentencepiece models, by fingerprint."""
    return {"src_vocab": src_vocab.fingerprint, "tgt_vocab": tgt_vocab.fingerprint}


def check_vocabularies(expected: tuple[Vocab, Vocab], found: tuple[Vocab, Vocab], error: str) -> None:
    """The one vocabulary check: refuse, with `error`, a model whose (source, target) sentencepiece models
    are not `expected`'s (vocab_key)."""
    if vocab_key(*found) != vocab_key(*expected):
        raise KdmtError(error)


def train_vocab(
    path: Path,
    text: Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
    user_defined_symbols: list[str] | None = None,
) -> Vocab:
    """Train a sentencepiece model on the lines of the file `text` (a random `input_sentence_size` of them
    if there are more) and write it to `path` (a .model file). The lines are handed to sentencepiece as an
    iterator, and the model taken back in memory: no file name is recorded in it, so equal lines give
    byte-identical models. `user_defined_symbols` are pieces always kept whole (kdmt's language tags)."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(text),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            minloglevel=2,
            user_defined_symbols=user_defined_symbols or [],
        )
    except RuntimeError as e:
        raise KdmtError(f"sentencepiece training failed: {e}") from None
    with atomic_path(path) as out:
        out.write_bytes(model.getvalue())
    return Vocab(model.getvalue())


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line.rstrip("\n")
