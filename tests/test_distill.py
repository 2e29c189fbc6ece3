"""kdmt distill: the distilled corpus, its resumption, n-best lists and seq-inter selection."""

import pytest
from sacrebleu.metrics import BLEU
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs

from kdmt.checkpoint import load_checkpoint
from kdmt.distill import DistillSettings, distill_corpus, select_closest
from kdmt.errors import KdmtError
from kdmt.files import read_lines
from kdmt.translate import SearchOptions, Translator


class Killed(Exception):
    pass


def settings_for(model, src, **kw) -> DistillSettings:
    base = dict(
        teachers=[str(model)],
        source=str(src),
        beam=3,
        lenpen=1.0,
        max_len_a=1.5,
        max_len_b=10,
        max_src_tokens=1024,
        nbest=3,
        select=None,
        select_metric="bleu",
        reference=None,
        shard_size=7,
    )
    return DistillSettings(**{**base, **kw})


def test_killed_run_resumes_to_a_byte_identical_corpus(toy_model, tmp_path):
    src_lines = toy_pairs(40, seed=11)[0]
    src_lines[3] = ""  # an empty line keeps its place
    src = write(tmp_path / "train.src", src_lines)
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))

    full = tmp_path / "full.tgt"
    stats = distill_corpus(translator, settings_for(toy_model, src), src_lines, full)
    assert stats.lines == 40 and stats.empty == 1 and stats.too_long == 0

    def kill_after_third(index):
        if index == 2:
            raise Killed

    resumed = tmp_path / "resumed.tgt"
    with pytest.raises(Killed):
        distill_corpus(translator, settings_for(toy_model, src), src_lines, resumed, after_shard=kill_after_third)
    assert not resumed.exists() and len(list((tmp_path / "resumed.tgt.shards").glob("*.txt"))) == 3
    translated = []
    distill_corpus(translator, settings_for(toy_model, src), src_lines, resumed, progress=translated.append)
    assert resumed.read_bytes() == full.read_bytes()
    assert (tmp_path / "resumed.tgt.nbest").read_bytes() == (tmp_path / "full.tgt.nbest").read_bytes()
    assert not (tmp_path / "resumed.tgt.shards").exists()

    out = read_lines(full)
    assert len(out) == 40 and out[3] == ""
    assert out[0] == " ".join(reversed(src_lines[0].split()))
    nbest = read_lines(tmp_path / "full.tgt.nbest")
    assert nbest[0].startswith("0 ||| ") and sum(line.startswith("4 ||| ") for line in nbest) == 3


def test_resuming_with_other_settings_is_refused(toy_model, tmp_path):
    src_lines = toy_pairs(20, seed=12)[0]
    src = write(tmp_path / "train.src", src_lines)
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))

    def kill(index):
        raise Killed

    with pytest.raises(Killed):
        distill_corpus(translator, settings_for(toy_model, src), src_lines, tmp_path / "o", after_shard=kill)
    with pytest.raises(KdmtError, match="other settings"):
        distill_corpus(translator, settings_for(toy_model, src, beam=4), src_lines, tmp_path / "o")


def test_select_closest_picks_the_highest_sentence_bleu():
    ref = "a man rides a red bike"
    candidates = [("a person is cycling", -0.1), ("a man rides a bike", -0.5), ("a man rides a red bike", -0.9)]
    assert select_closest(candidates, ref, "bleu") == "a man rides a red bike"
    assert select_closest(candidates[:2], ref, "chrf") == "a man rides a bike"


def test_distill_command_with_seq_inter_and_over_long_lines(toy_model, tmp_path):
    src_lines, ref_lines = toy_pairs(30, seed=13)
    src_lines[5] = " ".join(["a"] * 40)  # over --max-src-tokens
    src, ref = write(tmp_path / "s", src_lines), write(tmp_path / "r", ref_lines)
    out = tmp_path / "distilled.tgt"
    result = kdmt(
        "distill",
        "-t",
        toy_model,
        "--src",
        src,
        "-o",
        out,
        "--beam",
        "4",
        "--select",
        "seq-inter",
        "--ref",
        ref,
        "--max-src-tokens",
        "20",
        "--shard-size",
        "8",
    )
    assert result.exit_code == 0, result.stderr
    assert "1 over-long" in result.stderr
    out_lines = read_lines(out)
    assert len(out_lines) == 30 and out_lines[5] == ""
    nbest: dict[int, list[str]] = {}
    for line in read_lines(f"{out}.nbest"):
        i, hyp, _ = line.split(" ||| ")
        nbest.setdefault(int(i), []).append(hyp)
    bleu = BLEU(effective_order=True)
    for i, candidates in nbest.items():
        best = max(bleu.sentence_score(c, [ref_lines[i]]).score for c in candidates)
        assert out_lines[i] in candidates and bleu.sentence_score(out_lines[i], [ref_lines[i]]).score == best


def test_distill_needs_a_reference_for_seq_inter(toy_model, tmp_path):
    src = write(tmp_path / "s", ["a b"])
    assert_fails(
        kdmt("distill", "-t", toy_model, "--src", src, "-o", tmp_path / "o", "--select", "seq-inter"), "needs --ref"
    )
