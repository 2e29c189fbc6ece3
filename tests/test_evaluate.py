"""Evaluation: the timed translation excludes a warm-up run."""

import time
from types import SimpleNamespace

import torch

from kdmt.evaluate import evaluate
from kdmt.translate import SearchOptions


def test_a_warm_up_translation_runs_before_the_timer_starts(tmp_path, monkeypatch):
    clock, calls, reported = [0.0], [], []

    def translate(lines, progress=None):
        calls.append(len(lines))
        clock[0] += len(lines)  # a second a line
        if progress:
            progress(len(lines))
        return list(lines)

    translator = SimpleNamespace(
        translate=translate,
        tgt_vocab=SimpleNamespace(encode=lambda lines: [line.split() for line in lines]),
        options=SearchOptions(beam=1),
        num_parameters=lambda: 0,
        device=torch.device("cpu"),
    )
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"model")
    src = [f"sentence {i}" for i in range(100)]
    report, hyps = evaluate(translator, checkpoint, tmp_path / "test.src", src, src, {}, reported.append)
    assert hyps == src
    assert len(calls) == 2 and 0 < calls[0] < 100 and calls[1] == 100  # warm-up, then the timed run
    assert report.seconds == 100 and report.sentences_per_s == 1
    assert reported == [100]  # the warm-up is not progress
