"""Streaming prepare writes what the in-memory path wrote; its parts: hashed deduplication, the sample
sentencepiece is trained on, worker processes; mapped corpora, rebuilt when damaged or stale; and the
student's corpus, tokenized once."""

import gzip
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from conftest import MULTI30K
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs

from kdmt.corpus import open_corpus
from kdmt.data import (
    CleanStats,
    PreparedData,
    TokenizedCorpus,
    clean_stream,
    corpus_key,
    length_in_words,
    stream_parallel,
)
from kdmt.prepare import Reservoir
from kdmt.student import student_corpus
from kdmt.vocab import EOS, Vocab


def old_clean(src: list[str], tgt: list[str], max_words: int = 250, max_ratio: float = 3.0, dedup: bool = True):
    """Cleaning as kdmt did it in memory, with a set of the pairs' strings: the reference."""
    stats = CleanStats(input=len(src))
    seen: set[tuple[str, str]] = set()
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt):
        s, t = " ".join(s.split()), " ".join(t.split())
        ns, nt = length_in_words(s), length_in_words(t)
        if ns == 0 or nt == 0:
            stats.empty += 1
        elif ns > max_words or nt > max_words:
            stats.too_long += 1
        elif max(ns, nt) / min(ns, nt) > max_ratio:
            stats.ratio += 1
        elif dedup and (s, t) in seen:
            stats.duplicate += 1
        else:
            if dedup:
                seen.add((s, t))
            out_src.append(s)
            out_tgt.append(t)
    stats.kept = len(out_src)
    return out_src, out_tgt, stats


def multi30k_slice(root: Path) -> None:
    """root/train.{de,en}: 3,000 Multi30k pairs, 600 of them again (some with other spacing), and pairs
    that cleaning drops; root/val.{de,en}: 200 pairs."""
    lines = {}
    for split, n in (("train", 3000), ("val", 200)):
        for lang in ("de", "en"):
            with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines[split, lang] = [next(f).rstrip("\n") for _ in range(n)]
    rng = random.Random(3)
    for i in rng.sample(range(3000), 600):
        spaced = i % 3 == 0
        lines["train", "de"].append(lines["train", "de"][i].replace(" ", "  ") if spaced else lines["train", "de"][i])
        lines["train", "en"].append(lines["train", "en"][i] + (" " if spaced else ""))
    extra = [("", "empty"), ("ein " * 300, "a " * 300), ("kurz", "a very much longer sentence than that")]
    for s, t in extra:
        lines["train", "de"].append(s)
        lines["train", "en"].append(t)
    for (split, lang), text in lines.items():
        write(root / f"{split}.{lang}", text)


def old_sentencepiece(lines: list[str], prefix: Path) -> list[tuple[str, float]]:
    """The pieces and scores of the joint model that kdmt trained on a file of all the cleaned lines."""
    write(prefix.with_suffix(".txt"), lines)
    spm.SentencePieceTrainer.train(
        input=prefix.with_suffix(".txt"),
        model_prefix=prefix,
        vocab_size=2000,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    old = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))
    return [(old.id_to_piece(i), old.get_score(i)) for i in range(len(old))]


def prepare_args(root: Path, out: Path, *more: str) -> list:
    return [
        "prepare",
        "--src",
        "de",
        "--tgt",
        "en",
        "--train",
        root / "train",
        "--valid",
        root / "val",
        "-o",
        out,
        *more,
    ]


