"""kdmt distill with any translation command as the teacher (--teacher-cmd), and the teacher's identity in
the distill manifest: a resume with another teacher is refused, the same one at another path resumes."""

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs

from kdmt.cache import tree_sha256
from kdmt.checkpoint import load_checkpoint, save_checkpoint
from kdmt.distill import DistillRun
from kdmt.errors import KdmtError
from kdmt.files import read_lines
from kdmt.shards import work_path
from kdmt.teacher_command import CommandTeacher

TEACHER = Path(__file__).parent / "upper_teacher.py"
# 4 shards of 3 lines: an empty source (not sent), a loop and an empty translation (both filtered)
SOURCES = ["a b c", "d e", "", "f g h", "a a a a", "i j", "silence", "k l m", "n o", "p q r"]
DISTILLED = ["A B C", "D E", "", "F G H", "", "I J", "", "K L M", "N O", "P Q R"]


def teacher_cmd(log: Path, *extra: str) -> str:
    return shlex.join([sys.executable, str(TEACHER), str(log), *extra])


def distill(src: Path, out: Path, command: str, *args):
    return kdmt("distill", "--teacher-cmd", command, "--src", src, "-o", out, "--shard-size", "3", *args)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_a_command_teacher_distills_and_a_failed_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    src, log = write(tmp_path / "train.src", SOURCES), tmp_path / "calls"
    command = teacher_cmd(log)
    full = tmp_path / "full.tgt"
    result = distill(src, full, command)
    assert result.exit_code == 0, result.stderr
    assert read_lines(full) == DISTILLED
    record = json.loads(Path(f"{full}.json").read_text())
    assert record["stats"]["empty"] == 1 and record["stats"]["too_long"] == 0
    assert record["stats"]["filtered"] == {"repeat": 1, "length_limit": 0, "ratio": 1}  # in words, no cut rule
    assert record["settings"]["teachers"] == [f"command:{command}"] and record["settings"]["engine"] == "command"
    assert calls(log) == ["2\ta b c", "3\tf g h", "3\tsilence", "1\tp q r"]  # once a shard, the empty line unsent

    resumed = tmp_path / "resumed.tgt"
    monkeypatch.setenv("TEACHER_FAIL_AT", "7")  # this run's third call: shard 3
    result = distill(src, resumed, command)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    *passed, error = result.stderr.strip().splitlines()
    assert passed == ["warming up", "out of credits"]  # the command's stderr passes through
    shard = "kdmt distill: error: shard 3 of 4 (lines 7-9)"
    assert error == f"{shard}: the teacher command {command!r} failed (exit 3): out of credits"
    work = work_path(resumed)
    assert sorted(p.name for p in (work / "done").iterdir()) == ["000000.json", "000001.json"]
    assert not (work / "000002.txt").exists() and not resumed.exists()
    monkeypatch.delenv("TEACHER_FAIL_AT")

    other = teacher_cmd(log, "--other")
    assert_fails(
        distill(src, resumed, other),
        f"{resumed} was started with another teacher: command:{command} (this run: command:{other}); "
        f"remove {work} or choose another --out",
    )
    result = distill(src, resumed, command)
    assert result.exit_code == 0, result.stderr
    assert resumed.read_bytes() == full.read_bytes()
    assert Path(f"{resumed}.json").read_bytes() == Path(f"{full}.json").read_bytes()
    assert calls(log)[4:] == ["2\ta b c", "3\tf g h", "3\tsilence", "3\tsilence", "1\tp q r"]  # 1, 2 not again


def test_a_command_that_drops_a_line_fails_naming_the_shard_and_records_nothing_of_it(tmp_path, monkeypatch):
    src, log, out = write(tmp_path / "train.src", SOURCES), tmp_path / "calls", tmp_path / "out.tgt"
    command = teacher_cmd(log)
    monkeypatch.setenv("TEACHER_DROP_AT", "2")
    assert_fails(
        distill(src, out, command),
        f"error: shard 2 of 4 (lines 4-6): the teacher command {command!r} wrote 2 lines for 3 sources",
    )
    work = work_path(out)
    assert [p.name for p in (work / "done").iterdir()] == ["000000.json"] and not (work / "000001.txt").exists()
    monkeypatch.delenv("TEACHER_DROP_AT")
    assert distill(src, out, command).exit_code == 0 and read_lines(out) == DISTILLED


def translate(command: str, lines: list[str]) -> list[str]:
    return [c[0].text if c else "" for c in CommandTeacher(command).translate_nbest(lines)]


