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
from typing import TextIO

from kdmt.config import option
from kdmt.corpus import write_tokenized
from kdmt.data import PREPARED_MARKER, CleanStats, Prepared, clean_stream, corpus_key, save_prepared, stream_parallel
from kdmt.errors import KdmtError
from kdmt.files import atomic_path
from kdmt.languages import Pair, pair_weights, parse_pairs, symbols, tag_source
from kdmt.options import COUNT, POSITIVE, Range
from kdmt.pretrained_kd import SEGMENTATION_SAMPLE, TeacherVocab
from kdmt.sources import dataset_pairs
from kdmt.vocab import Vocab, train_vocab

SPM_SAMPLE = 500_000  # sentences sentencepiece is trained on, at most: about 0.8 GB for a unigram model
SAMPLE_SEED = 1
CLEAN_CHUNK = 8192  # pairs a cleaning worker takes at a time

Pairs = Iterable[tuple[str, str]]
Report = Callable[[str], None]  # what is being done, e.g. 'cleaning train: 200,000 pairs'


@dataclass(frozen=True)
class CorpusOptions:
    """Where prepare's text comes from: the language pairs and their files, or a `datasets` source."""

    src_lang: str | None = option(None, "Source language code, e.g. de.", flags=("--src",))
    tgt_lang: str | None = option(None, "Target language code, e.g. en.", flags=("--tgt",))
    pair: list[str] | None = option(
        None,
        "A language pair SRC-TGT (e.g. de-en), instead of --src/--tgt; repeat for a multilingual directory: one "
        "sentencepiece model, sources tagged with the target language (<2en>).",
    )
    train: list[str] | None = option(
        None,
        "Training files prefix: PREFIX.SRC and PREFIX.TGT (.gz allowed); with several --pair, once for all "
        "or once per pair.",
    )
    valid: list[str] | None = option(None, "Validation files prefix, as --train.")
    source_tags: bool = option(False, "Several pairs: sources carry their own language's tag too (<from_de>).")
    dataset: str | None = option(
        None, "A `datasets` source instead of files: a hub name, or json/csv/parquet with --data-files."
    )
    dataset_config: str | None = option(None, "The dataset's configuration (e.g. de-en).")
    data_files: list[str] | None = option(None, "SPLIT=PATH for a local json/csv/parquet dataset; repeat per split.")
    train_split: str = option("train", "Dataset split to train on.")
    valid_split: str = option("validation", "Dataset split to validate on.")
    src_field: str | None = option(None, "Dataset field of the source text (default: translation.SRC or SRC).")
    tgt_field: str | None = option(None, "Dataset field of the target text.")

    def corpora(self) -> list[PairCorpus]:
        """Each language pair's training and validation text, streamed from the files or the dataset."""
        pairs = language_pairs(self.src_lang, self.tgt_lang, self.pair)
        if (self.dataset is None) == (self.train is None):
            raise KdmtError("give either --train and --valid (text files) or --dataset")
        if self.dataset is None:
            return file_corpora(pairs, self.train, self.valid)
        splits, columns = (self.train_split, self.valid_split), dict(src_field=self.src_field, tgt_field=self.tgt_field)
        return [dataset_corpus(pairs, self.dataset, self.dataset_config, self.data_files, splits, **columns)]


@dataclass(frozen=True)
class CleanOptions:
    """The rules that drop training pairs."""

    max_words: int = option(250, "Drop training pairs with a side longer than this many words.", COUNT)
    max_ratio: float = option(3.0, "Drop pairs whose word-length ratio exceeds this.", Range(float, 1))
    dedup: bool = option(True, "Drop exact duplicate training pairs.", flags=("--dedup/--no-dedup",))


@dataclass(frozen=True)
class VocabOptions:
    """The sentencepiece model prepare trains, or the teacher's vocabulary it takes instead."""

    vocab_size: int = option(8000, "Sentencepiece vocabulary size.", Range(int, 5))  # 4 special pieces and one
    joint_vocab: bool = option(True, "One vocabulary for both languages.", flags=("--joint-vocab/--separate-vocab",))
    spm_type: str = option("unigram", "Sentencepiece model type: unigram or bpe.")
    spm_sample: int = option(
        SPM_SAMPLE, "Sentences sentencepiece is trained on: a random sample of the cleaned corpus.", Range(int, 2)
    )
    spm_temperature: float = option(
        5.0, "Several pairs: each language's share of the sentencepiece sample ∝ its share^(1/T).", POSITIVE
    )
    vocab_from: Path | None = option(
        None,
        "A MarianMT (Hugging Face) teacher's directory: write the data in its vocabulary instead of training "
        "sentencepiece, for word-level KD from it.",
    )
    character_coverage: float = 1.0


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


