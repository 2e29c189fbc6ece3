"""kdmt distill: the distilled corpus, its resumption, n-best lists, seq-inter selection and the
filter of degenerate translations (and the student's fallback to the reference for them)."""

import json
import os

import pytest
from sacrebleu.metrics import BLEU
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs

from kdmt.checkpoint import load_checkpoint
from kdmt.data import PreparedData
from kdmt.distill import DistillSettings, distill_corpus, teacher_identity
from kdmt.errors import KdmtError
from kdmt.files import read_lines
from kdmt.filters import FilterOptions, degenerate, repeated_ngram
from kdmt.selection import closest
from kdmt.shards import WORK_DIR, work_path
from kdmt.student import student_corpus
from kdmt.translate import Candidate, SearchOptions, Translator
from kdmt.vocab import EOS, Vocab


class Killed(Exception):
    pass


def settings_for(model, src, **kw) -> DistillSettings:
    base = dict(
        teachers=[teacher_identity(model)],
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
    src_lines[5] = "c c c c"  # repetition loops, filtered before (shard 0) and after (shard 4) the kill
    src_lines[30] = "a b a b a b"
    src = write(tmp_path / "train.src", src_lines)
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))

    full = tmp_path / "full.tgt"
    stats = distill_corpus(translator, settings_for(toy_model, src), full)
    assert stats.lines == 40 and stats.empty == 1 and stats.too_long == 0 and stats.filtered["repeat"] >= 2

    resumed = tmp_path / "resumed.tgt"
    work = tmp_path / WORK_DIR / "resumed.tgt.shards"  # hidden: nothing beside the outputs but themselves
    manifests = []

    def kill_after_third(index):
        manifests.append((work / "manifest.json").read_bytes())
        if index == 2:
            raise Killed

    with pytest.raises(Killed):
        distill_corpus(translator, settings_for(toy_model, src), resumed, after_shard=kill_after_third)
    assert not resumed.exists() and len(list(work.glob("*.txt"))) == 3
    assert len(set(manifests)) == 1 and len(list((work / "done").iterdir())) == 3  # one record per shard
    (work / "done" / "000001.json").write_text('{"empty": 0, "too_')  # damaged
    with pytest.raises(KdmtError, match=r"000001.json: damaged \(not a shard's record\); delete it"):
        distill_corpus(translator, settings_for(toy_model, src), resumed)
    (work / "done" / "000001.json").unlink()  # as the message says: shard 1 is translated again
    translated = []
    resumed_stats = distill_corpus(translator, settings_for(toy_model, src), resumed, progress=translated.append)
    assert resumed.read_bytes() == full.read_bytes()
    assert resumed_stats == stats  # the counts of the shards done before the kill come from the manifest
    assert sum(translated) == 40  # progress: the shards done before, and those translated now
    assert (tmp_path / "resumed.tgt.json").read_bytes() == (tmp_path / "full.tgt.json").read_bytes()
    assert (tmp_path / "resumed.tgt.nbest").read_bytes() == (tmp_path / "full.tgt.nbest").read_bytes()
    assert not (tmp_path / WORK_DIR).exists() and not (tmp_path / "resumed.tgt.shards").exists()

    out = read_lines(full)
    assert len(out) == 40 and out[3] == "" and out[5] == "" and out[30] == ""
    assert out[0] == " ".join(reversed(src_lines[0].split()))
    nbest = read_lines(tmp_path / "full.tgt.nbest")
    assert nbest[0].startswith("0 ||| ") and sum(line.startswith("4 ||| ") for line in nbest) == 3


def test_an_unfinished_run_of_an_older_kdmt_beside_its_output_resumes(toy_model, tmp_path):
    src = write(tmp_path / "train.src", toy_pairs(20, seed=13)[0])  # 3 shards of 7 lines
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))
    full, out = tmp_path / "full.tgt", tmp_path / "out.tgt"
    distill_corpus(translator, settings_for(toy_model, src), full)

    def kill(index):
        raise Killed

    with pytest.raises(Killed):
        distill_corpus(translator, settings_for(toy_model, src), out, after_shard=kill)
    assert work_path(out) == tmp_path / WORK_DIR / "out.tgt.shards"
    os.rename(work_path(out), f"{out}.shards")  # where kdmt kept it before .kdmt-work
    os.rmdir(tmp_path / WORK_DIR)
    assert work_path(out) == tmp_path / "out.tgt.shards"
    translated = []
    distill_corpus(translator, settings_for(toy_model, src), out, after_shard=translated.append)
    assert translated == [1, 2] and out.read_bytes() == full.read_bytes()  # shard 0 was done before
    assert not (tmp_path / "out.tgt.shards").exists() and not (tmp_path / WORK_DIR).exists()


