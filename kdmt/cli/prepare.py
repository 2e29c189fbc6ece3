"""kdmt prepare: a parallel corpus cleaned, its sentencepiece model trained, tokenized."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdmt.cli.common import command, err
from kdmt.errors import KdmtError
from kdmt.prepare import (
    SPM_SAMPLE,
    CleanOptions,
    VocabOptions,
    dataset_corpus,
    file_corpora,
    language_pairs,
    prepare,
    prepare_multilingual,
)


@command("prepare", config=True)
def prepare_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared data to.")],
    src_lang: Annotated[str | None, typer.Option("--src", help="Source language code, e.g. de.")] = None,
    tgt_lang: Annotated[str | None, typer.Option("--tgt", help="Target language code, e.g. en.")] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            help="A language pair SRC-TGT (e.g. de-en), instead of --src/--tgt; repeat for a multilingual "
            "directory: one sentencepiece model, sources tagged with the target language (<2en>)."
        ),
    ] = None,
    train: Annotated[
        list[str] | None,
        typer.Option(
            help="Training files prefix: PREFIX.SRC and PREFIX.TGT (.gz allowed); with several --pair, "
            "once for all or once per pair."
        ),
    ] = None,
    valid: Annotated[list[str] | None, typer.Option(help="Validation files prefix, as --train.")] = None,
    source_tags: Annotated[
        bool, typer.Option(help="Several pairs: sources carry their own language's tag too (<from_de>).")
    ] = False,
    spm_temperature: Annotated[
        float,
        typer.Option(help="Several pairs: each language's share of the sentencepiece sample ∝ its share^(1/T)."),
    ] = 5.0,
    dataset: Annotated[
        str | None,
        typer.Option(help="A `datasets` source instead of files: a hub name, or json/csv/parquet with --data-files."),
    ] = None,
    dataset_config: Annotated[str | None, typer.Option(help="The dataset's configuration (e.g. de-en).")] = None,
    data_files: Annotated[
        list[str] | None, typer.Option(help="SPLIT=PATH for a local json/csv/parquet dataset; repeat per split.")
    ] = None,
    train_split: Annotated[str, typer.Option(help="Dataset split to train on.")] = "train",
    valid_split: Annotated[str, typer.Option(help="Dataset split to validate on.")] = "validation",
    src_field: Annotated[
        str | None, typer.Option(help="Dataset field of the source text (default: translation.SRC or SRC).")
    ] = None,
    tgt_field: Annotated[str | None, typer.Option(help="Dataset field of the target text.")] = None,
    vocab_size: Annotated[int, typer.Option(help="Sentencepiece vocabulary size.")] = 8000,
    joint_vocab: Annotated[
        bool, typer.Option("--joint-vocab/--separate-vocab", help="One vocabulary for both languages.")
    ] = True,
    spm_type: Annotated[str, typer.Option(help="Sentencepiece model type: unigram or bpe.")] = "unigram",
    max_words: Annotated[int, typer.Option(help="Drop training pairs with a side longer than this many words.")] = 250,
    max_ratio: Annotated[float, typer.Option(help="Drop pairs whose word-length ratio exceeds this.")] = 3.0,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate training pairs.")] = True,
    spm_sample: Annotated[
        int, typer.Option(help="Sentences sentencepiece is trained on: a random sample of the cleaned corpus.")
    ] = SPM_SAMPLE,
    workers: Annotated[int, typer.Option(help="Processes that tokenize the corpus.")] = 1,
    vocab_from: Annotated[
        Path | None,
        typer.Option(
            help="A MarianMT (Hugging Face) teacher's directory: write the data in its vocabulary instead of "
            "training sentencepiece, for word-level KD from it."
        ),
    ] = None,
) -> None:
    """Clean a parallel corpus, train a sentencepiece model and write the tokenized corpus, streaming.

    Example: kdmt prepare --src de --tgt en --train data/multi30k/train --valid data/multi30k/val -o work/data

    Several pairs: kdmt prepare --pair de-en --pair fr-en --train data/multi30k/train --valid data/multi30k/val \
    -o work/data
    """
    pairs = language_pairs(src_lang, tgt_lang, pair)
    if (dataset is None) == (train is None):
        raise KdmtError("give either --train and --valid (text files) or --dataset")
    clean = CleanOptions(max_words, max_ratio, dedup)
    vocab = VocabOptions(vocab_size, joint_vocab, spm_type, sample=spm_sample, temperature=spm_temperature)
    if dataset is None:
        corpora = file_corpora(pairs, train, valid)
    else:
        splits, columns = (train_split, valid_split), dict(src_field=src_field, tgt_field=tgt_field)
        corpora = [dataset_corpus(pairs, dataset, dataset_config, data_files, splits, **columns)]
    if vocab_from is not None and len(corpora) > 1:
        raise KdmtError("--vocab-from takes one pair (a MarianMT teacher's)")
    with err.status("prepare") as status:
        if len(corpora) == 1:
            c = corpora[0]
            prepared = prepare(
                out, c.pair.src, c.pair.tgt, c.train, c.valid, clean, vocab, workers, status.update, vocab_from
            )
        else:
            prepared = prepare_multilingual(out, corpora, clean, vocab, source_tags, workers, status.update)
    table = Table("split", *prepared.stats["train"].keys(), title=f"kdmt prepare → {out}")
    for split, stats in prepared.stats.items():
        table.add_row(split, *(f"{v:,}" for v in stats.values()))
    for record in prepared.pairs or []:
        for split, stats in record["stats"].items():
            table.add_row(f"{split} {record['pair']}", *(f"{v:,}" for v in stats.values()))
    err.print(table)
