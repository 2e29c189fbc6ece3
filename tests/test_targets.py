"""Distillation targets: candidates sampled or from the beam, their selection (best, seq-inter, mbr,
score), several targets a source (--keep) and the student corpus that trains on them."""

import json

import numpy as np
import pytest
import torch
from sacrebleu.metrics import CHRF
from test_cli import kdmt, write
from test_distill import Killed, settings_for
from toy import toy_pairs

from kdmt.checkpoint import load_checkpoint
from kdmt.data import PreparedData
from kdmt.distill import DistillRun, distill_corpus
from kdmt.engines import CTranslate2Translator
from kdmt.errors import KdmtError
from kdmt.export import export_checkpoint
from kdmt.files import read_lines
from kdmt.scoring import CheckpointScorer, CTranslate2Scorer
from kdmt.search import Sampling
from kdmt.selection import best_text, choose, mbr, mbr_utilities, pairwise_chrf, ranked, sacrebleu_pairwise_chrf
from kdmt.student import student_corpus
from kdmt.translate import Candidate, SearchOptions, Translator
from kdmt.vocab import BOS, EOS

SAMPLING = Sampling(topk=5, temperature=3.0, seed=1)  # hot: the toy model is nearly certain otherwise


def texts(results):
    return [[c.text for c in r] for r in results]


# --- selection ------------------------------------------------------------------------------------
def test_mbr_selects_the_medoid():
    candidates = [
        "the cat sat on a mat",
        "a dog runs in the park",  # an outlier
        "the cat sat on the mat",  # the medoid: one word from each of the others but the outlier
        "the dog sat on the mat",
        "the cat sat on the rug",
    ]
    assert mbr(candidates) == 2 and mbr(candidates, "bleu") == 2
    chrf = CHRF()
    edge = ["", "a", "(hi)", "我们去了学校。", "a  b"]  # empty, short, punctuation, no spaces, double spaces
    want = [chrf.sentence_score(h, [r]).score for h in candidates + edge for r in candidates + edge]
    assert sum(sacrebleu_pairwise_chrf(candidates + edge), []) == pytest.approx(want, abs=1e-9)
    assert sum(pairwise_chrf(candidates + edge), []) == pytest.approx(want, abs=1e-9)  # fastchrf, where installed
    # duplicates count as often as they occur: two votes for "x y z w" outweigh the pair of near neighbours
    assert mbr(["a b c d", "x y z w", "x y z w", "a b c d e"]) == 1
    assert mbr_utilities(["only"]) == [0.0]


def test_the_one_pick_prefers_the_highest_merit_and_the_earlier_on_ties():
    assert ranked([1.0, 3.0, 2.0, 3.0, -1.0]) == [1, 3, 2, 0, 4]
    assert best_text([Candidate("first", -2.0, 1), Candidate("second", -1.0, 1)]) == "first"
    assert best_text([]) == ""  # an untranslated (empty, over-long) or wholly dropped source: an empty line


def test_choose_keeps_distinct_candidates_in_order_of_preference():
    c = [Candidate(t, s, 1) for t, s in [("x", -3.0), ("y", -1.0), ("y", -1.0), ("z", -2.0)]]
    assert [k.text for k in choose(c, "best", "bleu", keep=3)] == ["x", "y", "z"]
    assert [k.text for k in choose(c, "score", "bleu", keep=2)] == ["y", "z"]
    assert [k.text for k in choose(c, "seq-inter", "chrf", keep=1, reference="z")] == ["z"]