def prepare_corpus(
    out: Path,
    corpus: CorpusOptions,
    clean: CleanOptions,
    vocab: VocabOptions,
    workers: int = 1,
    report: Report | None = None,
) -> Prepared:
    """kdmt prepare: `prepare` for one pair's corpus, `prepare_multilingual` for several."""
    corpora = corpus.corpora()
    if len(corpora) == 1:
        c = corpora[0]
        return prepare(out, c.pair.src, c.pair.tgt, c.train, c.valid, clean, vocab, workers, report)
    if vocab.vocab_from is not None:
        raise KdmtError("--vocab-from takes one pair (a MarianMT teacher's)")
    return prepare_multilingual(out, corpora, clean, vocab, corpus.source_tags, workers, report)


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
    models and, last, prepare.json. A failure leaves no half-written file, and no directory it created.
    With `vocab.vocab_from` (a MarianMT directory), the vocabulary is the teacher's (kdmt.pretrained_kd), checked
    on a sample of the cleaned pairs; `vocab`'s other options are not used."""
    if src_lang == tgt_lang:
        raise KdmtError("source and target languages must differ")
    report = report or (lambda _: None)
    teacher = TeacherVocab.read(vocab.vocab_from) if vocab.vocab_from is not None else None
    with _removed_on_failure(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / PREPARED_MARKER).unlink(missing_ok=True)  # the directory counts as prepared only once complete
        with ExitStack() as stack:
            text = {name: stack.enter_context(atomic_path(out / name)) for name in _text_files()}
            size = vocab.spm_sample // 2 if vocab.joint_vocab else vocab.spm_sample
            sample = Reservoir(SEGMENTATION_SAMPLE if teacher else size, SAMPLE_SEED)
            with _open_split(text, "train") as files:
                train_stats = _clean_into(train, "train", files, "", clean, sample, workers, report)
            _check_not_empty("training", train_stats)
            with _open_split(text, "valid") as files:
                valid_stats = _clean_into(valid, "valid", files, "", replace(clean, dedup=False), None, 1, report)
            _check_not_empty("validation", valid_stats)
            stats = {"train": asdict(train_stats), "valid": asdict(valid_stats)}
            if teacher is None:
                prepared = Prepared(src_lang, tgt_lang, vocab.joint_vocab, vocab.vocab_size, stats)
                report(f"training sentencepiece on {len(sample.items) * (2 if vocab.joint_vocab else 1):,} sentences")
                src_vocab, tgt_vocab = _train_vocabs(out, prepared, sample.items, vocab)
            else:
                prepared = Prepared(
                    src_lang, tgt_lang, teacher.joint, len(teacher.tgt), stats, vocab_from=teacher.record()
                )
                report(f"checking the teacher's segmentation on {len(sample.items):,} pairs")
                teacher.check_segmentation(sample.items)
                teacher.write(out, prepared.src_vocab_path(out), prepared.tgt_vocab_path(out))
                src_vocab, tgt_vocab = teacher.src, teacher.tgt
            _tokenize(out, text, src_vocab, tgt_vocab, workers, report)
        save_prepared(out, prepared)  # last: after the files above are in place
    return prepared


@dataclass
class PairCorpus:
    """One language pair's training and validation text, for a multilingual prepare."""

    pair: Pair
    train: Pairs
    valid: Pairs


def language_pairs(src: str | None, tgt: str | None, pairs: list[str] | None) -> list[Pair]:
    """The language pairs of --src and --tgt, or of --pair (repeated for several)."""
    if pairs and not src and not tgt:
        return parse_pairs(pairs)
    if src and tgt and not pairs:
        return [Pair(src, tgt)]
    raise KdmtError("give either --src and --tgt, or --pair")


def file_corpora(pairs: list[Pair], train: list[str] | None, valid: list[str] | None) -> list[PairCorpus]:
    """Each pair's corpus from the files PREFIX.SRC and PREFIX.TGT (.gz allowed), a prefix given once for
    all pairs or once for each."""
    trains, valids = _per_pair(train, pairs, "--train"), _per_pair(valid, pairs, "--valid")
    return [
        PairCorpus(
            p,
            stream_parallel(_prefix_file(t, p.src), _prefix_file(t, p.tgt)),
            stream_parallel(_prefix_file(v, p.src), _prefix_file(v, p.tgt)),
        )
        for p, t, v in zip(pairs, trains, valids)
    ]


