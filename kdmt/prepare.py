"""The prepare stage, streaming: clean a parallel corpus as it is read, train sentencepiece on a random sample
of it, and tokenize it in worker processes into memory-mapped arrays. Memory does not grow with the corpus,
but for deduplication's 8 bytes a kept pair."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from functools import partial
from math import expm1, floor, log
from pathlib import Path

from kdmt.corpus import vocab_key, write_tokenized
from kdmt.data import PREPARED_MARKER, CleanStats, Prepared, clean_stream, save_prepared, stream_parallel
from kdmt.errors import KdmtError
from kdmt.files import atomic_path
from kdmt.vocab import Vocab, train_vocab

SPM_SAMPLE = 500_000  # sentences sentencepiece is trained on, at most: about 0.8 GB for a unigram model
SAMPLE_SEED = 1
CLEAN_CHUNK = 8192  # pairs a cleaning worker takes at a time

Pairs = Iterable[tuple[str, str]]
Report = Callable[[str], None]  # what is being done, e.g. 'cleaning train: 200,000 pairs'


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
    sample: int = SPM_SAMPLE  # sentences each model is trained on, drawn at random from the cleaned corpus


class Reservoir:
    """A uniform random sample of at most `size` items of a stream, seeded (Li's algorithm L: a random
    number only for the items it takes). While the stream is no longer than `size`, it is the whole stream."""

    def __init__(self, size: int, seed: int):
        self.size, self.items, self.seen = size, [], 0
        self.rng = random.Random(seed)
        self.log_w = log(1.0 - self.rng.random()) / size
        self.next = size + self._skip()

    def _skip(self) -> int:
        return floor(log(1.0 - self.rng.random()) / log(-expm1(self.log_w)))

    def extend(self, items: list) -> None:
        """Offer `items`, the next ones of the stream."""
        self.items += items[: max(0, self.size - self.seen)]
        end = self.seen + len(items)
        while self.next < end:
            self.items[self.rng.randrange(self.size)] = items[self.next - self.seen]
            self.log_w += log(1.0 - self.rng.random()) / self.size
            self.next += self._skip() + 1
        self.seen = end


def prepare(
    out: Path,
    src_lang: str,
    tgt_lang: str,
    train: Pairs,
    valid: Pairs,
    clean: CleanOptions,
    vocab: VocabOptions,
    workers: int = 1,
    report: Report | None = None,
) -> Prepared:
    """Clean `train` and `valid` as they are read, train the vocabulary on a sample of the cleaned training
    text and tokenize both splits in `workers` processes. Writes out/{train,valid}.{src,tgt} (the cleaned
    text), the tokenized corpora (kdmt.corpus: {split}.{src,tgt}.{ids,off}.npy, {split}.ids.json), the spm
    models and, last, prepare.json. A failure leaves no half-written file, and no directory it created."""
    if src_lang == tgt_lang:
        raise KdmtError("source and target languages must differ")
    if workers < 1 or vocab.sample < 2:
        raise KdmtError("--workers must be at least 1, and --spm-sample at least 2")
    report = report or (lambda _: None)
    with _removed_on_failure(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / PREPARED_MARKER).unlink(missing_ok=True)  # the directory counts as prepared only once complete
        with ExitStack() as stack:
            text = {name: stack.enter_context(atomic_path(out / name)) for name in _text_files()}
            sample = Reservoir(vocab.sample // 2 if vocab.joint else vocab.sample, SAMPLE_SEED)
            train_stats = _clean_into(train, "train", text, clean, sample, workers, report)
            _check_not_empty("training", train_stats)
            valid_stats = _clean_into(valid, "valid", text, replace(clean, dedup=False), None, 1, report)
            _check_not_empty("validation", valid_stats)
            stats = {"train": asdict(train_stats), "valid": asdict(valid_stats)}
            prepared = Prepared(src_lang, tgt_lang, vocab.joint, vocab.size, stats)
            report(f"training sentencepiece on {len(sample.items) * (2 if vocab.joint else 1):,} sentences")
            src_vocab, tgt_vocab = _train_vocabs(out, prepared, sample.items, vocab)
            key = vocab_key(src_vocab, tgt_vocab)
            for split in ("train", "valid"):
                pairs = stream_parallel(text[f"{split}.src"], text[f"{split}.tgt"])
                done = partial(_tokenized, split, report)
                write_tokenized(pairs, src_vocab, tgt_vocab, out / split, key, workers, done)
        save_prepared(out, prepared)  # last: after the files above are in place
    return prepared


@contextmanager
def _removed_on_failure(directory: Path) -> Iterator[None]:
    """Remove `directory` if the block fails and the directory did not exist before it (only if empty:
    every output is a temporary file until the end)."""
    created = not directory.exists()
    try:
        yield
    except BaseException:
        if created:
            with suppress(OSError):
                directory.rmdir()
        raise


def _text_files() -> list[str]:
    return [f"{split}.{side}" for split in ("train", "valid") for side in ("src", "tgt")]


def _clean_into(
    pairs: Pairs,
    split: str,
    text: dict[str, Path],
    options: CleanOptions,
    sample: Reservoir | None,
    workers: int,
    report: Report,
) -> CleanStats:
    """Clean `pairs` in `workers` processes into the text files of `split`, offering each kept pair to `sample`;
    the counts."""
    stats = CleanStats()
    kept = clean_stream(pairs, stats, options.max_words, options.max_ratio, options.dedup, CLEAN_CHUNK, workers)
    with (
        open(text[f"{split}.src"], "w", encoding="utf-8") as src,
        open(text[f"{split}.tgt"], "w", encoding="utf-8") as tgt,
    ):
        for chunk in kept:
            if chunk:
                sources, targets = zip(*chunk)
                src.write("\n".join(sources) + "\n")
                tgt.write("\n".join(targets) + "\n")
            if sample is not None:
                sample.extend(chunk)
            report(f"cleaning {split}: {stats.input:,} pairs")
    return stats


def _check_not_empty(name: str, stats: CleanStats) -> None:
    if stats.kept == 0:
        raise KdmtError(f"the {name} corpus is empty after cleaning ({_describe(stats)})")


def _train_vocabs(
    out: Path, prepared: Prepared, sample: list[tuple[str, str]], options: VocabOptions
) -> tuple[Vocab, Vocab]:
    """Train the sentencepiece model(s) on the sampled pairs: they are written to a temporary file (for a
    joint model the sources, then the targets) and dropped, before sentencepiece takes its memory."""
    settings = dict(
        vocab_size=options.size,
        model_type=options.model_type,
        character_coverage=options.character_coverage,
        input_sentence_size=options.sample,
    )
    src_path, tgt_path = prepared.src_vocab_path(out), prepared.tgt_vocab_path(out)
    models = [(src_path, (0, 1))] if options.joint else [(src_path, (0,)), (tgt_path, (1,))]
    with tempfile.TemporaryDirectory(prefix=".spm-sample.", dir=out) as tmp:
        texts = [Path(tmp) / f"{path.name}.txt" for path, _ in models]
        for text, (_, sides) in zip(texts, models):
            with open(text, "w", encoding="utf-8") as f:
                for side in sides:
                    f.writelines(pair[side] + "\n" for pair in sample)
        sample.clear()
        vocabs = [train_vocab(path, text, **settings) for (path, _), text in zip(models, texts)]
    return vocabs[0], vocabs[-1]


def _tokenized(split: str, report: Report, pairs: int) -> None:
    report(f"tokenizing {split}: {pairs:,} pairs")


def _describe(stats: CleanStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(stats).items())