# --- sampling -------------------------------------------------------------------------------------
def test_sampling_is_seeded_by_line_whatever_the_batches(toy_model):
    lines = toy_pairs(12, seed=21)[0]
    checkpoint = load_checkpoint(toy_model)

    def sample(sampling=SAMPLING, batch_tokens=4000, subset=slice(None), first_line=0):
        translator = Translator([checkpoint], SearchOptions(batch_tokens=batch_tokens, sampling=sampling))
        return texts(translator.translate_nbest(lines[subset], 4, first_line=first_line))

    once = sample()
    assert sample() == once
    assert sample(batch_tokens=9) == once  # other batches: each line's draws are its own
    assert sample(subset=slice(5, None), first_line=5) == once[5:]  # a shard starting at line 5
    assert any(len(set(r)) > 1 for r in once)  # samples differ from one another
    assert sample(Sampling(topk=5, temperature=3.0, seed=2)) != once
    greedy = Translator([checkpoint], SearchOptions(beam=1)).translate(lines)
    assert [r[0] for r in sample(Sampling(topk=1))] == greedy  # top-1 sampling is greedy search
    nucleus = sample(Sampling(topp=0.5, temperature=1.0))
    assert all(len(set(r)) == 1 for r in nucleus)  # the toy model's top token holds over half the mass


