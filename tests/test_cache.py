"""The caches that commands share (kdmt.cache): built once by processes that ask at once, never read half
written, keyed on content."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_cli import write
from test_prepare import distilled_lines

import kdmt.corpus
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


def test_a_reader_maps_the_cache_it_read_the_record_of_while_another_process_rewrites_it(
    toy_data, tmp_path, monkeypatch
):
    data = PreparedData.open(toy_data)
    ref = data.text("train")[1]
    lines = distilled_lines(ref, 7)
    distilled = write(tmp_path / "distilled.tgt", lines)
    before = student_corpus(data, [distilled], 0.0, 1)[0]
    i = next(i for i, line in enumerate(lines) if line.split() != line.split()[::-1])
    edited = lines[:i] + [" ".join(reversed(lines[i].split()))] + lines[i + 1 :]  # the same tokens, reordered
    paused, rewritten, reader = threading.Event(), threading.Event(), {}
    paths = kdmt.corpus._paths

    def pausing(prefix):  # the reader has read the student corpus's record, and is about to map its arrays
        if threading.current_thread().name == "reader" and prefix.name.startswith("student-") and not paused.is_set():
            paused.set()
            rewritten.wait(timeout=2)
        return paths(prefix)

    monkeypatch.setattr(kdmt.corpus, "_paths", pausing)

    def read() -> None:
        reader["corpus"] = student_corpus(data, [distilled], 0.0, 1)[0]

    thread = threading.Thread(target=read, name="reader")
    thread.start()
    assert paused.wait(timeout=60)
    write(distilled, edited)
    writer = threading.Thread(target=lambda: (student_corpus(data, [distilled], 0.0, 1), rewritten.set()))
    writer.start()
    thread.join(timeout=120), writer.join(timeout=120)
    read = reader["corpus"]  # what it read: the corpus before the edit, whole (the rewrite waited for it)
    assert read.fingerprint() == before.fingerprint()
    assert all(read.pair(n)[1].equal(before.pair(n)[1]) for n in range(len(before)))
    after = student_corpus(data, [distilled], 0.0, 1)[0]
    assert after.fingerprint() != before.fingerprint() and len(after) == len(before)
