"""Streamed work in chunks, spread over worker processes, with the results in input order and only a few
chunks in flight, so that memory does not grow with the input."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def ordered_map(
    function: Callable[[Any], Any],
    items: Iterable,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator:
    """`map(function, items)` computed in `workers` processes (forked where the system can, so that they start
    at once; each runs `initializer(*initargs)` first), in input order, with at most 2·workers + 1 items in
    flight."""
    start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(start_method).Pool(workers, initializer, initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