@pytest.fixture(scope="module")
def ct2_toy(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "ct2"
    export_checkpoint(toy_model, out)
    return out


@pytest.mark.parametrize("engine", ["kdmt", "ctranslate2"])
def test_a_sampled_corpus_is_reproducible_and_resumes_to_the_same_bytes(toy_model, ct2_toy, tmp_path, engine):
    src = write(tmp_path / "train.src", toy_pairs(21, seed=22)[0])

    def translator():
        options = SearchOptions(sampling=SAMPLING)
        if engine == "kdmt":
            return Translator([load_checkpoint(toy_model)], options)
        return CTranslate2Translator(ct2_toy, options, threads=2)

    settings = dict(nbest=4, keep=2, select="mbr", select_metric="chrf", sampling="topk:5", seed=1)
    settings |= dict(sampling_temperature=3.0, filter=False)
    full, again, resumed = tmp_path / "full", tmp_path / "again", tmp_path / "resumed"
    distill_corpus(translator(), settings_for(toy_model, src, **settings), full)
    distill_corpus(translator(), settings_for(toy_model, src, **settings), again)

    def kill(index):
        raise Killed

    with pytest.raises(Killed):
        distill_corpus(translator(), settings_for(toy_model, src, **settings), resumed, after_shard=kill)
    distill_corpus(translator(), settings_for(toy_model, src, **settings), resumed)
    for suffix in ("", ".nbest", ".keep", ".json"):
        assert (tmp_path / f"resumed{suffix}").read_bytes() == (tmp_path / f"full{suffix}").read_bytes()
        assert (tmp_path / f"again{suffix}").read_bytes() == (tmp_path / f"full{suffix}").read_bytes()
    nbest = read_lines(f"{full}.nbest")
    assert len(nbest) == 21 * 4 and len({line.split(" ||| ")[1] for line in nbest}) > 21  # varied samples


# --- several targets a source ---------------------------------------------------------------------
def test_keep_two_gives_each_source_two_targets(toy_model, tmp_path):
    src_lines = toy_pairs(6, seed=23)[0] + [""]
    src, out = write(tmp_path / "s", src_lines), tmp_path / "d"
    args = ["distill", "-t", toy_model, "--src", src, "-o", out, "--beam", "3", "--candidates", "3", "--keep", "2"]
    result = kdmt(*args, "--no-filter")
    assert result.exit_code == 0, result.stderr
    best, keep = read_lines(out), read_lines(f"{out}.keep")
    assert len(best) == 7 and best[6] == "" and [line.split(" ||| ")[0] for line in keep] == list(map(str, range(6)))
    nbest = [line.split(" ||| ") for line in read_lines(f"{out}.nbest")]
    for i, line in enumerate(keep):
        ranked = [hyp for j, hyp, _ in nbest if j == str(i)]
        assert [best[i], line.split(" ||| ")[1]] == ranked[:2]  # the beam's two best, in order
    assert json.loads((tmp_path / "d.json").read_text())["stats"]["extra_targets"] == 6
    assert "--keep must be at most --candidates (1)" in kdmt(*args[:-4], "--keep", "2").stderr


def test_the_student_corpus_repeats_each_source_with_each_kept_target(toy_data, tmp_path):
    data = PreparedData.open(toy_data)
    n = len(read_lines(toy_data / "train.tgt"))
    lines = ["j"] * n
    lines[1] = ""  # filtered
    distilled = write(tmp_path / "d", lines)
    write(tmp_path / "d.keep", ["0 ||| a b", "0 ||| c", "4 ||| d"])
    corpus, record = student_corpus(data, [distilled], 0.0, 1)
    assert record["extra_targets"] == 3 and record["dropped_empty"] == 1 and len(corpus) == n - 1 + 3
    train = data.corpus("train")

    def row(corpus, side, i):
        return corpus.rows(side, np.array([i]))[0].tolist()

    tgt = data.tgt_vocab.decode([row(corpus, "tgt", i) for i in range(7)])
    assert tgt == ["j", "a b", "c", "j", "j", "j", "d"]
    assert [row(corpus, "src", i) for i in (0, 1, 2, 5, 6)] == [row(train, "src", i) for i in (0, 0, 0, 4, 4)]
    write(tmp_path / "d.keep", ["4 ||| d", "0 ||| a b"])
    with pytest.raises(KdmtError, match="in order"):
        student_corpus(data, [distilled], 0.0, 1)


# --- backward scoring and filtering ---------------------------------------------------------------
def test_kdmt_score_is_the_teacher_forced_cross_entropy(toy_model, ct2_toy, tmp_path):
    src_lines, tgt_lines = toy_pairs(9, seed=24)
    tgt_lines[2] = "a a a b"  # an unlikely pair
    checkpoint = load_checkpoint(toy_model)
    model, vocab = checkpoint.model.eval(), checkpoint.tgt_vocab
    want = []
    with torch.no_grad():
        for s, t in zip(vocab.encode(src_lines), vocab.encode(tgt_lines)):
            logp = torch.log_softmax(model(torch.tensor([s + [EOS]]), torch.tensor([[BOS] + t])), -1)[0]
            want.append(-float(logp[torch.arange(len(t) + 1), t + [EOS]].mean()))
    scorer = CheckpointScorer([toy_model], torch.device("cpu"), batch_tokens=20)  # several batches
    assert scorer.score(src_lines, tgt_lines) == pytest.approx(want, abs=1e-5)
    assert CTranslate2Scorer(ct2_toy).score(src_lines, tgt_lines) == pytest.approx(want, abs=1e-3)
    assert max(want) == want[2] and want[2] > 1 > 0.1 > want[0]
    src, tgt = write(tmp_path / "s", src_lines), write(tmp_path / "t", tgt_lines)
    result = kdmt("score", "-m", toy_model, "--src", src, "--tgt", tgt)
    assert result.exit_code == 0, result.stderr
    assert [float(x) for x in result.stdout.split()] == pytest.approx(want, abs=1e-5)
    assert "scored 9 of 9 pairs" in result.stderr
    assert (
        "line counts differ"
        in kdmt("score", "-m", toy_model, "--src", src, "--tgt", write(tmp_path / "u", ["a"])).stderr
    )


class Planted:
    """A translator whose candidates are given: the reversed source, or a planted wrong one."""

    def __init__(self, wrong: dict[str, str]):
        self.wrong = wrong

    def translate_nbest(self, lines, nbest, progress=None, first_line=0):
        return [[Candidate(self.wrong.get(s, " ".join(reversed(s.split()))), 0.0, 1)] for s in lines]


def test_backward_filtering_drops_the_planted_wrong_pairs(toy_model, tmp_path):
    src_lines = toy_pairs(20, seed=25)[0]
    planted = {3: "a b c d e", 8: "j j i", 15: "c a f e b", 19: "d d g"}
    wrong = {src_lines[i]: text for i, text in planted.items()}
    src, out = write(tmp_path / "s", src_lines), tmp_path / "o"
    scorer = CheckpointScorer([toy_model], torch.device("cpu"))  # reversal is its own inverse
    settings = settings_for(toy_model, src, nbest=1, filter=False, backward=str(toy_model), backward_drop=20.0)
    stats = DistillRun(Planted(wrong), settings, out, backward=scorer).run()
    lines = read_lines(out)
    assert [i for i, line in enumerate(lines) if not line] == sorted(planted) and stats.filtered["backward"] == 4
    assert json.loads((tmp_path / "o.json").read_text())["stats"]["filtered"]["backward"] == 4
    settings = settings_for(toy_model, src, nbest=1, filter=False, backward=str(toy_model), backward_max_ce=1.0)
    stats = DistillRun(Planted(wrong), settings, tmp_path / "o2", backward=scorer).run()
    assert [i for i, line in enumerate(read_lines(tmp_path / "o2")) if not line] == sorted(planted)


def test_distill_filters_with_a_backward_model_from_the_command_line(toy_model, tmp_path):
    src = write(tmp_path / "s", toy_pairs(10, seed=26)[0])
    args = ["distill", "-t", toy_model, "--src", src, "-o", tmp_path / "o", "--beam", "2"]
    result = kdmt(*args, "--filter-backward", toy_model, "--filter-drop", "30", "--no-filter")  # the backward's alone
    assert result.exit_code == 0, result.stderr
    assert sum(1 for line in read_lines(tmp_path / "o") if not line) == 3 and "3 backward" in result.stderr
    assert "--filter-backward goes with --filter-drop" in kdmt(*args, "--filter-drop", "30").stderr
    assert (
        "--filter-drop must be in [0, 100)"
        in kdmt(*args, "--filter-backward", toy_model, "--filter-drop", "100").stderr
    )


def test_each_kept_candidate_is_filtered_and_out_gets_the_first_that_passes(toy_model, tmp_path):
    class Given(Planted):  # two candidates a source: a loop first
        def translate_nbest(self, lines, nbest, progress=None, first_line=0):
            return [[Candidate(t, 0.0, len(t.split())) for t in self.wrong[s]] for s in lines]

        def length_limits(self, lines):
            return [(len(line.split()), 100) for line in lines]

    given = {"a b c": ["c c c c", "c b a"], "d e f": ["f e d", "f f f f"], "g h": ["h h h h", "g g g g"]}
    src, out = write(tmp_path / "s", list(given)), tmp_path / "o"
    stats = distill_corpus(Given(given), settings_for(toy_model, src, nbest=2, keep=2), out)
    assert read_lines(out) == ["c b a", "f e d", ""] and read_lines(f"{out}.keep") == []
    assert stats.filtered["repeat"] == 4 and stats.extra_targets == 0


def test_select_score_keeps_the_most_probable_sample(toy_model, tmp_path):
    src, out = write(tmp_path / "s", toy_pairs(8, seed=27)[0]), tmp_path / "o"
    args = ["--candidates", "4", "--sampling", "topk:5", "--sampling-temperature", "3", "--select", "score"]
    result = kdmt("distill", "-t", toy_model, "--src", src, "-o", out, *args, "--no-filter")
    assert result.exit_code == 0, result.stderr
    nbest: dict[int, list[tuple[float, str]]] = {}
    for line in read_lines(f"{out}.nbest"):
        i, hyp, score = line.split(" ||| ")
        nbest.setdefault(int(i), []).append((float(score), hyp))
    for i, line in enumerate(read_lines(out)):
        best = max(nbest[i])
        assert line == best[1] or any(s > best[0] - 1e-4 and h == line for s, h in nbest[i])  # near ties: either
    assert any(max(c)[1] != c[0][1] for c in nbest.values())  # the first sample is not always the most probable