def test_prepare_writes_what_the_in_memory_path_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr("kdmt.corpus.CHUNK_PAIRS", 500)  # written in several pieces
    monkeypatch.setattr("kdmt.corpus.LENGTH_CHUNK", 333)  # the lengths read back in several pieces
    multi30k_slice(tmp_path)
    result = kdmt(*prepare_args(tmp_path, tmp_path / "data", "--vocab-size", "2000", "--spm-sample", "2000000"))
    assert result.exit_code == 0, result.stderr
    data = PreparedData.open(tmp_path / "data")

    for split, prefix in (("train", "train"), ("valid", "val")):
        src, tgt = ((tmp_path / f"{prefix}.{lang}").read_text().splitlines() for lang in ("de", "en"))
        src, tgt, stats = old_clean(src, tgt, dedup=split == "train")
        assert data.text(split) == (src, tgt)
        assert data.info.stats[split] == asdict(stats)
        if split == "train":
            assert stats.duplicate == 600 and stats.empty == stats.too_long == stats.ratio == 1
            old = old_sentencepiece(src + tgt, tmp_path / "old")  # on a file of the sources, then the targets
            new = data.src_vocab.sp
            assert [(new.id_to_piece(i), new.get_score(i)) for i in range(2000)] == old
        corpus = data.corpus(split)
        expected = TokenizedCorpus.encode(src, tgt, data.src_vocab, data.tgt_vocab)
        assert len(corpus) == len(src) and corpus.fingerprint() == expected.fingerprint()
        assert corpus.src_len.tolist() == expected.src_len.tolist() and corpus.tgt_len.equal(expected.tgt_len)
        assert corpus.src_len.dtype == corpus.tgt_len.dtype == torch.int32  # 8 bytes a pair in memory
        src_ids, tgt_ids = data.src_vocab.encode(src), data.tgt_vocab.encode(tgt)
        for i in range(len(corpus)):
            s, t = corpus.pair(i)
            assert s.tolist() == src_ids[i] + [EOS] and t.tolist() == tgt_ids[i] + [EOS]
        assert data.tgt_vocab.decode(tgt_ids) == tgt  # the ids stand for the cleaned text
        assert corpus.ids["src"].dtype == np.uint16 and isinstance(corpus.ids["src"], np.ndarray)


