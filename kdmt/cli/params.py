"""The options that several commands share, declared once: devices, engines, data and teachers (search's:
kdmt.translate.SearchOptions); and the options built from a configuration dataclass's fields (kdmt.config)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kdmt.config import from_options, options
from kdmt.options import COUNT, NONNEGATIVE_INT
from kdmt.translate import SearchOptions


def config_options(cls: type, defaults: dict[str, Any]) -> list[inspect.Parameter]:
    """A command-line option for each option field of a configuration dataclass: its name, type, help and
    default (or the one in `defaults`); an option given as text (a field with `parse`) takes a string."""
    hints = typing.get_type_hints(cls)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=defaults.get(f.name, f.default),
            annotation=_annotation(f, hints[f.name]),
        )
        for f in options(cls)
    ]


def field_option(cls: type, name: str) -> Any:
    """The option of a configuration dataclass's field `name`, as an annotation, for a command that takes it
    alone (with its own default)."""
    field = next(f for f in options(cls) if f.name == name)
    return _annotation(field, typing.get_type_hints(cls)[name])


def _annotation(f: dataclasses.Field, hint: Any) -> Any:
    """An option field's command-line option: its type (a string, for one given as text), its flags and help,
    and its range (which kdmt.cli.common.command checks)."""
    kind = (str if f.default is not None else str | None) if f.metadata["parse"] else hint
    flags = typer.Option(*f.metadata["flags"], help=f.metadata["help"])
    return Annotated[kind, flags] if f.metadata["range"] is None else Annotated[kind, flags, f.metadata["range"]]


def with_options(**groups: type | tuple[type, dict[str, Any]]) -> Callable[[Callable], Callable]:
    """A command whose parameter `NAME: Cls` (NAME in `groups`) is given as Cls's options, one per field
    (config_options; `groups[NAME]` may be (Cls, {field: default}) for other defaults): the command takes each
    option on the command line (kdmt.cli.common.command checks their ranges) and receives Cls(**options)."""

    def wrap(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        params, fields = [], {}
        for p in inspect.signature(fn).parameters.values():
            if p.name in groups:
                cls, defaults = groups[p.name] if isinstance(groups[p.name], tuple) else (groups[p.name], {})
                built = config_options(cls, defaults)
                fields[p.name] = cls, [q.name for q in built]
                params += built
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]))

        @functools.wraps(fn)
        def wrapper(**kwargs):
            for name, (cls, names) in fields.items():
                kwargs[name] = from_options(cls, {n: kwargs.pop(n) for n in names})
            return fn(**kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return wrap


BatchTokens = field_option(SearchOptions, "batch_tokens")  # score, soft-targets
Bf16 = Annotated[bool, typer.Option("--bf16/--fp32", help="Decode in bf16 on CUDA.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: CUDA if present).")]
Threads = Annotated[
    int, typer.Option(help="CPU threads of either engine (0: torch's default, one per core)."), NONNEGATIVE_INT
]
Workers = Annotated[int, typer.Option(help="Processes that tokenize the corpus."), COUNT]  # prepare
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="kdmt (kdmt's search), ctranslate2 (a checkpoint or Hugging Face model converted once, cached) or "
        "transformers (a Hugging Face model's generate()); default: kdmt for checkpoints, ctranslate2 for "
        "Hugging Face models it converts, else transformers.",
    ),
]
Quantization = Annotated[str, typer.Option(help="With --engine ctranslate2: the converted model's weights.")]
SrcLang = Annotated[
    str | None,
    typer.Option(help="A many-to-many model's source language code (NLLB deu_Latn, M2M100 de, MBart de_DE)."),
]
TgtLang = Annotated[
    str | None,
    typer.Option(help="A many-to-many Hugging Face model's target language code (its token is forced first)."),
]
SourcePrefix = Annotated[
    str, typer.Option(help="Prepended to every source line (T5: 'translate German to English: ', MADLAD: '<2en> ').")
]
PairOption = Annotated[
    str | None,
    typer.Option("--pair", help="The language pair SRC-TGT to translate (e.g. fr-en): a multilingual model's tags."),
]
BootstrapSamples = Annotated[
    int,
    typer.Option(help="Resamples of sacrebleu's paired bootstrap test of each difference (0: no test)."),
    NONNEGATIVE_INT,
]

Data = Annotated[Path, typer.Option(help="A directory written by kdmt prepare.")]