def test_resuming_with_other_settings_is_refused(toy_model, tmp_path):
    src_lines = toy_pairs(20, seed=12)[0]
    src = write(tmp_path / "train.src", src_lines)
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))

    def kill(index):
        raise Killed

    with pytest.raises(Killed):
        distill_corpus(translator, settings_for(toy_model, src), tmp_path / "o", after_shard=kill)
    for other in ({"beam": 4}, {"filter": False}, {"max_repeat": 4}, {"max_len_ratio": 3.0}):
        with pytest.raises(KdmtError, match="other settings"):
            distill_corpus(translator, settings_for(toy_model, src, **other), tmp_path / "o")
    before = src.stat()
    text = src.read_bytes()
    first = text.index(b" ") - 1  # a letter of the first line, made another: the same size
    src.write_bytes(text[:first] + (b"a" if text[first : first + 1] != b"a" else b"b") + text[first + 1 :])
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same modification time
    assert src.stat().st_size == before.st_size and src.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(KdmtError, match="other settings or inputs"):  # its content is the source's identity
        distill_corpus(translator, settings_for(toy_model, src), tmp_path / "o")


def test_select_closest_picks_the_highest_sentence_bleu():
    ref = "a man rides a red bike"
    candidates = ["a person is cycling", "a man rides a bike", "a man rides a red bike"]
    assert closest(candidates, ref, "bleu") == 2
    assert closest(candidates[:2], ref, "chrf") == 1
    chinese = ["我们去了学校。", "我们去了公园。"]  # one word each for 13a: a tie, and the first wins
    assert closest(chinese, "我们去公园了。", "bleu") == 0 and closest(chinese, "我们去公园了。", "bleu", "zh") == 1


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
        scores = [bleu.sentence_score(c, [ref_lines[i]]).score for c in candidates]
        closest = candidates[scores.index(max(scores))]
        # the closest candidate, or an empty line when it is a loop (random letters repeat: "i i i")
        assert out_lines[i] == ("" if repeated_ngram(closest.split(), 3) else closest)


def test_distill_needs_a_reference_for_seq_inter(toy_model, tmp_path):
    src = write(tmp_path / "s", ["a b"])
    assert_fails(
        kdmt("distill", "-t", toy_model, "--src", src, "-o", tmp_path / "o", "--select", "seq-inter"), "needs --ref"
    )


# --- degenerate translations --------------------------------------------------------------------
def test_repetition_loops_are_degenerate():
    def reason(hyp, options=FilterOptions()):
        n = len(hyp.split())
        return degenerate(hyp, n, n, 100, options)  # tokens as words: length and ratio are fine

    assert reason("A little girl is standing in a wooden wooden wooden wooden .") == "repeat"  # 1-gram
    assert reason("A dog runs on the grass on the grass on the grass .") == "repeat"  # 2-gram
    assert reason("a b c d a b c d a b c d") == "repeat"  # 4-gram
    assert reason("a b c d e a b c d e a b c d e") is None  # n-grams are at most 4 words long
    assert reason("A man in a blue shirt is standing on a ladder cleaning windows .") is None
    assert reason("A man with a bag , a hat , a coat and a dog .") is None  # repeated, but not in a row
    assert reason("He had had enough .") is None
    assert reason("He had had enough .", FilterOptions(max_repeat=2)) == "repeat"
    assert reason("Two dogs dogs dogs play .", FilterOptions(max_repeat=4)) is None
    # scripts without spaces: repeats counted in characters, n-grams of up to 16
    assert reason("一个女孩在公园里一个女孩在公园里一个女孩在公园里") == "repeat"  # a 7-character loop
    assert reason("今日は晴れです。今日は晴れです。今日は晴れです。") == "repeat"
    assert reason("สวัสดีครับสวัสดีครับสวัสดีครับ") == "repeat"
    assert reason("一个女孩在公园里玩,她很高兴。") is None and reason("謝謝你,謝謝。") is None
    assert reason("东京 東京タワー 2024 年") is None


def test_hypotheses_at_the_length_limit_or_with_an_outlying_ratio_are_degenerate():
    assert degenerate("a b c d e f", 6, 5, 6) == "length_limit"  # cut: as long as the search allowed
    assert degenerate("a b c d e", 5, 5, 6) is None
    assert degenerate("a b c d e f g h i", 9, 4, 20) == "ratio"  # 2.25 > 2
    assert degenerate("a b c d e f g h", 8, 4, 20) is None  # 2.0 is not above 2
    assert degenerate("a b", 2, 5, 20) == "ratio"  # 0.4 < 1/2
    assert degenerate("", 0, 5, 20) == "ratio"  # an empty translation of a sentence
    assert degenerate("a b", 2, 5, 20, FilterOptions(max_len_ratio=3.0)) is None
    assert degenerate("x x x x x x", 6, 5, 6) == "repeat"  # the first reason that applies


