"""Progress of long work: a live bar on a terminal, a plain line at an interval in a log file or a pipe."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_INTERVAL_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 65 -> '1m05s', 7 -> '7s'."""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class RateColumn(ProgressColumn):
    """Units per second, e.g. '812.4 sent/s'."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.1f} {self.unit}/s" if task.speed else "")


class ProgressLine:
    """Work of `total` units (steps, sentences): a rich bar when `console` is a terminal; otherwise one line
    every `interval` seconds (LOG_INTERVAL_S) with the count, the rate, the ETA and the caller's `info` text.

    Use as a context manager; `update(completed, info)` or `advance(n)` as the work goes on."""

    def __init__(
        self,
        console: Console,
        description: str,
        total: int | None,
        unit: str,
        completed: int = 0,
        interval: float | None = None,
        transient: bool = False,
    ):
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.completed, self.info = completed, ""
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(unit),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=transient,
            )
            self.task = self.bar.add_task(description, total=total, completed=completed, info="")
        self.start = self.last_line = time.monotonic()
        self.start_count = completed

    def __enter__(self) -> ProgressLine:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    def update(self, completed: int, info: str | None = None) -> None:
        self.completed = completed
        if info is not None:
            self.info = info
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, info=self.info)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.console.print(self.line(now), highlight=False, soft_wrap=True)

    def line(self, now: float) -> str:
        """'train: 1,200/5,000 steps (24%), 3.1 steps/s, ETA 20m26s, loss 4.210 …'"""
        elapsed = now - self.start
        rate = (self.completed - self.start_count) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.completed:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} {self.unit} ({self.completed / self.total:.0%})"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.completed) / rate)}")
        if self.info:
            parts.append(self.info)
        return ", ".join(parts)
