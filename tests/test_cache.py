"""The caches that commands share (kdmt.cache): built once by processes that ask at once, never read half
written, keyed on content."""

import os
import subprocess
import sys
import time
from pathlib import Path

from test_cli import write
from test_prepare import distilled_lines

from kdmt.data import PreparedData
from kdmt.student import student_corpus

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WORKER = [sys.executable, str(Path(__file__).parent / "cache_worker.py")]


def test_processes_asking_at_once_build_the_students_corpus_once_and_agree(toy_data, tmp_path):
    data = PreparedData.open(toy_data)
    ref = data.text("train")[1]
    distilled = write(tmp_path / "distilled.tgt", distilled_lines(ref, 7))
    old = student_corpus(data, [distilled], 0.0, 1)[0].fingerprint()
    write(distilled, distilled_lines(ref, 5))  # distilled again: the cache is rewritten
    log, arrived = tmp_path / "log", tmp_path / "arrived"
    command = [*WORKER, toy_data, distilled, log]
    first = subprocess.Popen(command, env={**ENV, "CACHE_HOLD": str(arrived)}, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first process is writing the cache; the second comes in meanwhile
    second = subprocess.Popen(command, env={**ENV, "CACHE_ARRIVE": str(arrived)}, stdout=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    new = student_corpus(data, [distilled], 0.0, 1)[0]
    assert outputs == [f"{new.fingerprint()} {len(new)}\n"] * 2 and new.fingerprint() != old
    assert log.read_text() == f"build {first.pid}\n"  # built once: the second process waited, and mapped it
