"""Several language pairs: names and tags, one sentencepiece model for every language, the routing of each
sentence to its pair's teacher, pair sampling, selective distillation, per-pair translation, evaluation and
report; and one pair exactly as before."""

import gzip
import hashlib
import json

import numpy as np
import pytest
import sentencepiece
import torch
import torch.nn.functional as F
from conftest import MULTI30K
from test_cli import assert_fails, kdmt, write
from toy import LETTERS, make_batch_from, toy_pairs

from kdmt.batching import make_batch
from kdmt.cache import content_key
from kdmt.checkpoint import load_checkpoint
from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.evaluate import evaluate as kdmt_evaluate
from kdmt.files import read_json, read_lines
from kdmt.kd import word_kd_loss
from kdmt.languages import Pair, PairRows, PairSampler, model_inputs, pair_weights, tag_ids, tag_source
from kdmt.model import Transformer, make_config
from kdmt.objectives import Distillation, SelectiveKD
from kdmt.run_dir import BEST
from kdmt.search import Hypothesis
from kdmt.soft_targets import SoftTargetStore
from kdmt.student import student_corpus
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.translate import TextTranslator, Translator
from kdmt.vocab import UNK


# --- names and tags ----------------------------------------------------------------------------
def test_pair_names_and_the_tags_of_a_models_inputs():
    assert Pair.parse("de-en") == Pair("de", "en") and Pair("fr", "en").name == "fr-en"
    for bad in ("de", "de-de", "d e-en", "de-en-fr", "-en"):
        with pytest.raises(KdmtError):
            Pair.parse(bad)
    assert tag_source("ein Hund", Pair("de", "en"), False) == "<2en> ein Hund"
    assert tag_source("un chien", Pair("fr", "en"), True) == "<2en> <from_fr> un chien"

    multilingual = {"pairs": ["de-en", "fr-en"], "source_tags": True}
    assert model_inputs(["un chien", ""], Pair("fr", "en"), multilingual) == ["<2en> <from_fr> un chien", ""]
    with pytest.raises(KdmtError, match="name one with --pair"):
        model_inputs(["x"], None, multilingual)
    tagged = "<2en> <from_fr> un chien"  # as in DATA/train.fr-en.src: taken as it is
    assert model_inputs([tagged], None, multilingual) == model_inputs([tagged], Pair("fr", "en"), multilingual)
    assert model_inputs([tagged, ""], None, multilingual) == [tagged, ""]
    with pytest.raises(KdmtError, match="--pair en-de: the model translates de-en, fr-en"):
        model_inputs(["x"], Pair("en", "de"), multilingual)
    one_pair = {"src_lang": "de", "tgt_lang": "en"}
    assert model_inputs(["ein Hund"], Pair("de", "en"), one_pair) == model_inputs(["ein Hund"], None, one_pair)
    assert model_inputs(["ein Hund"], None, one_pair) == ["ein Hund"]
    with pytest.raises(KdmtError, match="the model translates de-en"):
        model_inputs(["x"], Pair("fr", "en"), one_pair)


def multi30k_lines(root, split: str, n: int, langs=("de", "en", "fr"), name: str | None = None) -> str:
    """root/NAME.LANG: the first n lines of a Multi30k split; the prefix root/NAME."""
    for lang in langs:
        with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            write(root / f"{name or split}.{lang}", [next(f).rstrip("\n") for _ in range(n)])
    return str(root / (name or split))


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """A prepared de-en + fr-en directory of Multi30k, with source tags."""
    root = tmp_path_factory.mktemp("multi")
    train, valid = multi30k_lines(root, "train", 1500), multi30k_lines(root, "val", 40)
    args = ["prepare", "--pair", "de-en", "--pair", "fr-en", "--train", train, "--valid", valid, "--source-tags"]
    result = kdmt(*args, "--vocab-size", "1000", "-o", root / "data")
    assert result.exit_code == 0, result.stderr
    return root


