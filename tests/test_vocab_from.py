"""Word-level KD from a pretrained MarianMT teacher (kdmt.pretrained_kd): `prepare --vocab-from` gives the
teacher's segmentation and ids; stored soft targets are the teacher's own top-k log-probabilities; online
word-KD trains; a teacher of another vocabulary is refused in one line.

The teachers are tiny MarianMT models with random weights (teacher-forced distributions need no training)
in OPUS-MT's layout (tests/hf_models.py)."""

import json
import random
import shutil

import pytest
import torch
from hf_models import marian
from test_cli import assert_fails, kdmt, write

from kdmt.data import PreparedData
from kdmt.errors import KdmtError
from kdmt.pretrained import load_model, load_tokenizer
from kdmt.pretrained_kd import load_pretrained_teacher
from kdmt.soft_targets import SoftTargetStore
from kdmt.student import student_corpus
from kdmt.vocab import UNK

transformers = pytest.importorskip("transformers")


def pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Sentences of 3 to 8 words of 1 to 4 letters; the target: the words in reverse order, each reversed."""
    rng = random.Random(seed)
    src = [
        " ".join("".join(rng.choices("abcdefghij", k=rng.randint(1, 4))) for _ in range(rng.randint(3, 8)))
        for _ in range(n)
    ]
    return src, [" ".join(w[::-1] for w in reversed(s.split())) for s in src]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_from_text")
    for split, (n, seed) in {"train": (300, 1), "valid": (20, 2)}.items():
        src, tgt = pairs(n, seed)
        write(root / f"{split}.src", src)
        write(root / f"{split}.tgt", tgt)
    return root


@pytest.fixture(scope="session", params=[False, True], ids=["separate", "joint"])
def teacher(request, tmp_path_factory):
    return marian(tmp_path_factory.mktemp("marian"), *pairs(400, seed=7), request.param)


@pytest.fixture(scope="session")
def data(teacher, corpus):
    out = teacher.parent / "data"
    args = ["--src", "src", "--tgt", "tgt", "--train", corpus / "train", "--valid", corpus / "valid"]
    result = kdmt("prepare", *args, "-o", out, "--vocab-from", teacher)
    assert result.exit_code == 0, result.stderr
    return out


def test_prepare_vocab_from_gives_the_teachers_segmentation_and_ids(teacher, data):
    prepared = PreparedData.open(data)
    tokenizer = load_tokenizer(teacher)
    src, tgt = prepared.text("train")
    assert prepared.info.joint_vocab == ((teacher / "source.spm").read_bytes() == (teacher / "target.spm").read_bytes())
    for lines, vocab, theirs in (
        (src, prepared.src_vocab, tokenizer.spm_source),
        (tgt, prepared.tgt_vocab, tokenizer.spm_target),
    ):
        pieces = [[vocab.sp.id_to_piece(i) for i in ids] for ids in vocab.encode(lines)]
        assert pieces == theirs.encode(lines, out_type=str)
        assert any(len(p) > 1 for ids in pieces for p in ids)  # pieces of several letters: a real segmentation
    unk = tokenizer.unk_token_id  # two models: a target piece that vocab.json lacks is the teacher's <unk>
    assert prepared.info.joint_vocab or unk in {i for ids in tokenizer(text_target=tgt)["input_ids"] for i in ids}
    corpus = prepared.corpus("train")
    mapping = json.loads((data / prepared.info.vocab_from["mapping"]).read_text())
    for i in (0, 7, len(src) - 1):  # the stored ids, mapped, are the teacher tokenizer's
        s, t = corpus.pair(i)
        assert [mapping["src"][k] for k in s.tolist()] == tokenizer(src[i])["input_ids"]
        assert [mapping["tgt"][k] for k in t.tolist()] == tokenizer(text_target=tgt[i])["input_ids"]


def test_stored_soft_targets_are_the_teachers_own_top_k(teacher, data, tmp_path):
    """Each teacher id's probability is its kdmt piece's: with one spm model, every teacher id has one, and
    the stored top-k are the teacher's own; with two, the ids of source pieces alone fall to kdmt's <unk>."""
    result = kdmt("soft-targets", "-t", teacher, "--data", data, "-o", tmp_path / "soft.json", "--topk", "4")
    assert result.exit_code == 0, result.stderr
    store = SoftTargetStore.load(tmp_path / "soft.json")
    prepared = PreparedData.open(data)
    corpus, _ = student_corpus(prepared, None, 0.0, 1)
    model, tokenizer = load_model(teacher, torch.device("cpu")), load_tokenizer(teacher)
    tgt_ids = json.loads((data / "teacher-vocab.json").read_text())["tgt"]
    piece = {t: k for k, t in enumerate(tgt_ids) if t != tgt_ids[UNK] or k == UNK}  # teacher id -> kdmt id
    size = model.config.vocab_size
    assert (len(piece) == size) == prepared.info.joint_vocab
    to_kdmt = torch.tensor([piece.get(t, UNK) for t in range(size)])
    src, tgt = prepared.text("train")
    for i in range(len(src)):
        labels = tokenizer(text_target=tgt[i])["input_ids"]
        start = model.config.decoder_start_token_id
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([tokenizer(src[i])["input_ids"]]),
                decoder_input_ids=torch.tensor([[start] + labels[:-1]]),
            ).logits[0]
        probs = torch.zeros(len(labels), len(tgt_ids)).index_add_(-1, to_kdmt, logits.softmax(-1))
        logp, ids = probs.log().topk(4, dim=-1)
        if prepared.info.joint_vocab:  # the teacher's own top-k, ids mapped
            own, own_ids = logits.log_softmax(-1).topk(4, dim=-1)
            assert torch.equal(ids, to_kdmt[own_ids]) and torch.allclose(logp, own, atol=1e-5)
        rows = slice(store.offsets[i], store.offsets[i + 1])
        assert store.index[rows].tolist() == ids.tolist()
        stored = torch.from_numpy(store.logprobs[rows].astype("float32"))  # float16: within half a step
        assert torch.allclose(stored, logp, rtol=2**-11, atol=1e-5)


def student_steps(data, out, *kd: str) -> list[dict]:
    """The logged training steps of a small student trained on `data` with the word-KD options `kd`."""
    size = ["--d-model", "32", "--d-ff", "64", "--enc-layers", "1", "--dec-layers", "1", "--max-tokens", "400"]
    schedule = ["--lr", "3e-3", "--warmup", "5", "--max-steps", "24", "--log-interval", "8", "--valid-interval", "24"]
    result = kdmt("train-student", "--data", data, "-o", out, *kd, *size, *schedule, "--valid-bleu-sents", "0")
    assert result.exit_code == 0, result.stderr
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_online_word_kd_from_the_pretrained_teacher_trains_as_offline_does(teacher, data, tmp_path):
    online = student_steps(data, tmp_path / "online", "-t", teacher, "--alpha", "0.5", "--topk", "4")
    assert len(online) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in online)
    assert online[-1]["word_kd"] < online[0]["word_kd"] and online[-1]["loss"] < online[0]["loss"]
    result = kdmt("soft-targets", "-t", teacher, "--data", data, "-o", tmp_path / "soft.json", "--topk", "4")
    assert result.exit_code == 0, result.stderr
    offline = student_steps(data, tmp_path / "offline", "--alpha", "0.5", "--soft-targets", tmp_path / "soft.json")
    for a, b in zip(online, offline):  # the same loss, but for the stored log-probabilities' float16
        assert a["word_kd"] == pytest.approx(b["word_kd"], rel=1e-3)


@pytest.mark.parametrize(
    "options",
    [["--alpha", "0.5"], ["--hidden-kd", "encoder"], ["--init-from-teacher"]],
    ids=["word-kd", "hidden-kd", "init"],
)
def test_a_pretrained_teacher_of_another_vocabulary_is_refused(teacher, toy_data, tmp_path, options):
    result = kdmt(
        "train-student", "--data", toy_data, "-o", tmp_path / "s", "-t", teacher, *options, "--max-steps", "1"
    )
    assert_fails(result, f"the teacher's vocabulary is not the prepared data's: prepare with --vocab-from {teacher}")
    assert not (tmp_path / "s").exists()
    if options[0] == "--alpha":  # stored soft targets too
        result = kdmt("soft-targets", "-t", teacher, "--data", toy_data, "-o", tmp_path / "soft.json")
        assert_fails(result, "prepare with --vocab-from")


@pytest.mark.parametrize("options", [["--hidden-kd", "both"], ["--init-from-teacher"]], ids=["hidden-kd", "init"])
def test_hidden_kd_and_init_from_a_pretrained_teacher_are_refused_even_in_its_vocabulary(
    teacher, data, tmp_path, options
):
    result = kdmt("train-student", "--data", data, "-o", tmp_path / "s", "-t", teacher, *options, "--max-steps", "1")
    assert_fails(result, "--hidden-kd and --selective-kd take kdmt teachers")
    assert not (tmp_path / "s").exists()


def test_a_marian_teacher_of_other_ids_than_the_data_was_prepared_with_is_refused(teacher, data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    vocab = json.loads((other / "vocab.json").read_text())
    a, b = list(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "vocab.json").write_text(json.dumps(vocab))
    result = kdmt(
        "train-student", "--data", data, "-o", tmp_path / "s", "-t", other, "--alpha", "0.5", "--max-steps", "1"
    )
    assert_fails(result, f"the teacher's vocabulary is not the prepared data's: prepare with --vocab-from {other}")


def test_prepare_vocab_from_is_refused_where_the_teachers_tokenizer_splits_otherwise(teacher, corpus, tmp_path):
    """Marian's tokenizer takes a leading >>fr<< whole, its sentencepiece model does not."""
    src, tgt = pairs(50, seed=3)
    write(tmp_path / "t.src", [">>fr<< " + src[0], *src[1:]])
    write(tmp_path / "t.tgt", tgt)
    args = [
        "--src",
        "src",
        "--tgt",
        "tgt",
        "--train",
        tmp_path / "t",
        "--valid",
        corpus / "valid",
        "-o",
        tmp_path / "d",
    ]
    result = kdmt("prepare", *args, "--vocab-from", teacher)
    assert_fails(result, "its tokenizer splits 1 of 50 sampled source sentences otherwise than its sentencepiece model")
    assert not (tmp_path / "d").exists()
    assert_fails(kdmt("prepare", *args, "--vocab-from", corpus), "not a Hugging Face model directory")
    shutil.copytree(teacher, tmp_path / "damaged")
    (tmp_path / "damaged" / "source.spm").write_bytes(b"not a sentencepiece model")
    assert_fails(kdmt("prepare", *args, "--vocab-from", tmp_path / "damaged"), "is not a sentencepiece model")


