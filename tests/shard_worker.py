"""`python tests/shard_worker.py distill ...`: the kdmt command line, with every call of
Translator.translate_nbest (one a shard) logged, and at the test's asking held at a start line or killed.

Environment: SHARD_LOG, the file to append "pid<TAB>first line of the shard" to; SHARD_START and
SHARD_PROCESSES, a directory where the first call waits for that many processes to arrive (each holding
its first shard); SHARD_DIE_AT, the call (1-based) at which the process kills itself with SIGKILL,
before translating: it dies holding the claim of an unfinished shard.
"""

import os
import signal
import sys
import time
from pathlib import Path

from kdmt.cli import main
from kdmt.translate import Translator


def log_translations(log: Path, die_at: int = 0, start: Path | None = None, processes: int = 1) -> None:
    """Wrap Translator.translate_nbest in this process."""
    translate_nbest = Translator.translate_nbest
    calls = 0

    def logged(self, lines, nbest=1, progress=None, first_line=0):
        nonlocal calls
        calls += 1
        if calls == 1 and start is not None:
            (start / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(start.iterdir())) < processes and time.monotonic() < deadline:
                time.sleep(0.02)
        if calls == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\t{lines[0]}\n")
        return translate_nbest(self, lines, nbest, progress, first_line)

    Translator.translate_nbest = logged


if __name__ == "__main__":
    start = os.environ.get("SHARD_START")
    log_translations(
        Path(os.environ["SHARD_LOG"]),
        int(os.environ.get("SHARD_DIE_AT", "0")),
        Path(start) if start else None,
        int(os.environ.get("SHARD_PROCESSES", "1")),
    )
    sys.argv[0] = "kdmt"
    main()
