"""What every command shares: stderr's console, and the wrapper that checks a command's options and turns its
errors into one line and an exit code."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Column, Table

from kdmt.config import dump_config, read_config
from kdmt.distributed import launch_rank
from kdmt.errors import KdmtError
from kdmt.options import Range, check_ranges
from kdmt.progress import ProgressLine

err = Console(stderr=True)
if not err.is_terminal:
    err.width = 200  # a log file or a pipe: lines and tables are not folded at 80 columns


def print_table(headers: list[str], body: list[list[str]], title: str) -> None:
    """A table of text cells (kdmt.report.table, eval_table) on stderr, its first column folded if long."""
    rich_table = Table(Column(headers[0], overflow="fold"), *headers[1:], title=title)
    for cells in body:
        rich_table.add_row(*cells)
    err.print(rich_table)


def fail(name: str, message: str, code: int = 2) -> typer.Exit:
    """The error of the command `name`, as one line on stderr; raise what it returns."""
    print(f"kdmt {name}: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def load_config(ctx: typer.Context, path: Path | None) -> Path | None:
    """--config FILE: the file's values become the defaults of the command's options, which the flags given
    on the command line override (click's default_map)."""
    if path is not None:
        params = {p.name: p for p in ctx.command.params if p.name not in CONFIG_OPTIONS}
        try:
            values = read_config(path, params)
        except KdmtError as e:
            raise fail(ctx.info_name, str(e)) from None
        except OSError as e:
            raise fail(ctx.info_name, describe_os_error(e), 1) from None
        one = [k for k, v in values.items() if params[k].multiple and not isinstance(v, list)]
        ctx.default_map = values | {k: [values[k]] for k in one}
    return path


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A YAML file of this command's options (max_steps: 1000, ...), as --print-config writes; "
        "the flags given override it.",
        is_eager=True,
        callback=load_config,
    ),
]
PrintConfig = Annotated[
    bool, typer.Option("--print-config", help="Print the effective configuration (a file for --config) and exit.")
]
CONFIG_OPTIONS = ("config", "print_config")


def effective_config(ctx: typer.Context, resolved: dict[str, Any] | None = None) -> str:
    """The options of a command, as a configuration file (--config reads it back); `resolved` the values
    that the command settled, instead of those given."""
    names = [p.name for p in ctx.command.params if p.name in ctx.params and p.name not in CONFIG_OPTIONS]
    return dump_config({name: ctx.params[name] for name in names} | (resolved or {}))  # in the order of --help


def given(ctx: typer.Context, name: str) -> bool:
    """Whether a command's option `name` was given: on the command line, or in its --config file."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP")


def command(name: str, config: bool = False) -> Callable[[Callable], Callable]:
    """Make a function the command `name` (kdmt.cli.app registers it): its numeric options are checked
    against the ranges declared in their annotations before it starts, and its
    KdmtError becomes one line on stderr and exit code 2. With `config`, it also takes --config FILE and
    --print-config (and its context, `ctx`, which the function may take too)."""

    def wrap(fn: Callable) -> Callable:
        takes_ctx = "ctx" in inspect.signature(fn).parameters
        ranges = declared_ranges(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                check_ranges(kwargs, ranges)
                if config:
                    del kwargs["config"]
                    ctx = kwargs["ctx"] if takes_ctx else kwargs.pop("ctx")
                    if kwargs.pop("print_config"):
                        sys.stdout.write(effective_config(ctx))
                        return None
                return fn(*args, **kwargs)
            except KdmtError as e:
                raise fail(name, str(e)) from None
            except OSError as e:  # a full disk, a read-only or missing directory, ...
                raise fail(name, describe_os_error(e), 1) from None
            except (MemoryError, torch.OutOfMemoryError):
                print(
                    f"kdmt {name}: error: out of memory; use smaller batches (--max-tokens/--batch-tokens)",
                    file=sys.stderr,
                )
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                print(f"kdmt {name}: interrupted", file=sys.stderr)
                raise typer.Exit(130) from None

        if config:
            add_config_options(wrapper, takes_ctx)
        wrapper.command_name, wrapper.ranges = name, ranges
        return wrapper

    return wrap


def declared_ranges(fn: Callable) -> dict[str, Range]:
    """The range of each of a command's numeric options, declared in its annotation: a configuration
    field's option (kdmt.cli.params.with_options, field_option) or one of kdmt.cli.params's."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return {
        name: extra
        for name, hint in hints.items()
        for extra in getattr(hint, "__metadata__", ())
        if isinstance(extra, Range)
    }


def add_config_options(fn: Callable, takes_ctx: bool) -> None:
    """Give a command's signature --config and --print-config, last, and its context if it has none."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()]
    if not takes_ctx:
        params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in (("config", ConfigFile, None), ("print_config", PrintConfig, False))
    ]
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {p.name: p.annotation for p in params}


def describe_os_error(e: OSError) -> str:
    """'PATH: reason' for a failed read or write."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def run_sharded(label: str, lines: int, shard_size: int, run: Callable, out: Path) -> Any:
    """A sharded run (distill's, soft-targets') with its progress line, which says each shard's end; what it
    returns, or None (said in one line) where other processes are writing the last shards."""
    shards = -(-lines // shard_size)
    with ProgressLine(progress_console(), label, lines, "sent", transient=True) as progress:

        def shard_done(index: int) -> None:
            progress.update(progress.completed, f"shard {index + 1} of {shards} written")

        result = run(progress.advance, shard_done)
    if result is None:
        err.print(f"no shard left for this process; the last process to finish writes {out}", soft_wrap=True)
    return result


def progress_console() -> Console:
    """Where a sharded command shows its progress: stderr, except in torchrun's processes other than rank 0."""
    return err if launch_rank() == 0 else Console(stderr=True, quiet=True)
