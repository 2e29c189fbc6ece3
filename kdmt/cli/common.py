"""What every command shares: stderr's console, and the wrapper that checks a command's options and turns its
errors into one line and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
import typer
from rich.console import Console

from kdmt.errors import KdmtError
from kdmt.options import check_ranges
from kdmt.shards import launch_rank

err = Console(stderr=True)
if not err.is_terminal:
    err.width = 200  # a log file or a pipe: lines and tables are not folded at 80 columns


def command(name: str) -> Callable[[Callable], Callable]:
    """Make a function the command `name` (kdmt.cli.app registers it): its numeric options are checked
    against kdmt.options.RANGES before it starts, and its KdmtError becomes one line on stderr and exit code 2."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                check_ranges(kwargs)
                return fn(*args, **kwargs)
            except KdmtError as e:
                print(f"kdmt {name}: error: {e}", file=sys.stderr)
                raise typer.Exit(2) from None
            except OSError as e:  # a full disk, a read-only or missing directory, ...
                print(f"kdmt {name}: error: {describe_os_error(e)}", file=sys.stderr)
                raise typer.Exit(1) from None
            except (MemoryError, torch.OutOfMemoryError):
                print(
                    f"kdmt {name}: error: out of memory; use smaller batches (--max-tokens/--batch-tokens)",
                    file=sys.stderr,
                )
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                print(f"kdmt {name}: interrupted", file=sys.stderr)
                raise typer.Exit(130) from None

        wrapper.command_name = name
        return wrapper

    return wrap


def describe_os_error(e: OSError) -> str:
    """'PATH: reason' for a failed read or write."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def progress_console() -> Console:
    """Where a sharded command shows its progress: stderr, except in torchrun's processes other than rank 0."""
    return err if launch_rank() == 0 else Console(stderr=True, quiet=True)