def _prefix_file(prefix: str, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise KdmtError(f"no file {prefix}.{lang} (or .gz)")


def _per_pair(values: list[str] | None, pairs: list[Pair], option: str) -> list[str]:
    """A prefix option given once for all pairs, or once per pair in the order of --pair."""
    if values is None:
        raise KdmtError(f"{option} is required with --train")
    if len(values) not in (1, len(pairs)):
        raise KdmtError(f"give {option} once for all pairs, or once per --pair ({len(pairs)} times)")
    return values * len(pairs) if len(values) == 1 else values


def dataset_corpus(
    pairs: list[Pair],
    dataset: str,
    config: str | None,
    data_files: list[str] | None,
    splits: tuple[str, str],
    **columns: str | None,
) -> PairCorpus:
    """One pair's corpus from a `datasets` source (kdmt.sources.dataset_pairs): a hub name, or json, csv or
    parquet with its files SPLIT=PATH; `splits` the training and validation splits."""
    if len(pairs) > 1:
        raise KdmtError("--dataset takes one pair; give several pairs as files (--train, --valid)")
    if data_files and not all("=" in f for f in data_files):
        raise KdmtError("--data-files takes SPLIT=PATH, e.g. --data-files train=train.jsonl")
    files = dict(f.split("=", 1) for f in data_files) if data_files else None
    p = pairs[0]
    train, valid = (dataset_pairs(dataset, split, p.src, p.tgt, config, files, **columns) for split in splits)
    return PairCorpus(p, train, valid)


def prepare_multilingual(
    out: Path,
    corpora: list[PairCorpus],
    clean: CleanOptions,
    vocab: VocabOptions,
    source_tags: bool = False,
    workers: int = 1,
    report: Report | None = None,
) -> Prepared:
    """`prepare` for several language pairs in one directory: each pair is cleaned on its own, and written
    after the one before into the same files, its sources tagged with the target language (and, with
    `source_tags`, the source language; kdmt.languages); OUT/train.PAIR.src holds a pair's tagged training
    sources alone, for `kdmt distill` with that pair's teacher. One sentencepiece model covers every
    language, trained on a sample in which each language's share is balanced with `vocab.spm_temperature`.
    prepare.json records the pairs and their counts, in order: the rows each pair holds (kdmt.languages)."""
    if len(corpora) < 2:
        raise KdmtError("a multilingual prepare takes several pairs")
    if not vocab.joint_vocab:
        raise KdmtError("several pairs share one sentencepiece model: drop --separate-vocab")
    report = report or (lambda _: None)
    pairs = [c.pair for c in corpora]
    with _removed_on_failure(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / PREPARED_MARKER).unlink(missing_ok=True)
        with ExitStack() as stack:
            names = _text_files() + [f"train.{p.name}.src" for p in pairs]
            text = {name: stack.enter_context(atomic_path(out / name)) for name in names}
            records: list[dict] = [{"pair": p.name, "stats": {}} for p in pairs]
            samples = []
            with _open_split(text, "train") as files:
                for i, (c, record) in enumerate(zip(corpora, records)):
                    sample = Reservoir(vocab.spm_sample // 2, SAMPLE_SEED + i)
                    with open(text[f"train.{c.pair.name}.src"], "w", encoding="utf-8") as alone:
                        tagged = (*files, alone), tag_source("", c.pair, source_tags)
                        stats = _clean_into(c.train, f"train {c.pair.name}", *tagged, clean, sample, workers, report)
                    _check_not_empty(f"{c.pair.name} training", stats)
                    record["stats"]["train"] = asdict(stats)
                    samples.append(sample.items)
            with _open_split(text, "valid") as files:
                for c, record in zip(corpora, records):
                    prefix = tag_source("", c.pair, source_tags)
                    options = replace(clean, dedup=False)
                    stats = _clean_into(c.valid, f"valid {c.pair.name}", files, prefix, options, None, 1, report)
                    _check_not_empty(f"{c.pair.name} validation", stats)
                    record["stats"]["valid"] = asdict(stats)
            totals = {split: _total([r["stats"][split] for r in records]) for split in ("train", "valid")}
            langs = list(dict.fromkeys(lang for p in pairs for lang in (p.src, p.tgt)))
            prepared = Prepared(
                ",".join(dict.fromkeys(p.src for p in pairs)),
                ",".join(dict.fromkeys(p.tgt for p in pairs)),
                True,
                vocab.vocab_size,
                totals,
                records,
                source_tags,
            )
            pools = _language_pools(pairs, samples, langs)
            counts = [
                sum(r["stats"]["train"]["kept"] for r, p in zip(records, pairs) if lang in (p.src, p.tgt))
                for lang in langs
            ]
            balanced = _balanced_sample(pools, counts, vocab.spm_sample, vocab.spm_temperature)
            report(f"training sentencepiece on {len(balanced):,} sentences of {len(langs)} languages")
            spm = _train_vocab_on(out, prepared.src_vocab_path(out), balanced, vocab, symbols(pairs, source_tags))
            _tokenize(out, text, spm, spm, workers, report)
        save_prepared(out, prepared)
    return prepared


def _total(stats: list[dict[str, int]]) -> dict[str, int]:
    """The counts of several pairs' cleaning, added up."""
    return {key: sum(s[key] for s in stats) for key in stats[0]}


def _language_pools(pairs: list[Pair], samples: list[list[tuple[str, str]]], langs: list[str]) -> list[list[str]]:
    """The sampled sentences of each language, from every pair that has it on either side, each once (a
    multi-way parallel corpus gives the same English with German and with French)."""
    pools: dict[str, dict[str, None]] = {lang: {} for lang in langs}
    for pair, sample in zip(pairs, samples):
        for s, t in sample:
            pools[pair.src][s] = None
            pools[pair.tgt][t] = None
    return [list(pools[lang]) for lang in langs]


def _balanced_sample(pools: list[list[str]], counts: list[int], size: int, temperature: float) -> list[str]:
    """At most `size` sentences, language by language, each language's number ∝ (its share of `counts`)^(1/T)
    (pair_weights): a small language's sentences are repeated up to its number, a large one's drawn."""
    total = min(size, sum(map(len, pools)))
    rng = random.Random(SAMPLE_SEED)
    out = []
    for pool, n in zip(pools, pair_weights(counts, temperature) * total):
        whole, rest = divmod(round(n), len(pool))
        out += pool * whole + rng.sample(pool, rest)
    return out


def _tokenize(
    out: Path, text: dict[str, Path], src_vocab: Vocab, tgt_vocab: Vocab, workers: int, report: Report
) -> None:
    for split in ("train", "valid"):
        paths = text[f"{split}.src"], text[f"{split}.tgt"]
        key = corpus_key(*paths, src_vocab, tgt_vocab)
        done = partial(_tokenized, split, report)
        write_tokenized(stream_parallel(*paths), src_vocab, tgt_vocab, out / split, key, workers, done)


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


@contextmanager
def _open_split(text: dict[str, Path], split: str) -> Iterator[tuple[TextIO, TextIO]]:
    """The source and target text files of `split`, open for writing."""
    with (
        open(text[f"{split}.src"], "w", encoding="utf-8") as src,
        open(text[f"{split}.tgt"], "w", encoding="utf-8") as tgt,
    ):
        yield src, tgt


def _clean_into(
    pairs: Pairs,
    split: str,
    files: tuple[TextIO, ...],
    prefix: str,
    options: CleanOptions,
    sample: Reservoir | None,
    workers: int,
    report: Report,
) -> CleanStats:
    """Clean `pairs` in `workers` processes into `files` (source, target, and another source file if given),
    each source after `prefix` (its language tags), offering each kept pair to `sample`; the counts."""
    stats = CleanStats()
    kept = clean_stream(pairs, stats, options.max_words, options.max_ratio, options.dedup, CLEAN_CHUNK, workers)
    src, tgt, *more = files
    for chunk in kept:
        if chunk:
            sources, targets = zip(*chunk)
            if prefix:
                sources = [prefix + s for s in sources]
            for f in (src, *more):
                f.write("\n".join(sources) + "\n")
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
    settings = _spm_settings(options)
    src_path, tgt_path = prepared.src_vocab_path(out), prepared.tgt_vocab_path(out)
    models = [(src_path, (0, 1))] if options.joint_vocab else [(src_path, (0,)), (tgt_path, (1,))]
    with tempfile.TemporaryDirectory(prefix=".spm-sample.", dir=out) as tmp:
        texts = [Path(tmp) / f"{path.name}.txt" for path, _ in models]
        for text, (_, sides) in zip(texts, models):
            with open(text, "w", encoding="utf-8") as f:
                for side in sides:
                    f.writelines(pair[side] + "\n" for pair in sample)
        sample.clear()
        vocabs = [train_vocab(path, text, **settings) for (path, _), text in zip(models, texts)]
    return vocabs[0], vocabs[-1]


def _spm_settings(options: VocabOptions) -> dict:
    return dict(
        vocab_size=options.vocab_size,
        model_type=options.spm_type,
        character_coverage=options.character_coverage,
        input_sentence_size=options.spm_sample,
    )


def _train_vocab_on(out: Path, path: Path, lines: list[str], options: VocabOptions, symbols: list[str]) -> Vocab:
    """Train one sentencepiece model on `lines` (through a temporary file, `lines` emptied before
    sentencepiece takes its memory), with the user-defined `symbols`."""
    with tempfile.TemporaryDirectory(prefix=".spm-sample.", dir=out) as tmp:
        text = Path(tmp) / f"{path.name}.txt"
        with open(text, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        lines.clear()
        return train_vocab(path, text, **_spm_settings(options), user_defined_symbols=symbols)


def _tokenized(split: str, report: Report, pairs: int) -> None:
    report(f"tokenizing {split}: {pairs:,} pairs")


def _describe(stats: CleanStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(stats).items())
