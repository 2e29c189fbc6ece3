"""Options declared once: a configuration dataclass's field is an option, with its default, its help and its
range (kdmt.cli.params builds the command-line options from the fields); and configuration files, a YAML
mapping of options to values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from pathlib import Path, PurePath
from typing import Any

import yaml

from kdmt.errors import KdmtError
from kdmt.options import Range

CONFIG_FILE = "config.yaml"  # a training run's, in its directory


def option(
    default: Any,
    help: str,
    range: Range | None = None,
    *,
    flags: tuple[str, ...] = (),
    parse: Callable[[str | None], Any] | None = None,
) -> Any:
    """A dataclass field that is an option: `flags` its names when not --FIELD-NAME (e.g. "--bf16/--fp32"),
    `parse` the reader of an option given as text (e.g. a duration, 30m, into seconds)."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range, "flags": flags, "parse": parse})


def options(cls: type) -> list[dataclasses.Field]:
    """The fields of a configuration dataclass that are options, in their order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def from_options(cls: type, values: dict[str, Any]) -> Any:
    """The configuration of the options' values, each given as text read by its field's `parse`."""
    parse = {f.name: f.metadata["parse"] for f in options(cls) if f.metadata["parse"] is not None}
    return cls(**{k: parse[k](v) if k in parse else v for k, v in values.items()})


def read_config(path: Path, known: Collection[str]) -> dict[str, Any]:
    """The options a configuration file gives: a YAML mapping of option names
    (max_steps or max-steps) to values; a name that is not in `known` is refused."""
    text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise KdmtError(f"{path}: not a YAML file ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise KdmtError(f"{path}: not a mapping of options to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    if unknown := [k for k in values if k not in known]:
        raise KdmtError(f"{path}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    return values


def dump_config(values: dict[str, Any]) -> str:
    """Options and their values as a configuration file that read_config reads back."""
    plain = {k: _plain(v) for k, v in values.items()}
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """A value as a configuration file holds it: paths as strings, tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, PurePath) else value
