"""The prepare stage: clean a parallel corpus, train sentencepiece, write the tokenized corpus."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from kdmt.data import PREPARED_MARKER, CleanStats, Prepared, TokenizedCorpus, clean_pairs, save_prepared
from kdmt.errors import KdmtError
from kdmt.files import write_lines
from kdmt.vocab import train_vocab


@dataclass
class CleanOptions:
    max_words: int = 250
    max_ratio: float = 3.0
    dedup: bool = True


@dataclass
class VocabOptions:
    size: int = 8000
    joint: bool = True
    model_type: str = "unigram"
    character_coverage: float = 1.0


def prepare(
    out: Path,
    src_lang: str,
    tgt_lang: str,
    train: tuple[list[str], list[str]],
    valid: tuple[list[str], list[str]],
    clean: CleanOptions,
    vocab: VocabOptions,
) -> Prepared:
    """Clean `train` and `valid`, train the vocabulary on the cleaned training text, and write
    out/{train,valid}.{src,tgt} (text), out/{train,valid}.ids.pt (token ids), spm models, prepare.json."""
    if src_lang == tgt_lang:
        raise KdmtError("source and target languages must differ")
    train_src, train_tgt, train_stats = clean_pairs(*train, clean.max_words, clean.max_ratio, clean.dedup)
    valid_src, valid_tgt, valid_stats = clean_pairs(*valid, clean.max_words, clean.max_ratio, dedup=False)
    for name, stats in (("training", train_stats), ("validation", valid_stats)):
        if stats.kept == 0:
            raise KdmtError(f"the {name} corpus is empty after cleaning ({_describe(stats)})")
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARED_MARKER).unlink(missing_ok=True)  # the directory counts as prepared only once complete
    prepared = Prepared(
        src_lang, tgt_lang, vocab.joint, vocab.size, {"train": asdict(train_stats), "valid": asdict(valid_stats)}
    )
    options = dict(vocab_size=vocab.size, model_type=vocab.model_type, character_coverage=vocab.character_coverage)
    if vocab.joint:
        src_vocab = tgt_vocab = train_vocab(prepared.src_vocab_path(out), train_src + train_tgt, **options)
    else:
        src_vocab = train_vocab(prepared.src_vocab_path(out), train_src, **options)
        tgt_vocab = train_vocab(prepared.tgt_vocab_path(out), train_tgt, **options)
    key = f"{src_vocab.fingerprint}-{tgt_vocab.fingerprint}"
    for split, (s, t) in (("train", (train_src, train_tgt)), ("valid", (valid_src, valid_tgt))):
        write_lines(out / f"{split}.src", s)
        write_lines(out / f"{split}.tgt", t)
        TokenizedCorpus.encode(s, t, src_vocab, tgt_vocab).save(out / f"{split}.ids.pt", key)
    save_prepared(out, prepared)
    return prepared


def _describe(stats: CleanStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(stats).items())
