"""Evaluation: the timed translation excludes a warm-up run; BLEU is tokenized for the target language; the
paired bootstrap test is sacrebleu's."""

import importlib.util
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sacrebleu.metrics import BLEU
from test_cli import assert_fails, kdmt, write

from kdmt.checkpoint import Checkpoint, save_checkpoint
from kdmt.evaluate import evaluate
from kdmt.languages import PairRows
from kdmt.metrics import bleu_tokenizer, paired_bootstrap, score
from kdmt.model import Transformer, make_config
from kdmt.train import TrainConfig, ValidSet
from kdmt.translate import SearchOptions
from kdmt.validation import Validator
from kdmt.vocab import Vocab


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
        target_tokens=lambda lines: sum(len(line.split()) + 1 for line in lines),
        options=SearchOptions(beam=1),
        num_parameters=lambda: 0,
        device=torch.device("cpu"),
    )
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"model")
    src = [f"sentence {i}" for i in range(100)]
    report, hyps = evaluate(translator, checkpoint, tmp_path / "test.src", src, src, {}, reported.append)
    assert hyps == src
    assert len(calls) == 2 and 0 < calls[0] < 100 and calls[1] == 100  # warm-up, then the timed run
    assert report.seconds == 100 and report.sentences_per_s == 1
    assert reported == [100]  # the warm-up is not progress


