"""Ctrl-C and SIGTERM during training: a request to stop after the current step, its state saved."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM: training stops after the current step, its state saved."""

    requested = False


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT or SIGTERM (Ctrl-C, `kill`, a cluster job's end) asks training to
    stop at the next step; a second SIGINT interrupts at once."""
    stop = StopRequest()

    def request(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = True

    try:
        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        yield stop
        return
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