def test_a_sentence_beyond_the_teachers_positions_is_refused(teacher, data):
    checkpoint = load_pretrained_teacher(teacher, PreparedData.open(data), torch.device("cpu"))
    limit = checkpoint.model.model.config.max_position_embeddings
    fits = torch.full((1, limit), 5)
    assert checkpoint.model(fits, fits).shape == (1, limit, len(checkpoint.tgt_vocab))
    with pytest.raises(KdmtError, match=f"a sentence of {limit + 1} tokens exceeds the teacher's {limit} positions"):
        checkpoint.model(torch.full((1, limit + 1), 5), fits)


def test_prepare_vocab_from_takes_one_pair(teacher, tmp_path):
    """A MarianMT teacher's vocabulary is one pair's: several --pair with --vocab-from are refused, nothing written."""
    src, tgt = pairs(20, seed=4)
    for lang, lines in (("de", src), ("fr", src), ("en", tgt)):
        write(tmp_path / f"t.{lang}", lines)
    args = ["--pair", "de-en", "--pair", "fr-en", "--train", tmp_path / "t", "--valid", tmp_path / "t"]
    result = kdmt("prepare", *args, "-o", tmp_path / "d", "--vocab-from", teacher)
    assert_fails(result, "--vocab-from takes one pair (a MarianMT teacher's)")
    assert not (tmp_path / "d").exists()
