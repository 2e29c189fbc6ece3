"""`python tests/fault_worker.py ARGS`: the kdmt command line, with its file events counted and, at the test's
asking, one of them made the point where the process kills itself with SIGKILL.

The events: `tmp`, a temporary output file just made (empty); `rename`, a complete output (a temporary file
or directory) about to be renamed into place, or a run's directory about to be removed; `log`, a line just
appended to a training run's metrics.jsonl (between checkpoints). Environment: FAULT_LOG, a file to append
each event's kind and file name to (an uninterrupted run lists them); FAULT_AT, `KIND:N`, the N-th event of that kind is
the one at which the process sends itself FAULT_SIGNAL (KILL, the default, or TERM).
"""

import os
import signal
import sys
import tempfile
from pathlib import Path

from kdmt.cli import main
from kdmt.run_dir import RunDir


def hook_events(log: Path | None, kind: str | None, at: int, sig: signal.Signals) -> None:
    """Wrap the functions of each event in this process."""
    seen: dict[str, int] = {}

    def event(name: str, path: str) -> None:
        seen[name] = seen.get(name, 0) + 1
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{name}\t{os.path.basename(path)}\n")
        if name == kind and seen[name] == at:
            os.kill(os.getpid(), sig)

    def before(name: str, fn):
        def wrapped(*args, **kwargs):
            event(name, str(args[0]))
            return fn(*args, **kwargs)

        return wrapped

    def after(name: str, fn, path):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            event(name, path(result))
            return result

        return wrapped

    tempfile.mkstemp = after("tmp", tempfile.mkstemp, lambda made: made[1])
    os.replace = before("rename", os.replace)
    os.rename = before("rename", os.rename)
    RunDir.log = after("log", RunDir.log, lambda _: "metrics.jsonl")


if __name__ == "__main__":
    kind, _, at = os.environ.get("FAULT_AT", ":0").partition(":")
    log = os.environ.get("FAULT_LOG")
    sig = signal.Signals[f"SIG{os.environ.get('FAULT_SIGNAL', 'KILL')}"]
    hook_events(Path(log) if log else None, kind or None, int(at), sig)
    sys.argv = ["kdmt", *sys.argv[1:]]
    main()