def test_bleu_is_tokenized_for_the_target_language(monkeypatch):
    hyp, ref = ["我们去了公园。"], ["我们去公园了。"]  # Chinese: no spaces between words
    assert score(hyp, ref).bleu < 1 and "tok:13a" in score(hyp, ref).bleu_signature  # one word each for 13a
    chinese = score(hyp, ref, "zh")
    assert chinese.bleu > 30 and "tok:zh" in chinese.bleu_signature
    thai = score(["สวัสดีครับ"], ["สวัสดีค่ะ"], "th")
    assert thai.bleu > 30 and "tok:char" in thai.bleu_signature
    assert bleu_tokenizer("de") == ("13a", None) and bleu_tokenizer(None) == ("13a", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # MeCab not installed
    for lang, fallback in (("ja", "char"), ("ko", "13a")):
        tokenizer, note = bleu_tokenizer(lang)
        assert tokenizer == fallback and f"pip install 'sacrebleu[{lang}]'" in note
    assert "tok:char" in score(["今日は晴れ"], ["今日は晴れ"], "ja").bleu_signature
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # installed: MeCab's words
    assert bleu_tokenizer("ja") == ("ja-mecab", None) and bleu_tokenizer("ko") == ("ko-mecab", None)


def test_validation_bleu_is_tokenized_for_each_parts_target_language(monkeypatch):
    languages = []

    def spy(hyps, refs, lang=None):
        languages.append(lang)
        return score(hyps, refs, lang)

    monkeypatch.setattr("kdmt.validation.score", spy)
    monkeypatch.setattr("kdmt.validation.Translator", lambda *args: SimpleNamespace(translate=lambda src: src))
    every_pair_fits = lambda: torch.ones(4, dtype=torch.bool)  # noqa: E731
    validator = SimpleNamespace(config=TrainConfig(max_steps=1), device=torch.device("cpu"), fits=every_pair_fits)
    for valid, expected in (
        (ValidSet(None, ["a"] * 4, ["a"] * 4, tgt_lang="zh"), [{"valid_bleu"}, ["zh"]]),
        (ValidSet(None, ["a"] * 4, ["a"] * 4, PairRows(["de-ja", "de-en"], [2, 2])), [{"valid_bleu_de-ja"}, ["ja"]]),
    ):
        languages.clear()
        validator.valid = valid
        result = Validator.bleu(validator, [], "de-ja" if valid.pairs else None)
        assert [set(result), languages] == expected
    validator.valid = ValidSet(None, ["a"] * 4, ["a"] * 4, PairRows(["de-ja", "de-en"], [2, 2]))
    languages.clear()
    assert set(Validator.bleu(validator, [])) == {"valid_bleu", "valid_bleu_de-ja", "valid_bleu_de-en"}
    assert languages == ["ja", "en"]


def test_eval_tokenizes_bleu_for_the_models_target_language_unless_told(toy_data, tmp_path):
    vocab = Vocab.load(toy_data / "spm.model")
    torch.manual_seed(0)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny", max_positions=16)).eval()
    for lang in ("zh", "ja"):
        meta = {"src_lang": "src", "tgt_lang": lang}
        save_checkpoint(tmp_path / f"{lang}.safetensors", Checkpoint(model, vocab, vocab, meta))
    files = ["--src", write(tmp_path / "t.src", ["a b c", "d e"]), "--ref", write(tmp_path / "t.ref", ["c b a", "e d"])]
    args = ["eval", tmp_path / "zh.safetensors", *files, "--beam", "1", "--device", "cpu", "--json"]
    for extra, tokenizer in (([], "tok:zh"), (["--tgt-lang", "th"], "tok:char")):
        result = kdmt(*args, *extra)
        assert result.exit_code == 0, result.stderr
        assert tokenizer in json.loads(result.stdout)[0]["bleu_signature"] and tokenizer in result.stderr
    assert_fails(kdmt(*args, tmp_path / "ja.safetensors"), "translates into ja, not zh: name the --tgt-lang")
    result = kdmt(*args, tmp_path / "ja.safetensors", "--tgt-lang", "zh")
    assert result.exit_code == 0, result.stderr


def hand_made_systems(n: int = 120) -> tuple[list[str], dict[str, list[str]]]:
    """References of random words, and systems that drop some of their words: a (10%), worse (40%), close
    (12%), and same (a's translations again)."""
    rng = random.Random(4)
    words = "the a dog cat man woman runs sits on in park street red blue small big with ball".split()
    refs = [" ".join(rng.choices(words, k=rng.randint(4, 12))) + "." for _ in range(n)]

    def drop(share: float, seed: int) -> list[str]:
        r = random.Random(seed)
        return [" ".join(w for w in ref.split() if r.random() > share) for ref in refs]

    systems = {"a": drop(0.1, 1), "worse": drop(0.4, 2), "close": drop(0.12, 3)}
    return refs, {**systems, "same": list(systems["a"])}


def sacrebleu_paired_bs(tmp_path, refs, systems, *metric_args) -> tuple[list[tuple[float, ...]], list[float]]:
    """`sacrebleu REF -i SYSTEM... --paired-bs` on the command line: (score, μ, CI) of each system and metric in
    the order it prints them, and the p-value of each but the first."""
    files = [write(tmp_path / f"{name}.txt", hyps) for name, hyps in systems.items()]
    command = [Path(sys.executable).parent / "sacrebleu", write(tmp_path / "ref.txt", refs), "-i", *files]
    command += ["--paired-bs", *metric_args, "-w", "2", "--no-color", "-f", "text"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, env={"PATH": ""}).stdout
    scores = [tuple(map(float, m)) for m in re.findall(r"(\d+\.\d+) \((\d+\.\d+) ± (\d+\.\d+)\)", printed)]
    return scores, [float(p) for p in re.findall(r"\(p = (\d\.\d{4})\)", printed)]


def test_the_paired_bootstrap_reproduces_sacrebleus_command_line(tmp_path):
    refs, systems = hand_made_systems()
    test = paired_bootstrap(systems["a"], list(systems.values())[1:], refs, None)
    assert test.samples == 1000 and test.seed == "12345"  # sacrebleu's defaults
    for metric_args, metrics in (
        (["-m", "bleu", "chrf"], ["bleu", "chrf"]),
        (["-m", "chrf", "--chrf-word-order", "2"], ["chrfpp"]),
    ):
        scores, p_values = sacrebleu_paired_bs(tmp_path, refs, systems, *metric_args)
        assert len(scores) == 4 * len(metrics) and len(p_values) == 3 * len(metrics)
        for i, comparisons in enumerate(test.comparisons):
            for j, metric in enumerate(metrics):
                c, (score, mean, ci) = comparisons[metric], scores[(i + 1) * len(metrics) + j]
                assert (c.score, c.mean, c.ci) == pytest.approx((score, mean, ci), abs=0.0051)
                assert c.delta == pytest.approx(score - scores[j][0], abs=0.011)
                if i < 2:
                    assert c.p_value == pytest.approx(p_values[i * len(metrics) + j], abs=1e-4)
                else:  # the same translations: sacrebleu's smallest p-value, and the mark; kdmt's test: 1
                    assert p_values[i * len(metrics) + j] == 0.001 and c.p_value == 1.0
    worse, close, same = test.comparisons
    for metric in ("bleu", "chrf", "chrfpp"):
        assert worse[metric].delta < -10 and worse[metric].significant and worse[metric].p_value < 0.01
        assert same[metric].delta == same[metric].delta_ci == 0 and not same[metric].significant


def test_the_interval_of_the_difference_is_over_sacrebleus_resamples():
    refs, systems = hand_made_systems(60)
    samples = 200
    test = paired_bootstrap(systems["a"], [systems["worse"]], refs, None, samples)
    rows = np.random.default_rng(12345).choice(len(refs), (samples, len(refs)))  # sacrebleu's draw of resamples
    bleu = BLEU()

    def resampled(hyps):
        return np.array([bleu.corpus_score([hyps[j] for j in row], [[refs[j] for j in row]]).score for row in rows])

    differences = np.sort(resampled(systems["worse"]) - resampled(systems["a"]))
    low = samples // 40  # sacrebleu's 95% interval: 1/40 from each end
    half_width = (differences[samples - low - 1] - differences[low]) / 2
    assert test.comparisons[0]["bleu"].delta_ci == pytest.approx(half_width, abs=0.0051)
    assert test.comparisons[0]["bleu"].delta_ci > 1  # a noisy difference on 60 lines
