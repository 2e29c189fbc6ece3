"""kdmt prepare: a parallel corpus cleaned, its sentencepiece model trained, tokenized."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdmt.cli.common import command, err
from kdmt.cli.params import Workers, with_options
from kdmt.prepare import CleanOptions, CorpusOptions, VocabOptions, prepare_corpus


@command("prepare", config=True)
@with_options(corpus=CorpusOptions, clean=CleanOptions, vocab=VocabOptions)
def prepare_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared data to.")],
    *,
    corpus: CorpusOptions,
    clean: CleanOptions,
    vocab: VocabOptions,
    workers: Workers = 1,
) -> None:
    """Clean a parallel corpus, train a sentencepiece model and write the tokenized corpus, streaming.

    Example: kdmt prepare --src de --tgt en --train data/multi30k/train --valid data/multi30k/val -o work/data

    Several pairs: kdmt prepare --pair de-en --pair fr-en --train data/multi30k/train --valid data/multi30k/val \
    -o work/data
    """
    with err.status("prepare") as status:
        prepared = prepare_corpus(out, corpus, clean, vocab, workers, status.update)
    table = Table("split", *prepared.stats["train"].keys(), title=f"kdmt prepare → {out}")
    for split, stats in prepared.stats.items():
        table.add_row(split, *(f"{v:,}" for v in stats.values()))
    for record in prepared.pairs or []:
        for split, stats in record["stats"].items():
            table.add_row(f"{split} {record['pair']}", *(f"{v:,}" for v in stats.values()))
    err.print(table)
