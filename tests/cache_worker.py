"""`python tests/cache_worker.py DATA DISTILLED LOG`: the student's corpus of DATA and DISTILLED
(kdmt.student.student_corpus), printed as "fingerprint pairs", with each tokenization of the cache logged
to LOG ("build PID").

Environment, to have another process arrive while the cache is half written: CACHE_HOLD, a file that a
build, once its arrays are written and before its record is, waits for (and then a little more, for that
process to reach the cache); CACHE_ARRIVE, a file this process makes as it asks for the cache.
"""

import os
import sys
import time
from pathlib import Path

import kdmt.student
from kdmt.data import PreparedData

SETTLE_SECONDS = 0.5  # how long a held build waits after the other process arrived


def log_builds(log: Path, hold: Path | None) -> None:
    """Wrap kdmt.student._tokenize_distilled in this process: logged, then held."""
    tokenize = kdmt.student._tokenize_distilled

    def logged(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"build {os.getpid()}\n")
        tokenize(*args, **kwargs)
        deadline = time.monotonic() + 120
        while hold is not None and not hold.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(SETTLE_SECONDS if hold else 0)

    kdmt.student._tokenize_distilled = logged


def announce(arrive: Path) -> None:
    """Wrap kdmt.student.cached in this process: `arrive` is made as the cache is asked for."""
    cached = kdmt.student.cached

    def announced(*args, **kwargs):
        arrive.touch()
        return cached(*args, **kwargs)

    kdmt.student.cached = announced


if __name__ == "__main__":
    data, distilled, log = sys.argv[1:]
    hold, arrive = os.environ.get("CACHE_HOLD"), os.environ.get("CACHE_ARRIVE")
    log_builds(Path(log), Path(hold) if hold else None)
    if arrive:
        announce(Path(arrive))
    corpus, _ = kdmt.student.student_corpus(PreparedData.open(data), [distilled], 0.0, 1)
    print(corpus.fingerprint(), len(corpus))
