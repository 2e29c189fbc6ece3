"""The ranges of numeric command-line options, and the one check of them.

An option of a configuration dataclass (kdmt.config: prepare's, the model's, training's, the search's,
distill's, a student's) carries its range in its field; the few options that are no field (threads, workers,
bootstrap samples: kdmt.cli.params) carry theirs in their annotation. `kdmt.cli.common.command` checks each
command's values against them before the command starts: a value out of range is one line naming the option,
its value and the range (exit 2), and nothing is done. An option given several values (a list or a tuple) has each
checked. Checks that relate two options (--nbest at most --beam, --d-model divisible by --n-heads, ...) stay
with the code that reads them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdmt.errors import KdmtError


@dataclass(frozen=True)
class Range:
    """The values of a numeric option: from `lo` up to `hi` (None: no upper end), each end included unless
    open; a float must also be finite."""

    kind: type  # int or float
    lo: int | float
    hi: int | float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: int | float) -> bool:
        if self.kind is float and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


COUNT = Range(int, 1)  # sizes, steps, layers, beams: at least one
NONNEGATIVE_INT = Range(int, 0)
NONNEGATIVE = Range(float, 0)
POSITIVE = Range(float, 0, lo_open=True)
FRACTION = Range(float, 0, 1, hi_open=True)  # dropout, label smoothing, Adam's betas
SHARE = Range(float, 0, 1)
SEED = Range(int, 0, 2**31 - 1)


def flag(name: str) -> str:
    """The command-line flag of an option: max_len_a -> --max-len-a."""
    return "--" + name.replace("_", "-")


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range]) -> None:
    """Raise KdmtError for the first value outside its option's range; None (not given) and names without
    a range pass."""
    for name, value in values.items():
        allowed = ranges.get(name)
        if allowed is None or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if v not in allowed:
                raise KdmtError(f"{flag(name)} must be {allowed}, not {v}")


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '30m', '2h', '1.5h' -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise KdmtError(f"cannot read the duration {text!r} (examples: 90s, 30m, 2h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
