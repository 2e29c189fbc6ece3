"""Parallel text from a Hugging Face `datasets` source: a hub dataset, or local JSON/CSV/Parquet."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

from kdmt.errors import KdmtError

LOCAL_FORMATS = ("json", "csv", "parquet")


def _field(row: dict[str, Any], path: str) -> str:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KdmtError(f"dataset rows have no field {path!r} (columns: {', '.join(row)})")
        value = value[part]
    return "" if value is None else str(value)


def default_field(columns: list[str], lang: str) -> str:
    """`translation.LANG` for translation datasets (wmt, opus, …), else a column named LANG."""
    if "translation" in columns:
        return f"translation.{lang}"
    if lang in columns:
        return lang
    raise KdmtError(
        f"cannot tell which column holds {lang!r} (columns: {', '.join(columns)}); name it with --src-field/--tgt-field"
    )


def dataset_pairs(
    name: str,
    split: str,
    src_lang: str,
    tgt_lang: str,
    config: str | None = None,
    data_files: dict[str, str] | None = None,
    src_field: str | None = None,
    tgt_field: str | None = None,
) -> Iterator[tuple[str, str]]:
    """The (source, target) sentences of one split of a `datasets` source, streamed: the first row is read
    at once, to check the fields, the others as they are asked for."""
    try:
        import datasets
    except ImportError:
        raise KdmtError("reading a dataset source needs the 'datasets' package: pip install datasets") from None
    datasets.disable_progress_bars()
    rows = _rows(
        name, split, lambda: datasets.load_dataset(name, config, data_files=data_files, split=split, streaming=True)
    )
    first = next(rows, None)
    if first is None:
        return iter(())
    src_field = src_field or default_field(list(first), src_lang)
    tgt_field = tgt_field or default_field(list(first), tgt_lang)
    first_pair = _field(first, src_field), _field(first, tgt_field)
    return chain([first_pair], ((_field(row, src_field), _field(row, tgt_field)) for row in rows))


def _rows(name: str, split: str, load: Callable[[], Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """The rows of a dataset; its errors (missing files, unknown splits, the network) as one-line KdmtErrors."""
    try:
        yield from load()
    except Exception as e:  # datasets raises many types
        raise KdmtError(f"cannot load dataset {name!r} split {split!r}: {str(e).splitlines()[0][:300]}") from None