def test_max_output_length_is_the_search_limit(toy_model, tmp_path):
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=1, max_len_a=0.5, max_len_b=3))
    assert [translator.max_output_length(n) for n in (1, 2, 5)] == [3, 4, 5]
    max_positions = translator.ensemble.max_positions
    assert translator.max_output_length(10 * max_positions) == max_positions - 1
    cut = translator.translate_nbest(["a b c d e f g h"])[0][0]  # 8 letters + EOS: at most 7 tokens
    assert cut.length == translator.max_output_length(9) == 7 and cut.text == "h g f e d c b"

    # a·|source with EOS| + b = n + 1: a translation as long as its source was not cut
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=1, max_len_a=1.0, max_len_b=0))
    src_lines = ["a b c", "d e f g", "a c e g i b"]
    src, out = write(tmp_path / "s", src_lines), tmp_path / "o"
    stats = distill_corpus(translator, settings_for(toy_model, src, beam=1, nbest=1), out)
    assert read_lines(out) == ["c b a", "g f e d", "b i g e c a"] and stats.filtered["length_limit"] == 0


def test_the_seq_inter_choice_is_the_hypothesis_filtered(tmp_path):
    class FixedCandidates:  # a Translator whose n-best lists are given
        def translate_nbest(self, lines, nbest, progress=None, first_line=0):
            return [[Candidate(t, -i, len(t.split())) for i, t in enumerate(nbest_of[line])] for line in lines]

        def length_limits(self, lines):
            return [(len(line.split()), 100) for line in lines]

    nbest_of = {"a b c": ["c b a", "b b b"], "d e f": ["f f f", "f e d"]}
    src = write(tmp_path / "s", ["a b c", "d e f"])
    ref = write(tmp_path / "r", ["b b b", "f e d"])
    teacher = write(tmp_path / "t.safetensors", [])
    settings = settings_for(teacher, src, select="seq-inter", reference=str(ref), nbest=2)
    stats = distill_corpus(FixedCandidates(), settings, tmp_path / "o")
    assert read_lines(tmp_path / "o") == ["", "f e d"] and stats.filtered["repeat"] == 1


def test_distill_command_writes_degenerate_translations_as_empty_lines(toy_model, tmp_path):
    # loops of two letters: the toy model's count of a letter repeated alone ("c c c") is a near tie
    src_lines = ["a b c", "c d c d c d", "a b c d e f g h", "", "d e f g h", "a b a b a b"]
    src, out = write(tmp_path / "s", src_lines), tmp_path / "distilled.tgt"
    args = ["distill", "-t", toy_model, "--src", src, "--beam", "2", "--nbest", "2", "--shard-size", "4"]
    args += ["--max-len-a", "0", "--max-len-b", "6"]  # at most 6 tokens: the 8-letter line is cut
    result = kdmt(*args, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert read_lines(out) == ["c b a", "", "", "", "h g f e d", ""]
    stats = json.loads((tmp_path / "distilled.tgt.json").read_text())["stats"]
    assert stats["empty"] == 1 and stats["filtered"] == {"repeat": 2, "length_limit": 1, "ratio": 0}
    assert "3 filtered translations (50.0% of the lines: 2 repeat, 1 length_limit, 0 ratio)" in result.stderr
    assert any(line.startswith("1 ||| d c d c d c |||") for line in read_lines(f"{out}.nbest"))  # n-best: unfiltered

    unfiltered = tmp_path / "unfiltered.tgt"
    result = kdmt(*args, "-o", unfiltered, "--no-filter")
    assert result.exit_code == 0, result.stderr
    assert read_lines(unfiltered) == ["c b a", "d c d c d c", "h g f e d c", "", "h g f e d", "b a b a b a"]
    stats = json.loads((tmp_path / "unfiltered.tgt.json").read_text())["stats"]
    assert stats["filtered"] == {"repeat": 0, "length_limit": 0, "ratio": 0}
    assert_fails(kdmt(*args, "-o", tmp_path / "o", "--max-repeat", "1"), "--max-repeat must be at least 2")


def test_student_corpus_falls_back_to_the_reference_for_empty_distilled_lines(toy_data, tmp_path):
    vocab = Vocab.load(toy_data / "spm.model")
    refs = read_lines(toy_data / "train.tgt")
    lines = ["j"] * len(refs)
    lines[0] = lines[2] = ""  # filtered by kdmt distill
    distilled = write(tmp_path / "d", lines)

    corpus, record = student_corpus(PreparedData.open(toy_data), [distilled], 0.0, 1, fallback_to_reference=True)
    assert len(corpus) == len(refs) and record["fallback_ref"] == 2 and record["dropped_empty"] == 0
    assert corpus.pair(0)[1].tolist() == vocab.encode([refs[0]])[0] + [EOS]
    assert corpus.pair(1)[1].tolist() == vocab.encode(["j"])[0] + [EOS]

    corpus, record = student_corpus(PreparedData.open(toy_data), [distilled], 0.0, 1)
    assert len(corpus) == len(refs) - 2 and record["fallback_ref"] == 0 and record["dropped_empty"] == 2
    assert corpus.pair(0)[1].tolist() == vocab.encode(["j"])[0] + [EOS]