def test_one_sentencepiece_model_covers_every_language_and_keeps_each_tag_whole(multilingual):
    data = PreparedData.open(multilingual / "data")
    assert [p["pair"] for p in data.info.pairs] == ["de-en", "fr-en"] and data.info.source_tags
    assert data.info.pair_rows("train").counts == [1500, 1500] and data.info.stats["valid"]["kept"] == 80
    assert sorted(p.name for p in (multilingual / "data").glob("spm*")) == ["spm.model"]
    vocab = data.src_vocab
    tags = {tag: vocab.encode([f"{tag} x"])[0][0] for tag in ("<2en>", "<from_de>", "<from_fr>")}
    assert sorted(tag_ids(vocab)) == sorted(tags.values())
    for tag, i in tags.items():
        assert vocab.sp.id_to_piece(i) == f"▁{tag}"  # one token, the word boundary with it
    src, tgt = data.text("train")
    for rows, lang in ((range(0, 1500), "de"), (range(1500, 3000), "fr")):
        assert all(src[i].startswith(f"<2en> <from_{lang}> ") for i in rows)
        assert (multilingual / "data" / f"train.{lang}-en.src").read_text().splitlines() == src[rows.start : rows.stop]
        text = [src[i].split(" ", 2)[2] for i in rows]
        assert all(UNK not in ids for ids in vocab.encode(text + tgt[rows.start : rows.stop]))
    corpus = data.corpus("train")
    assert {corpus.pair(i)[0][0].item() for i in range(len(corpus))} == {tags["<2en>"]}
    assert {corpus.pair(i)[0][1].item() for i in (0, 1499, 1500, 2999)} == {tags["<from_de>"], tags["<from_fr>"]}
    valid = ValidSet.of(data)
    assert valid.parts() == [("de-en", range(0, 40)), ("fr-en", range(40, 80))]
    french = ValidSet.of(data, "fr-en")
    assert len(french.corpus) == 40 and all(line.startswith("<2en> <from_fr> ") for line in french.src_lines)
    assert french.corpus.pair(0)[0].equal(valid.corpus.pair(40)[0])


def test_a_small_language_is_balanced_into_the_sentencepiece_sample(tmp_path):
    assert pair_weights([900, 100], 1.0).tolist() == pytest.approx([0.9, 0.1])
    assert pair_weights([900, 100], 1e9).tolist() == pytest.approx([0.5, 0.5])
    big, small = multi30k_lines(tmp_path, "train", 3000), multi30k_lines(tmp_path, "train", 150, name="small")
    valid = multi30k_lines(tmp_path, "val", 20)
    french = (tmp_path / "small.fr").read_text().splitlines()
    pieces = {}
    for t in ("1", "100"):
        args = ["prepare", "--pair", "de-en", "--pair", "fr-en", "--train", big, "--train", small, "--valid", valid]
        result = kdmt(*args, "--vocab-size", "2000", "--spm-temperature", t, "-o", tmp_path / t)
        assert result.exit_code == 0, result.stderr
        vocab = PreparedData.open(tmp_path / t).src_vocab
        pieces[t] = sum(map(len, vocab.encode(french))) / sum(len(line.split()) for line in french)
    assert pieces["100"] < 0.85 * pieces["1"]  # French words are whole pieces more often when balanced