def test_workers_write_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr("kdmt.corpus.CHUNK_PAIRS", 97)  # many chunks, several in flight
    monkeypatch.setattr("kdmt.prepare.CLEAN_CHUNK", 101)
    multi30k_slice(tmp_path)
    for workers in ("1", "2"):
        args = prepare_args(tmp_path, tmp_path / workers, "--vocab-size", "1000", "--workers", workers)
        result = kdmt(*args, "--spm-sample", "3000")
        assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "2").iterdir())
    assert "train.src.ids.npy" in names and "valid.tgt.off.npy" in names and "train.ids.json" in names
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_hashed_dedup_drops_the_same_pairs_as_a_set_of_strings():
    rng = random.Random(5)
    words = ["a", "b", "c", "d", "e"]
    src = [" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(3000)]
    tgt = [" ".join(rng.choices(words, k=rng.randint(1, 3))) + rng.choice(["", " ", "\t"]) for _ in range(3000)]
    old_src, old_tgt, old_stats = old_clean(src, tgt)
    for workers in (1, 2):
        stats = CleanStats()
        kept = [pair for chunk in clean_stream(zip(src, tgt), stats, chunk=64, workers=workers) for pair in chunk]
        assert kept == list(zip(old_src, old_tgt)) and stats == old_stats and stats.duplicate > 900


def sample(size: int, seed: int, items: list[int], piece: int = 1) -> list[int]:
    reservoir = Reservoir(size, seed)
    for start in range(0, len(items), piece):
        reservoir.extend(items[start : start + piece])
    return reservoir.items


def test_the_sample_is_uniform_seeded_and_whole_when_the_stream_is_short():
    assert sample(100, 1, list(range(80)), piece=7) == list(range(80))
    counts = np.zeros(1000)
    for seed in range(300):
        drawn = sample(100, seed, list(range(1000)), piece=1)
        assert len(set(drawn)) == 100 and drawn == sample(100, seed, list(range(1000)), piece=37)
        counts[drawn] += 1
    assert counts.sum() == 30_000 and abs(counts[:500].sum() - 15_000) < 600  # 4 standard deviations
    assert counts.min() > 5 and counts.max() < 70  # each item is drawn 30 times on average


def test_line_counts_that_differ_are_reported_whichever_side_is_longer(tmp_path):
    a, b = write(tmp_path / "a", ["x", "y", "z"]), write(tmp_path / "b", ["x"])
    with pytest.raises(Exception, match=f"{a} has 3 lines, {b} has 1"):
        list(stream_parallel(a, b))
    with pytest.raises(Exception, match=f"{b} has 1 lines, {a} has 3"):
        list(stream_parallel(b, a))
    (tmp_path / "train.de").write_bytes(b"gut\ngut\n")
    write(tmp_path / "train.en", ["good", "good", "more"])
    files = tmp_path / "train"
    result = kdmt("prepare", "--src", "de", "--tgt", "en", "--train", files, "--valid", files, "-o", tmp_path / "d")
    assert_fails(result, f"{files}.de has 2 lines, {files}.en has 3")
    assert not (tmp_path / "d").exists()


def prepare_toy_data(root: Path, vocab_size: int) -> Path:
    root.mkdir(exist_ok=True)
    for split, n in (("train", 400), ("val", 20)):
        src, tgt = toy_pairs(n, seed=len(split))
        write(root / f"{split}.de", src), write(root / f"{split}.en", tgt)
    args = prepare_args(root, root / "data", "--vocab-size", str(vocab_size), "--spm-type", "word")
    assert kdmt(*args).exit_code == 0
    return root / "data"


def damage(data: Path, how: str) -> None:
    if how == "record":
        (data / "train.ids.json").unlink()
        return
    path = data / {"ids": "train.src.ids.npy", "off": "train.tgt.off.npy", "header": "train.tgt.ids.npy"}[how]
    damaged = b"not an npy file" + path.read_bytes()[15:] if how == "header" else path.read_bytes()[:-9]
    path.write_bytes(damaged)


@pytest.mark.parametrize("how", ["ids", "off", "header", "record"])
def test_a_damaged_tokenized_corpus_is_tokenized_again(tmp_path, how):
    data = prepare_toy_data(tmp_path, 14)
    expected = TokenizedCorpus.encode(*PreparedData.open(data).text("train"), *[Vocab.load(data / "spm.model")] * 2)
    damage(data, how)
    corpus = PreparedData.open(data).corpus("train")
    assert corpus.fingerprint() == expected.fingerprint() and len(corpus) == len(expected)
    assert all(corpus.pair(i)[0].equal(expected.pair(i)[0]) for i in range(len(corpus)))
    key = corpus_key(data / "train.src", data / "train.tgt", *[Vocab.load(data / "spm.model")] * 2)
    assert open_corpus(data / "train", key) is not None


def test_ids_made_with_other_vocabularies_or_other_text_are_tokenized_again(tmp_path):
    data = prepare_toy_data(tmp_path / "a", 14)
    stale = PreparedData.open(data).corpus("train").fingerprint()
    other = prepare_toy_data(tmp_path / "b", 12)  # another sentencepiece model: other ids
    (data / "spm.model").write_bytes((other / "spm.model").read_bytes())
    prepared = PreparedData.open(data)
    expected = TokenizedCorpus.encode(*prepared.text("train"), prepared.src_vocab, prepared.tgt_vocab)
    assert prepared.corpus("train").fingerprint() == expected.fingerprint() != stale
    lines = (data / "train.tgt").read_text().splitlines()
    before = (data / "train.tgt").stat()
    i, edited = next((i, " ".join(reversed(x.split()))) for i, x in enumerate(lines) if x.split() != x.split()[::-1])
    write(data / "train.tgt", lines[:i] + [edited] + lines[i + 1 :])  # edited after tokenization: same size, time
    os.utime(data / "train.tgt", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (data / "train.tgt").stat().st_size == before.st_size
    assert prepared.corpus("train").pair(i)[1].tolist() == prepared.tgt_vocab.encode([edited])[0] + [EOS]


# --- the student's corpus, tokenized once -------------------------------------------------------
def old_student_pairs(src, ref, hyps, ref_share: float, seed: int, fallback: bool) -> list[tuple[str, str]]:
    """The student's pairs as kdmt made them in memory, from the text: the reference."""
    kept = [(s, h if h.strip() else r) for s, h, r in zip(src, hyps, ref) if h.strip() or fallback]
    reference = list(zip(src, ref))
    if ref_share <= 0:
        return kept
    if ref_share >= 1:
        return reference
    n_ref = min(len(reference), round(len(kept) * ref_share / (1 - ref_share)))
    n_dist = min(len(kept), round(n_ref * (1 - ref_share) / ref_share))
    rng = random.Random(seed)
    return rng.sample(kept, n_dist) + rng.sample(reference, n_ref)


def distilled_lines(ref: list[str], every: int) -> list[str]:
    return ["" if i % every == 0 else " ".join(sorted(r.split())) for i, r in enumerate(ref)]


@pytest.mark.parametrize("ref_share, fallback", [(0.0, False), (0.0, True), (0.3, True), (0.3, False), (1.0, False)])
def test_the_students_corpus_is_tokenized_once(toy_data, tmp_path, monkeypatch, ref_share, fallback):
    data = PreparedData.open(toy_data)
    src, ref = data.text("train")
    hyps = distilled_lines(ref, 7)
    distilled = write(tmp_path / "distilled.tgt", hyps)
    corpus, record = student_corpus(data, [distilled], ref_share, 5, fallback)

    pairs = old_student_pairs(src, ref, hyps, ref_share, 5, fallback)
    expected = TokenizedCorpus.encode([s for s, _ in pairs], [t for _, t in pairs], data.src_vocab, data.tgt_vocab)
    assert len(corpus) == len(pairs) and corpus.fingerprint() == expected.fingerprint()
    assert all(corpus.pair(i)[1].equal(expected.pair(i)[1]) for i in range(len(corpus)))
    empty = sum(1 for h in hyps if not h)
    counts = {"dropped_empty": 0 if fallback else empty, "fallback_ref": empty if fallback else 0, "extra_targets": 0}
    assert record == {"distilled": str(distilled), "ref_share": ref_share, "pairs": len(pairs), **counts}

    def tokenizing(*args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("kdmt.student.encode_flat", tokenizing)
    again, record_again = student_corpus(data, [distilled], ref_share, 5, fallback)
    assert again.fingerprint() == corpus.fingerprint() and record_again == record and len(again) == len(corpus)


def test_the_students_corpus_follows_its_distilled_file(toy_data, tmp_path):
    data = PreparedData.open(toy_data)
    src, ref = data.text("train")
    distilled = write(tmp_path / "distilled.tgt", distilled_lines(ref, 7))
    first, _ = student_corpus(data, [distilled], 0.0, 1)
    student_corpus(data, [distilled], 0.3, 1)
    assert list(tmp_path.iterdir()) == [distilled]  # the caches are in the data's directory, not beside it
    before = distilled.stat()
    lines = distilled_lines(ref, 7)
    i = next(i for i, line in enumerate(lines) if line.split() != line.split()[::-1])
    lines[i] = " ".join(reversed(lines[i].split()))
    write(distilled, lines)
    os.utime(distilled, ns=(before.st_atime_ns, before.st_mtime_ns))  # edited: the same size and time
    assert distilled.stat().st_size == before.st_size
    pairs = old_student_pairs(src, ref, lines, 0.0, 1, False)
    expected = TokenizedCorpus.encode([s for s, _ in pairs], [t for _, t in pairs], data.src_vocab, data.tgt_vocab)
    assert student_corpus(data, [distilled], 0.0, 1)[0].fingerprint() == expected.fingerprint() != first.fingerprint()
    write(distilled, distilled_lines(ref, 5))  # distilled again: other lines
    corpus, record = student_corpus(data, [distilled], 0.0, 1)
    pairs = old_student_pairs(src, ref, distilled_lines(ref, 5), 0.0, 1, False)
    expected = TokenizedCorpus.encode([s for s, _ in pairs], [t for _, t in pairs], data.src_vocab, data.tgt_vocab)
    assert corpus.fingerprint() == expected.fingerprint() != first.fingerprint()
    assert record["dropped_empty"] == len(ref) - len(pairs)
    with pytest.raises(Exception, match="every line of .* is empty"):
        student_corpus(data, [write(tmp_path / "empty.tgt", [""] * len(ref))], 0.3, 1)
    references, record = student_corpus(data, None, 0.0, 1)
    assert references.fingerprint() == data.corpus("train").fingerprint() and record["pairs"] == len(ref)
