"""The command line: a quick run through each command, and clean failures on bad input."""

import gzip
import json
import shutil

import pytest
import torch
from conftest import MULTI30K
from toy import toy_pairs
from typer.testing import CliRunner

from kdmt.checkpoint import load_checkpoint
from kdmt.cli import app
from kdmt.device import resolve_device
from kdmt.run_dir import AVERAGE, BEST, LAST
from kdmt.train import Learner

runner = CliRunner()


def kdmt(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def assert_fails(result, message: str, code: int = 2):
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- the happy path ---------------------------------------------------------------------------
def test_translate_reads_stdin_and_writes_stdout(toy_model):
    result = kdmt("translate", "-m", toy_model, "--beam", "3", input="a b c\nd e\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "c b a\ne d\n"


def test_translate_file_to_file(toy_model, tmp_path):
    src = write(tmp_path / "in.txt", ["f g h", "i j"])
    result = kdmt("translate", "-m", toy_model, "-i", src, "-o", tmp_path / "out.txt", "--beam", "1")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == "h g f\nj i\n"


def test_eval_reports_bleu_chrf_signature_and_speed(toy_model, tmp_path):
    src, ref = toy_pairs(50, seed=9)
    result = kdmt(
        "eval",
        toy_model,
        toy_model,
        "--src",
        write(tmp_path / "t.src", src),
        "--ref",
        write(tmp_path / "t.ref", ref),
        "--json",
        "--report",
        tmp_path / "report.json",
        "--hyps-dir",
        tmp_path / "hyps",
    )
    assert result.exit_code == 0, result.stderr
    printed, written = json.loads(result.stdout), json.loads((tmp_path / "report.json").read_text())
    fields = {
        "checkpoint",
        "test_src",
        "beam",
        "sentences",
        "bleu",
        "chrf",
        "chrfpp",
        "bleu_signature",
        "chrf_signature",
    }
    fields |= {"seconds", "sentences_per_s", "tokens_per_s", "parameters", "size_bytes", "device", "made_with"}
    for reports in (printed, written):
        assert len(reports) == 2 and all(fields <= set(r) for r in reports)
    assert printed == written
    ckpt = load_checkpoint(toy_model)
    hyps = (tmp_path / "hyps" / f"{toy_model.parent.name}.{toy_model.stem}.hyp").read_text().splitlines()
    tokens = sum(len(ids) + 1 for ids in ckpt.tgt_vocab.encode(hyps))  # EOS included
    assert [r["hyps"] for r in printed] == [hyps, hyps] and printed[0]["refs"] == ref  # for kdmt report's tests
    same = printed[1]["vs_first"]["bleu"]  # the same model twice: no difference
    assert "vs_first" not in printed[0] and (same["delta"], same["p_value"], same["significant"]) == (0, 1, False)
    for r in printed:
        assert r["checkpoint"] == str(toy_model) and r["test_src"] == str(tmp_path / "t.src") and r["beam"] == 5
        assert r["sentences"] == len(hyps) == 50 and r["device"] == str(resolve_device())
        assert r["parameters"] == ckpt.model.num_parameters() and r["size_bytes"] == toy_model.stat().st_size
        assert r["made_with"] == json.loads(json.dumps(ckpt.meta))
        assert r["bleu"] > 90 and r["chrf"] > 90
        assert r["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
        assert r["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
        # the speeds are the counts over the time, to rounding (seconds to 1 ms, speeds to 0.01 and 0.1)
        assert r["seconds"] > 0
        slack = 1e-3 / r["seconds"]
        assert r["sentences_per_s"] == pytest.approx(50 / r["seconds"], rel=slack, abs=0.01)
        assert r["tokens_per_s"] == pytest.approx(tokens / r["seconds"], rel=slack, abs=0.1)


def test_report_table_json_and_plot(toy_model, tmp_path):
    src, ref = toy_pairs(30, seed=9)
    src_file, ref_file = write(tmp_path / "t.src", src), write(tmp_path / "t.ref", ref)
    for beam in (1, 3):
        result = kdmt(
            "eval",
            toy_model,
            "--src",
            src_file,
            "--ref",
            ref_file,
            "--beam",
            beam,
            "--report",
            tmp_path / f"beam{beam}.json",
        )
        assert result.exit_code == 0, result.stderr
    result = kdmt("report", tmp_path / "beam1.json", tmp_path / "beam3.json", "-o", tmp_path / "r", "--markdown")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("| model | BLEU | chrF |") and len(result.stdout.splitlines()) == 3
    rows = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(rows) == 1 and rows[0]["beam"] == 3 and rows[0]["sentences_per_s_greedy"] > 0
    assert rows[0]["size_mb"] > 0 and rows[0]["bleu"] > 90
    assert (tmp_path / "r" / "report.png").read_bytes().startswith(b"\x89PNG")
    assert_fails(kdmt("report", src_file, "-o", tmp_path / "r"), "not a kdmt eval report")


def test_average_command(toy_model, tmp_path):
    result = kdmt("average", toy_model, toy_model, "-o", tmp_path / "avg.safetensors")
    assert result.exit_code == 0, result.stderr
    assert kdmt("translate", "-m", tmp_path / "avg.safetensors", "--beam", "1", input="a b\n").stdout == "b a\n"


def test_train_teacher_command_runs_and_refuses_to_overwrite(tmp_path):
    data = tmp_path / "data"
    train = toy_pairs(300, seed=1)
    for split, (s, t) in {"train": train, "valid": toy_pairs(20, seed=2)}.items():
        write(tmp_path / f"{split}.src", s), write(tmp_path / f"{split}.tgt", t)
    result = kdmt(
        "prepare",
        "--src",
        "src",
        "--tgt",
        "tgt",
        "--train",
        tmp_path / "train",
        "--valid",
        tmp_path / "valid",
        "-o",
        data,
        "--vocab-size",
        "14",
        "--spm-type",
        "word",
    )
    assert result.exit_code == 0, result.stderr
    args = [
        "train-teacher",
        "--data",
        data,
        "--out",
        tmp_path / "t",
        "--preset",
        "tiny",
        "--max-steps",
        "3",
        "--valid-interval",
        "2",
        "--valid-bleu-sents",
        "5",
        "--average-last",
        "2",
        "--keep-last",
        "2",
    ]
    result = kdmt(*args)
    assert result.exit_code == 0, result.stderr
    for name in (LAST, BEST, AVERAGE, "checkpoint_2.safetensors", "checkpoint_3.safetensors"):
        assert (tmp_path / "t" / name).is_file(), name
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert {"valid_bleu", "valid_loss"} <= set(metrics[-1])
    before = (tmp_path / "t" / "checkpoint_last.safetensors").read_bytes()
    assert_fails(kdmt(*args), "already holds a training run")
    assert (tmp_path / "t" / "checkpoint_last.safetensors").read_bytes() == before


# --- bad input ----------------------------------------------------------------------------------
def prepare_de_en(tmp_path, prefix: str):
    """kdmt prepare of tmp_path/PREFIX.{de,en}, used as training and validation set."""
    files = tmp_path / prefix
    return kdmt("prepare", "--src", "de", "--tgt", "en", "--train", files, "--valid", files, "-o", tmp_path / "d")


def test_training_out_of_memory_exits_1_in_one_line(toy_data, tmp_path, monkeypatch):
    def out_of_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Learner, "forward", out_of_memory)
    args = ["--data", toy_data, "--out", tmp_path, "--preset", "tiny", "--max-tokens", "1500", "--max-steps", "2"]
    result = kdmt("train-teacher", *args, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1] == (
        "kdmt train-teacher: error: out of memory; use smaller batches (--max-tokens/--batch-tokens)"
    )


def test_missing_input_file(tmp_path):
    assert_fails(
        prepare_de_en(tmp_path, "nope"),
        "no file",
    )
    assert_fails(kdmt("translate", "-m", tmp_path / "missing.safetensors"), "no such checkpoint")


def test_mismatched_line_counts(tmp_path):
    write(tmp_path / "train.de", ["a", "b", "c"]), write(tmp_path / "train.en", ["a", "b"])
    result = prepare_de_en(tmp_path, "train")
    assert_fails(result, "line counts differ")


def test_invalid_utf8(tmp_path, toy_model):
    (tmp_path / "train.de").write_bytes(b"gut\n\xff\xfe kaputt\n")
    write(tmp_path / "train.en", ["good", "broken"])
    result = prepare_de_en(tmp_path, "train")
    assert_fails(result, "line 2 is not valid UTF-8")
    assert_fails(kdmt("translate", "-m", toy_model, input=b"a b\n\xc3\x28\n"), "stdin: line 2 is not valid UTF-8")


def test_empty_corpus_after_cleaning(tmp_path):
    write(tmp_path / "train.de", ["", "  ", "x"]), write(tmp_path / "train.en", ["a", "", ""])
    result = prepare_de_en(tmp_path, "train")
    assert_fails(result, "empty after cleaning")
    assert not (tmp_path / "d").exists()


def test_corrupt_checkpoint_keeps_earlier_output(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    out = write(tmp_path / "out.txt", ["earlier output"])
    src = write(tmp_path / "in.txt", ["a b"])
    assert_fails(kdmt("translate", "-m", bad, "-i", src, "-o", out), "not a readable kdmt checkpoint")
    assert out.read_text() == "earlier output\n"


def test_not_a_prepared_directory(tmp_path):
    result = kdmt("train-teacher", "--data", tmp_path, "--out", tmp_path / "t", "--max-steps", "1")
    assert_fails(result, "is not a prepared data directory")


def test_training_needs_a_bound(toy_data, tmp_path):
    assert_fails(kdmt("train-teacher", "--data", toy_data, "--out", tmp_path / "t"), "give a bound")


@pytest.mark.parametrize("args", [["--beam", "0"], ["--device", "cuda:0"]])
def test_bad_search_options(toy_model, args):
    import torch

    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert kdmt("translate", "-m", toy_model, *args, input="a\n").exit_code == 2


def test_mismatched_eval_files(toy_model, tmp_path):
    result = kdmt("eval", toy_model, "--src", write(tmp_path / "s", ["a", "b"]), "--ref", write(tmp_path / "r", ["a"]))
    assert_fails(result, "line counts differ")


# --- prepare on real data -----------------------------------------------------------------------
def test_prepare_on_a_slice_of_multi30k(tmp_path):
    for split, n in (("train", 3000), ("val", 200)):
        for lang in ("de", "en"):
            with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            lines[5] = "\n" if lang == "de" and split == "train" else lines[5]  # an empty source line
            (tmp_path / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    shutil.copy(tmp_path / "train.de", tmp_path / "dup.de")
    result = kdmt(
        "prepare",
        "--src",
        "de",
        "--tgt",
        "en",
        "--train",
        tmp_path / "train",
        "--valid",
        tmp_path / "val",
        "-o",
        tmp_path / "data",
        "--vocab-size",
        "2000",
    )
    assert result.exit_code == 0, result.stderr
    data = tmp_path / "data"
    meta = json.loads((data / "prepare.json").read_text())
    assert meta["src_lang"] == "de" and meta["joint_vocab"] and meta["vocab_size"] == 2000
    stats = meta["stats"]["train"]
    assert stats["input"] == 3000 and stats["empty"] == 1
    assert stats["kept"] == 3000 - stats["empty"] - stats["too_long"] - stats["ratio"] - stats["duplicate"]
    train_src = (data / "train.src").read_text().splitlines()
    assert len(train_src) == stats["kept"] == len((data / "train.tgt").read_text().splitlines())
    assert len((data / "valid.src").read_text().splitlines()) == 200

    from kdmt.corpus import open_corpus
    from kdmt.data import corpus_key
    from kdmt.vocab import EOS, Vocab

    vocab = Vocab.load(data / "spm.model")
    assert len(vocab) == 2000
    corpus, _ = open_corpus(data / "train", corpus_key(data / "train.src", data / "train.tgt", vocab, vocab))
    src, tgt = corpus.pair(0)
    assert int(src[-1]) == EOS and int(tgt[-1]) == EOS
    assert vocab.decode([src[:-1].tolist()])[0] == train_src[0]


def test_prepare_from_a_local_json_dataset(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for split, (src, tgt) in {"train": toy_pairs(300, seed=1), "validation": toy_pairs(20, seed=2)}.items():
        rows = [{"translation": {"src": s, "tgt": t}} for s, t in zip(src, tgt)]
        write(tmp_path / f"{split}.jsonl", [json.dumps(r) for r in rows])
    result = kdmt(
        "prepare",
        "--src",
        "src",
        "--tgt",
        "tgt",
        "--dataset",
        "json",
        "--data-files",
        f"train={tmp_path / 'train.jsonl'}",
        "--data-files",
        f"validation={tmp_path / 'validation.jsonl'}",
        "-o",
        tmp_path / "data",
        "--vocab-size",
        "14",
        "--spm-type",
        "word",
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "data" / "train.tgt").read_text().splitlines()[0] == toy_pairs(1, seed=1)[1][0]
    assert len((tmp_path / "data" / "valid.src").read_text().splitlines()) == 20
    missing = kdmt(
        "prepare",
        "--src",
        "src",
        "--tgt",
        "xx",
        "--dataset",
        "json",
        "--data-files",
        f"train={tmp_path / 'train.jsonl'}",
        "-o",
        tmp_path / "d2",
    )
    assert_fails(missing, "no field 'translation.xx'")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-tokens", "5"], "smaller than the longest training pair"),
        (["--average-last", "6"], "--keep-last must be at least --average-last"),
    ],
)
def test_bad_training_options_fail_in_one_line(toy_data, tmp_path, args, message):
    result = kdmt("train-teacher", "--data", toy_data, "--out", tmp_path / "t", "--max-steps", "2", *args)
    assert_fails(result, message)
    assert not (tmp_path / "t" / "checkpoint_last.safetensors").exists()


@pytest.mark.parametrize("args", [["--batch-tokens", "0"], ["--max-len-a", "-1"], ["--max-src-tokens", "0"]])
def test_bad_search_option_values_fail_in_one_line(toy_model, args):
    assert_fails(kdmt("translate", "-m", toy_model, *args, input="a b\n"), "must")


def test_options_that_do_not_go_together_fail_in_one_line_before_any_work(toy_data, toy_model, tmp_path):
    weights = ["--teacher-weight", "0.5", "--teacher-weight", "0.5"]  # two weights, one teacher
    result = kdmt("soft-targets", "-t", toy_model, "--data", toy_data, "-o", tmp_path / "soft.json", *weights)
    assert_fails(result, "give one --teacher-weight per teacher")
    student = ["--data", toy_data, "-o", tmp_path / "student", "-t", toy_model, "--alpha", "0.5", "--max-steps", "1"]
    result = kdmt("train-student", *student, "--selective-kd", "--valid-bleu-sents", "0")
    assert_fails(result, "--selective-kd compares validation BLEU: drop --valid-bleu-sents 0")
    assert list(tmp_path.iterdir()) == []