# --- one pair: as before -----------------------------------------------------------------------
def directory_digest(directory) -> str:
    """The files' names and bytes; the records (prepare.json, the tokenized corpora's) without the sha256 of
    their content, and the corpora's key without the text's hashes (both added after the digests were
    taken), which are checked instead."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        if path.name == "prepare.json" or path.name.endswith(".ids.json"):
            record, split = read_json(path), path.name.removesuffix(".ids.json")
            if path.name != "prepare.json":
                text = content_key([directory / f"{split}.{s}" for s in ("src", "tgt")])
                assert record["key"].pop("text") == text
            data = (json.dumps(record, indent=2) + "\n").encode()
        digest.update(path.name.encode() + b"\0" + data)
    return digest.hexdigest()


@pytest.mark.skipif(sentencepiece.__version__ != "0.2.3", reason="the digest was taken with sentencepiece 0.2.3")
def test_a_single_pair_prepare_writes_the_files_it_wrote_before(tmp_path):
    train, valid = (
        multi30k_lines(tmp_path, "train", 1000, ("de", "en")),
        multi30k_lines(tmp_path, "val", 100, ("de", "en")),
    )
    for name, languages in (("src-tgt", ["--src", "de", "--tgt", "en"]), ("pair", ["--pair", "de-en"])):
        result = kdmt(
            "prepare", *languages, "--train", train, "--valid", valid, "--vocab-size", "500", "-o", tmp_path / name
        )
        assert result.exit_code == 0, result.stderr
        # made by kdmt before several pairs were possible (commit 0e2ce41), from the same files and options
        assert directory_digest(tmp_path / name) == "5602bfdbd5af8a342048dd020f97a7f1b32d9f8196709d881eb5838d6f587c9f"
    assert "pairs" not in json.loads((tmp_path / "pair" / "prepare.json").read_text())


def test_bad_pair_options_fail_in_one_line(tmp_path):
    prefix = multi30k_lines(tmp_path, "val", 10)
    out = ["-o", tmp_path / "d"]
    assert_fails(
        kdmt("prepare", "--pair", "de-en", "--src", "de", "--tgt", "en", "--train", prefix, *out), "either --src"
    )
    assert_fails(kdmt("prepare", "--pair", "de", "--train", prefix, "--valid", prefix, *out), "language pair 'de'")
    two = ["--pair", "de-en", "--pair", "fr-en"]
    assert_fails(
        kdmt("prepare", *two, "--train", prefix, "--train", prefix, "--train", prefix, "--valid", prefix, *out),
        "once per --pair",
    )
    assert_fails(
        kdmt("prepare", *two, "--train", prefix, "--valid", prefix, "--separate-vocab", *out), "one sentencepiece model"
    )
    cold = ["--spm-temperature", "0"]
    assert_fails(
        kdmt("prepare", *two, "--train", prefix, "--valid", prefix, *cold, *out), "--spm-temperature must be above 0"
    )
    assert not (tmp_path / "d").exists()


# --- routing, sampling, selective distillation ---------------------------------------------------
class FixedTeacher(Transformer):
    """A teacher whose logits are fixed, one row of them per target position; it counts the sentences it sees."""

    def __init__(self, logits: torch.Tensor):
        super().__init__(make_config(logits.size(-1), logits.size(-1), "tiny"))
        self.logits, self.seen = logits, []

    def forward(self, src, tgt_in, hidden=None):
        self.seen.append(src.size(0))
        return self.logits[: tgt_in.size(1)].expand(src.size(0), -1, -1)


def routed_setup():
    torch.manual_seed(0)
    target = torch.randint(4, 11, (4, 5))
    target[1, 3:] = 0
    batch = make_batch_from(target)
    batch.indices = torch.tensor([4, 0, 3, 1])  # rows 0-2 are pair a's, rows 3-4 pair b's
    teachers = [FixedTeacher(torch.randn(5, 11) * 3), FixedTeacher(torch.randn(5, 11) * 3)]
    student = Transformer(make_config(11, 11, "tiny")).eval()
    return batch, teachers, student, PairRows(["a-x", "b-x"], [3, 2])


def own_teacher_kl(student, batch, teachers, pair_of, rows=range(4)) -> torch.Tensor:
    """Word-KD of each sentence `rows` with the distribution of the teacher pair_of names, summed."""
    logits = student(batch.src, batch.tgt_in)
    return sum(
        word_kd_loss(
            logits[i : i + 1], batch.tgt_out[i : i + 1], 1.0, F.softmax(teachers[pair_of[i]].logits[None], dim=-1)
        )
        for i in rows
    )


def test_each_sentence_learns_from_its_own_pairs_teacher():
    batch, teachers, student, routes = routed_setup()
    objective = Distillation(student, teachers, alpha=1.0, label_smoothing=0.0, routes=routes)
    loss, figures = objective(student, batch)
    torch.testing.assert_close(loss, own_teacher_kl(student, batch, teachers, [1, 0, 1, 0]))
    assert not torch.allclose(loss, own_teacher_kl(student, batch, teachers, [0, 1, 0, 1]))  # routing matters
    assert [t.seen for t in teachers] == [[2], [2]]  # each teacher runs on its own pair's sentences alone


def test_selective_distillation_switches_word_kd_off_and_on_with_the_rule():
    selective = SelectiveKD(["a-x", "b-x"], margin=1.0)
    selective.teacher_bleu = {"valid_bleu_a-x": 30.0, "valid_bleu_b-x": 20.0}
    assert selective.update({"valid_bleu_a-x": 31.0, "valid_bleu_b-x": 20.9}) == {
        "word_kd_on_a-x": 0.0,  # at least the teacher's + 1: off
        "word_kd_on_b-x": 1.0,
    }
    assert selective.on.tolist() == [False, True]
    selective.update({"valid_bleu_a-x": 30.5, "valid_bleu_b-x": 25.0})  # a falls behind: on again; b ahead: off
    assert selective.on.tolist() == [True, False]

    batch, teachers, student, routes = routed_setup()
    objective = Distillation(student, teachers, alpha=0.5, label_smoothing=0.0, routes=routes, selective=selective)
    loss, _ = objective(student, batch)
    logits = student(batch.src, batch.tgt_in)
    a, b = [1, 3], [0, 2]  # the batch's sentences of pair a and of pair b

    def ce(rows: list[int]) -> torch.Tensor:
        return F.cross_entropy(logits[rows].transpose(1, 2), batch.tgt_out[rows], ignore_index=0, reduction="sum")

    expected = 0.5 * ce(a) + 0.5 * own_teacher_kl(student, batch, teachers, [1, 0, 1, 0], a) + ce(b)
    torch.testing.assert_close(loss, expected)
    assert [t.seen for t in teachers] == [[2], []]  # b's word-KD is off: its teacher does not run

    state = objective.state_dict()
    assert state["selective.on"].tolist() == [True, False]  # saved with the training state
    resumed = Distillation(student, teachers, alpha=0.5, routes=routes, selective=SelectiveKD(["a-x", "b-x"]))
    resumed.load_state_dict(state)
    assert resumed.selective.on.tolist() == [True, False]
    with pytest.raises(KdmtError, match="one teacher each"):
        Distillation(student, teachers[:1], alpha=0.5, routes=routes)


def test_pairs_are_drawn_with_a_temperature():
    rows = PairRows(["a-x", "b-x"], [900, 100])
    indices = torch.arange(1000)
    for temperature, expected in ((1.0, [900, 100]), (1e9, [500, 500]), (2.0, [750, 250])):
        drawn = PairSampler(rows, temperature)(indices, torch.Generator().manual_seed(1))
        assert torch.bincount(rows.pair_of(drawn)).tolist() == expected, temperature
    drawn = PairSampler(rows, 1e9)(indices, torch.Generator().manual_seed(1))
    assert torch.bincount(drawn[drawn >= 900] - 900).tolist() == [5] * 100  # the small pair: every sentence 5 times
    again = PairSampler(rows, 1e9)(indices, torch.Generator().manual_seed(1))
    assert again.equal(drawn) and set(drawn.tolist()) <= set(range(1000))
    kept = torch.tensor([0, 5, 950, 990])  # only the sentences it is given (those within --max-len)
    assert set(PairSampler(rows, 3.0)(kept, torch.Generator().manual_seed(0)).tolist()) <= set(kept.tolist())


def test_tags_are_dropped_from_translations(toy_model, monkeypatch, multilingual):
    checkpoint = load_checkpoint(toy_model)
    vocab = PreparedData.open(multilingual / "data").tgt_vocab
    checkpoint.src_vocab = checkpoint.tgt_vocab = vocab
    translator = Translator([checkpoint])
    tag, words = vocab.encode(["<2en> <from_de> a dog"])[0][:2], vocab.encode(["a dog"])[0]
    monkeypatch.setattr(
        translator, "translate_ids", lambda src, n, p=None, lines=None: [[Hypothesis(tag + words + tag[:1], 0.0)]]
    )
    assert translator.translate(["x"]) == ["a dog"]


# --- the commands, end to end, on the toy task -------------------------------------------------------
@pytest.fixture(scope="module")
def toy_multilingual(tmp_path_factory):
    """Two toy pairs: xx-rv reverses letters (400 pairs), xx-cp copies them (100); a teacher for each; their
    distilled corpus."""
    root = tmp_path_factory.mktemp("toy_multi")
    for split, n in (("train", 400), ("val", 20), ("small", 100)):
        src, rev = toy_pairs(n, seed=len(split))
        write(root / f"{split}.xx", src), write(root / f"{split}.rv", rev)
        write(root / f"{split}.cp", src)
    args = ["--pair", "xx-rv", "--pair", "xx-cp", "--train", root / "train", "--train", root / "small"]
    args += ["--valid", root / "val"]
    result = kdmt("prepare", *args, "--vocab-size", str(len(LETTERS) + 6), "--spm-type", "word", "-o", root / "data")
    assert result.exit_code == 0, result.stderr
    train = ["--preset", "tiny", "--max-tokens", "1500", "--warmup", "10", "--lr", "1e-3", "--device", "cpu"]
    for pair in ("xx-rv", "xx-cp"):
        result = kdmt(
            "train-teacher",
            "--data",
            root / "data",
            "--pair",
            pair,
            "-o",
            root / pair,
            *train,
            "--max-steps",
            "10",
            "--valid-interval",
            "10",
        )
        assert result.exit_code == 0, result.stderr
        result = kdmt(
            "distill",
            "-t",
            root / pair / "checkpoint_best.safetensors",
            "--src",
            root / "data" / f"train.{pair}.src",
            "-o",
            root / f"distilled.{pair}",
            "--beam",
            "1",
            "--no-filter",
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.stderr
    lines = [line for pair in ("xx-rv", "xx-cp") for line in (root / f"distilled.{pair}").read_text().splitlines()]
    write(root / "distilled.tgt", lines)
    return root, train


@pytest.fixture(scope="module")
def toy_student(toy_multilingual):
    """A {xx}→{rv,cp} student of the two teachers: seq-KD, word-KD routed per pair, selective, pairs sampled."""
    root, train = toy_multilingual
    teachers = ["--teacher", f"xx-rv={root / 'xx-rv' / 'checkpoint_best.safetensors'}"]
    teachers += ["--teacher", f"xx-cp={root / 'xx-cp' / 'checkpoint_best.safetensors'}"]
    args = ["train-student", "--data", root / "data", "-o", root / "student", *teachers, *train, "--alpha", "0.5"]
    args += ["--distilled", root / "distilled.tgt", "--fallback-ref", "--selective-kd", "--pair-temperature", "2"]
    result = kdmt(*args, "--max-steps", "6", "--valid-interval", "3")
    assert result.exit_code == 0, result.stderr
    return root, train, teachers


def test_a_multilingual_student_from_per_pair_teachers(toy_student):
    root, train, teachers = toy_student
    teacher = load_meta(root / "xx-rv" / "checkpoint_best.safetensors")
    assert teacher["pairs"] == ["xx-rv"] and teacher["source_tags"] is False
    records = [json.loads(line) for line in (root / "student" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if "valid_loss" in r]
    assert len(validations) == 2
    for r in validations:
        assert r["valid_bleu"] == pytest.approx((r["valid_bleu_xx-rv"] + r["valid_bleu_xx-cp"]) / 2)
        assert r["word_kd_on_xx-rv"] in (0.0, 1.0) and r["word_kd_on_xx-cp"] in (0.0, 1.0)
    meta = load_meta(root / "student" / "checkpoint_last.safetensors")
    assert meta["pairs"] == ["xx-rv", "xx-cp"] and meta["pair_temperature"] == 2.0
    assert set(meta["selective_kd"]["teacher_bleu"]) == {"valid_bleu_xx-rv", "valid_bleu_xx-cp"}
    data = PreparedData.open(root / "data")
    assert meta["corpus"]["pair_rows"] == data.info.pair_rows("train").counts
    lines = (root / "distilled.tgt").read_text().splitlines()
    n_rv = data.info.pair_rows("train").counts[0]
    holes = write(root / "holes.tgt", ["" if i % 3 == 0 or i >= n_rv + 50 else line for i, line in enumerate(lines)])
    corpus, record = student_corpus(data, [holes], 0.0, 1)  # the rows of each pair that the dropped lines leave
    assert record["pair_rows"] == [
        sum(1 for i in range(n_rv) if i % 3),
        sum(1 for i in range(n_rv, n_rv + 50) if i % 3),
    ]
    assert len(corpus) == sum(record["pair_rows"])

    bad = ["train-student", "--data", root / "data", "-o", root / "bad"]
    assert_fails(
        kdmt(*bad, "--teacher", root / "xx-rv" / "checkpoint_best.safetensors", *train, "--max-steps", "1"),
        "--teacher PAIR=CHECKPOINT",
    )
    swapped = [
        "--teacher",
        teachers[3].replace("xx-cp=", "xx-rv="),
        "--teacher",
        teachers[1].replace("xx-rv=", "xx-cp="),
    ]
    assert_fails(kdmt(*bad, *swapped, *train, "--max-steps", "1"), "was not trained on xx-rv")


def test_one_distilled_file_per_pair_makes_the_corpus_of_their_concatenation(toy_multilingual, tmp_path):
    root, _ = toy_multilingual
    data = PreparedData.open(root / "data")
    whole, record = student_corpus(data, [root / "distilled.tgt"], 0.0, 1)
    per_pair = [f"xx-cp={root / 'distilled.xx-cp'}", f"xx-rv={root / 'distilled.xx-rv'}"]  # any order
    corpus, pair_record = student_corpus(data, per_pair, 0.0, 1)
    assert pair_record["distilled"] == [f"xx-rv={root / 'distilled.xx-rv'}", f"xx-cp={root / 'distilled.xx-cp'}"]
    assert pair_record["pair_rows"] == record["pair_rows"] and len(corpus) == len(whole)
    rows = np.arange(len(corpus))
    for side in ("src", "tgt"):
        assert all(np.array_equal(a, b) for a, b in zip(corpus.rows(side, rows), whole.rows(side, rows)))
    short = write(tmp_path / "short", (root / "distilled.xx-cp").read_text().splitlines()[:-1])
    with pytest.raises(KdmtError, match="short has 99 lines, the data's xx-cp sentences 100"):
        student_corpus(data, [f"xx-rv={root / 'distilled.xx-rv'}", f"xx-cp={short}"], 0.0, 1)
    with pytest.raises(KdmtError, match="give one --distilled PAIR=FILE for each of xx-rv, xx-cp"):
        student_corpus(data, [f"xx-rv={root / 'distilled.xx-rv'}"], 0.0, 1)


def load_meta(path):
    return load_checkpoint(path).meta


def test_translate_eval_and_report_name_the_pair(toy_student, tmp_path, monkeypatch):
    root = toy_student[0]
    inputs = []

    def evaluate(translator, checkpoint, test_src, src, *args):
        inputs.append(src)
        return kdmt_evaluate(translator, checkpoint, test_src, src, *args)

    monkeypatch.setattr("kdmt.evaluate.evaluate", evaluate)
    student, teacher = root / "student" / "checkpoint_best.safetensors", root / "xx-rv" / "checkpoint_best.safetensors"
    result = kdmt("translate", "-m", student, "--pair", "xx-rv", "--beam", "1", "--device", "cpu", input="a b c\n\n")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and "<" not in result.stdout and result.stdout.endswith("\n\n")
    assert_fails(kdmt("translate", "-m", student, "--device", "cpu", input="a b\n"), "name one with --pair")
    assert_fails(kdmt("translate", "-m", teacher, "--pair", "xx-cp", input="a b\n"), "the model translates xx-rv")
    src, ref = toy_pairs(10, seed=9)
    files = ["--src", write(tmp_path / "t.xx", src), "--device", "cpu", "--beam", "1"]
    for pair, refs in (("xx-rv", ref), ("xx-cp", src)):
        result = kdmt(
            "eval",
            student,
            teacher if pair == "xx-rv" else root / "xx-cp" / "checkpoint_best.safetensors",
            *files,
            "--ref",
            write(tmp_path / f"t.{pair}", refs),
            "--pair",
            pair,
            "--report",
            tmp_path / f"{pair}.json",
        )
        assert result.exit_code == 0, result.stderr
        assert [r["pair"] for r in json.loads((tmp_path / f"{pair}.json").read_text())] == [pair, pair]
        tag = "<2rv>" if pair == "xx-rv" else "<2cp>"
        assert inputs[-2] == inputs[-1] == [f"{tag} {line}" for line in src]  # the teacher too: trained on tags
    result = kdmt("report", tmp_path / "xx-rv.json", tmp_path / "xx-cp.json", "-o", tmp_path, "--markdown")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [(r["model"], r["pair"]) for r in rows] == [
        ("student", "xx-rv"),
        ("xx-rv", "xx-rv"),
        ("student", "xx-cp"),
        ("xx-cp", "xx-cp"),
    ]
    assert [r["bleu_vs_teacher"] for r in rows][1::2] == [0.0, 0.0]  # each pair against its own teacher
    assert result.stdout.splitlines()[0].startswith("| model | pair | BLEU |")


def test_the_trainer_draws_each_epoch_with_the_pair_sampler(toy_multilingual, tmp_path):
    data = PreparedData.open(toy_multilingual[0] / "data")
    rows = data.info.pair_rows("train")
    assert rows.counts[0] > 3 * rows.counts[1]
    model = Transformer(make_config(len(data.src_vocab), len(data.tgt_vocab), "tiny"))
    config = TrainConfig(max_steps=1, valid_bleu_sents=0, max_tokens=1500)
    args = model, data.src_vocab, data.tgt_vocab, data.corpus("train"), ValidSet.of(data), tmp_path, config
    trainer = Trainer(*args, torch.device("cpu"), sampler=PairSampler(rows, 1e9))
    drawn = torch.bincount(rows.pair_of(torch.cat(list(trainer.data.epoch_batches(0))))).tolist()
    assert abs(drawn[0] - drawn[1]) <= 1 and sum(drawn) == len(trainer.data.indices)  # evenly, at T → ∞


def test_stored_soft_targets_come_from_each_sentences_own_teacher(toy_multilingual):
    root, _ = toy_multilingual
    teachers = {pair: root / pair / "checkpoint_best.safetensors" for pair in ("xx-rv", "xx-cp")}
    args = ["soft-targets", "--data", root / "data", "-o", root / "soft.json", "--topk", "3", "--device", "cpu"]
    result = kdmt(*args, *[x for pair, path in teachers.items() for x in ("-t", f"{pair}={path}")])
    assert result.exit_code == 0, result.stderr
    store = SoftTargetStore.load(root / "soft.json")
    data = PreparedData.open(root / "data")
    corpus, rows = data.corpus("train"), data.info.pair_rows("train")
    for i in (0, rows.counts[0] - 1, rows.counts[0], len(corpus) - 1):
        model = load_checkpoint(teachers[rows.names[int(rows.pair_of(torch.tensor([i])))]]).model.eval()
        batch = make_batch(corpus, torch.tensor([i]))
        with torch.no_grad():
            top, ids = F.softmax(model(batch.src, batch.tgt_in)[0].float(), dim=-1).topk(3)
        index, logprobs = store.lookup(torch.tensor([i]), batch.tgt_out.size(1), torch.device("cpu"))
        assert index[0].equal(ids) and torch.allclose(logprobs[0], top.log(), atol=1e-2), i


def test_distill_tags_its_sources_for_a_multilingual_teacher_and_refuses_untagged_ones(
    toy_multilingual, tmp_path, monkeypatch
):
    root, _ = toy_multilingual
    seen = []
    translate_nbest = TextTranslator.translate_nbest

    def spy(self, lines, *args, **kw):
        seen.append(lines)
        return translate_nbest(self, lines, *args, **kw)

    monkeypatch.setattr(TextTranslator, "translate_nbest", spy)
    tagged = (root / "data" / "train.xx-rv.src").read_text().splitlines()[:8]
    assert all(line.startswith("<2rv> ") for line in tagged)
    raw = write(tmp_path / "raw.xx", [line.removeprefix("<2rv> ") for line in tagged])
    teacher = root / "xx-rv" / "checkpoint_best.safetensors"
    args = ["distill", "-t", teacher, "--beam", "1", "--no-filter", "--device", "cpu"]
    assert_fails(kdmt(*args, "--src", raw, "-o", tmp_path / "a"), "name one with --pair (line 1 carries no tags")
    for name, src, pair in (("tagged", write(tmp_path / "t.xx", tagged), []), ("pair", raw, ["--pair", "xx-rv"])):
        seen.clear()
        result = kdmt(*args, "--src", src, "-o", tmp_path / name, *pair)
        assert result.exit_code == 0, result.stderr
        assert seen == [tagged]  # the teacher's inputs: its pair's tags, once
    assert read_lines(tmp_path / "pair") == read_lines(tmp_path / "tagged")
    assert json.loads((tmp_path / "pair.json").read_text())["settings"]["pair"] == "xx-rv"
    one_untagged = write(tmp_path / "mixed.xx", tagged[:4] + ["a b c"] + tagged[5:])
    mixed = ["--src", one_untagged, "--shard-size", "3", "-o", tmp_path / "m"]
    assert_fails(kdmt(*args, *mixed), "line 5 carries no tags")
    assert_fails(kdmt(*args, "--src", raw, "--pair", "xx-cp", "-o", tmp_path / "c"), "the model translates xx-rv")
    other = write(tmp_path / "other.xx", ["<2cp> a b c"])
    assert_fails(kdmt(*args, "--src", other, "--pair", "xx-rv", "-o", tmp_path / "o"), "line 1 carries other tags")
    assert not any((tmp_path / name).exists() for name in ("a", "m", "c", "o"))


def test_soft_targets_refuse_a_teacher_of_another_pair(toy_multilingual, tmp_path):
    root, _ = toy_multilingual
    swapped = [("xx-rv", "xx-cp"), ("xx-cp", "xx-rv")]  # each pair named with the other pair's teacher
    teachers = [x for pair, other in swapped for x in ("-t", f"{pair}={root / other / 'checkpoint_best.safetensors'}")]
    result = kdmt("soft-targets", "--data", root / "data", "-o", tmp_path / "soft.json", "--device", "cpu", *teachers)
    assert_fails(result, "was not trained on xx-rv (its pairs: xx-cp)")
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_resumed_multilingual_student_goes_on_with_its_switches_and_its_draw(toy_multilingual, tmp_path):
    """Word-KD routed per pair, pairs drawn with a temperature, and selective distillation that switches
    every pair's word-KD off at the first validation (margin -100): stopped after it and resumed, the run
    takes the steps of the uninterrupted one."""
    root, train = toy_multilingual
    teachers = [x for pair in ("xx-rv", "xx-cp") for x in ("-t", f"{pair}={root / pair / BEST}")]
    args = ["train-student", "--data", root / "data", *teachers, *train, "--alpha", "0.5", "--dropout", "0.1"]
    args += ["--selective-kd", "--selective-margin", "-100", "--pair-temperature", "3", "--valid-interval", "4"]
    args += ["--valid-bleu-sents", "5", "--log-interval", "1"]
    for out, steps, resume in (("full", 8, []), ("split", 4, []), ("split", 8, ["--resume"])):
        result = kdmt(*args, "-o", tmp_path / out, "--max-steps", steps, *resume)
        assert result.exit_code == 0, result.stderr
    runs = {}
    for out in ("full", "split"):
        lines = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        runs[out] = {r["step"]: r for r in lines if "loss" in r}
    assert [runs["split"][s]["loss"] for s in range(5, 9)] == [runs["full"][s]["loss"] for s in range(5, 9)]
    assert runs["full"][4]["word_kd"] > 0 and runs["full"][5]["word_kd"] == 0  # switched off at step 4
    full, split = (
        load_checkpoint(tmp_path / out / "checkpoint_last.safetensors").model.state_dict() for out in ("full", "split")
    )
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_a_student_of_one_pair_of_multilingual_data(toy_multilingual, tmp_path):
    root, train = toy_multilingual
    teacher = root / "xx-cp" / "checkpoint_best.safetensors"
    args = ["train-student", "--data", root / "data", "--pair", "xx-cp", "-t", teacher, "--alpha", "0.5", *train]
    result = kdmt(
        *args, "--distilled", root / "distilled.tgt", "--fallback-ref", "-o", tmp_path / "s", "--max-steps", "2"
    )
    assert result.exit_code == 0, result.stderr
    rows = PreparedData.open(root / "data").info.pair_rows("train")
    assert f"{rows.counts[1]:,} training pairs" in result.stderr  # the xx-cp sentences alone
    meta = load_meta(tmp_path / "s" / "checkpoint_last.safetensors")
    assert meta["pairs"] == ["xx-cp"] and meta["corpus"]["pair"] == "xx-cp"
    records = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert "valid_bleu" in records[-1] and not any(k.startswith("valid_bleu_") for k in records[-1])
    wrong = ["-t", root / "xx-rv" / "checkpoint_best.safetensors", "-o", tmp_path / "w", "--max-steps", "1"]
    assert_fails(kdmt(*args[:5], *wrong), "was not trained on xx-cp")
    draw = ["--pair-temperature", "2", "-o", tmp_path / "d", "--max-steps", "1"]
    assert_fails(kdmt(*args[:5], *draw), "--pair-temperature draws the pairs of multilingual data")