def test_the_command_runs_through_the_shell_and_its_failures_are_one_line():
    assert translate("tr a-z A-Z | cat", ["ab", " ", "", "c d"]) == ["AB", "", "", "C D"]
    assert translate("false", ["", " "]) == ["", ""]  # nothing to translate: not run
    candidate = CommandTeacher("cat").translate_nbest(["一个女孩 runs"])[0][0]
    assert candidate.score is None and candidate.length == 5  # words: a character of Chinese is one
    for command, error in [
        ("cat; echo extra", "'cat; echo extra' wrote 3 lines for 2 sources"),
        ("head -n 1", "wrote 1 lines for 2 sources"),
        ("cat >/dev/null; echo no such model >&2; exit 4", "failed (exit 4): no such model"),
        ("kill -9 $$", "was killed by signal 9"),
        ("printf 'a\\n\\377\\n'", "wrote invalid UTF-8 (line 2 of its output)"),
        ("no-such-program-here", "failed (exit 127)"),
    ]:
        with pytest.raises(KdmtError, match=error.replace("(", r"\(").replace(")", r"\)")):
            translate(command, ["a", "b"])
    assert translate("printf 'A\\r\\nB'", ["a", "b"]) == ["A", "B"]  # CR LF, no last newline


def test_the_options_a_command_teacher_does_not_take_are_refused(tmp_path):
    src, out = write(tmp_path / "train.src", ["a"]), tmp_path / "o"
    assert_fails(kdmt("distill", "--src", src, "-o", out), "-t CHECKPOINT (repeat for an ensemble) or --teacher-cmd")
    assert_fails(kdmt("distill", "-t", src, "--teacher-cmd", "cat", "--src", src, "-o", out), "one of them")
    assert_fails(distill(src, out, "cat", "--beam", "3"), "--beam is an option of kdmt's engines")
    assert_fails(distill(src, out, "cat", "--fp32"), "--bf16/--fp32 is an option of kdmt's engines")
    assert_fails(distill(src, out, "cat", "--nbest", "2"), "no --candidates or --select")
    assert_fails(distill(src, out, "cat", "--select", "seq-inter", "--ref", src), "no --candidates or --select")
    assert distill(src, out, "cat", "--no-filter").exit_code == 0 and read_lines(out) == ["a"]


class Killed(Exception):
    pass


def test_a_checkpoint_teacher_is_known_by_its_content_not_its_path(toy_model, tmp_path, monkeypatch):
    src = write(tmp_path / "train.src", toy_pairs(12, seed=31)[0])

    def distill_with(teacher: Path, out: Path):
        return kdmt("distill", "-t", teacher, "--src", src, "-o", out, "--beam", "2", "--shard-size", "4")

    full, out = tmp_path / "full.tgt", tmp_path / "out.tgt"
    assert distill_with(toy_model, full).exit_code == 0
    translate_shard, shards = DistillRun.translate_shard, []

    def killed_at_the_second(self, index, *args):
        shards.append(index)
        if len(shards) == 2:
            raise Killed
        return translate_shard(self, index, *args)

    monkeypatch.setattr(DistillRun, "translate_shard", killed_at_the_second)
    assert isinstance(distill_with(toy_model, out).exception, Killed)
    monkeypatch.undo()

    other = load_checkpoint(toy_model)
    other.meta = {**other.meta, "note": "another teacher"}
    save_checkpoint(tmp_path / "other.safetensors", other)
    assert_fails(distill_with(tmp_path / "other.safetensors", out), f"{out} was started with another teacher: sha256:")
    copy = tmp_path / "elsewhere" / "teacher.safetensors"
    copy.parent.mkdir()
    shutil.copy(toy_model, copy)
    assert distill_with(copy, out).exit_code == 0  # the same content at another path resumes
    assert out.read_bytes() == full.read_bytes()
    assert Path(f"{out}.json").read_bytes() == Path(f"{full}.json").read_bytes()  # no path recorded


def test_a_directory_is_known_by_its_files_paths_and_contents(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    write(model / "config.json", ["{}"])
    write(model / "sub" / "weights.bin", ["w"])
    key = tree_sha256(model)
    shutil.copytree(model, tmp_path / "copy")
    write(tmp_path / "copy" / ".cache", ["a download's timestamp"])  # hidden: not part of the model
    assert tree_sha256(tmp_path / "copy") == key
    write(model / "sub" / "weights.bin", ["v"])
    assert tree_sha256(model) != key
    write(model / "sub" / "weights.bin", ["w"])
    (model / "sub" / "weights.bin").rename(model / "weights.bin")
    assert tree_sha256(model) != key
