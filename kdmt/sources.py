"""Parallel text from a Hugging Face `datasets` source: a hub dataset, or local JSON/CSV/Parquet."""

from __future__ import annotations

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


def load_dataset_pairs(
    name: str,
    split: str,
    src_lang: str,
    tgt_lang: str,
    config: str | None = None,
    data_files: dict[str, str] | None = None,
    src_field: str | None = None,
    tgt_field: str | None = None,
) -> tuple[list[str], list[str]]:
    """The source and target sentences of one split of a `datasets` source."""
    try:
        import datasets
    except ImportError:
        raise KdmtError("reading a dataset source needs the 'datasets' package: pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, config, data_files=data_files, split=split)
    except Exception as e:  # datasets raises many types: missing files, unknown splits, network errors
        raise KdmtError(f"cannot load dataset {name!r} split {split!r}: {str(e).splitlines()[0][:300]}") from None
    src_field = src_field or default_field(ds.column_names, src_lang)
    tgt_field = tgt_field or default_field(ds.column_names, tgt_lang)
    src, tgt = [], []
    for row in ds:
        src.append(_field(row, src_field))
        tgt.append(_field(row, tgt_field))
    return src, tgt
