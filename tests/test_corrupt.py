"""Every file kdmt reads, damaged (one byte flipped in its middle, cut to half, replaced by a PNG or by a
directory), read by the command that reads it: one line naming the file, exit 2, and nothing written or
changed; or, for a cache kdmt makes from text (the tokenized corpus), the cache made again, as it was
(where a directory took its place, kdmt refuses to remove it)."""

import json
import shutil
from pathlib import Path

import pytest
from test_cli import assert_fails, kdmt, write
from toy import toy_pairs

from kdmt.shards import ShardedRun, work_path

DAMAGES = ("flip", "truncate", "png", "directory")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    path.unlink()
    if how == "directory":
        path.mkdir()
        (path / "x").write_bytes(data)
    else:
        flipped = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
        path.write_bytes({"flip": flipped, "truncate": data[:middle], "png": PNG}[how])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under `root`, but lock files (made by any reader)."""
    entries = (p for p in sorted(root.rglob("*")) if p.name != "lock" and p.suffix != ".lock")
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in entries}


@pytest.fixture(scope="module")
def work(toy_data, toy_model, tmp_path_factory) -> Path:
    """What each kind of file comes from, made once: a prepared directory, soft targets over its training
    corpus, a CTranslate2 export and an unfinished distillation (every shard done, none assembled)."""
    root = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(toy_data, root / "data", ignore=shutil.ignore_patterns("student-*", "*.lock"))
    soft = ["soft-targets", "-t", toy_model, "--data", root / "data", "-o", root / "soft" / "soft.json", "--topk", "2"]
    made = [kdmt(*soft), kdmt("export", toy_model, "-o", root / "ct2")]
    write(root / "src.txt", toy_pairs(12, seed=31)[0])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardedRun, "finish", lambda self, assemble: False)
        made.append(kdmt(*distill_args(toy_model, root, root / "distill" / "out.tgt")))
    assert [r.exit_code for r in made] == [0, 0, 0], [r.stderr for r in made]
    assert len(list((work_path(root / "distill" / "out.tgt") / "done").iterdir())) == 3
    return root


def distill_args(toy_model: Path, root: Path, out: Path) -> list:
    return ["distill", "-t", toy_model, "--src", root / "src.txt", "-o", out, "--beam", "1", "--shard-size", "4"]


def teacher(work: Path, toy_model: Path, home: Path, tmp_path: Path) -> list:
    return ["train-teacher", "--data", home, "--out", tmp_path / "run", "--preset", "tiny", "--max-steps", "1"]


def student(work: Path, toy_model: Path, home: Path, tmp_path: Path) -> list:
    args = ["train-student", "--data", work / "data", "--out", tmp_path / "run", "--preset", "tiny"]
    return args + ["--max-steps", "1", "--alpha", "1", "--soft-targets", home / "soft.json"]


def translate(work: Path, toy_model: Path, home: Path, tmp_path: Path) -> list:
    return ["translate", "-m", home, "--beam", "1"]


def distill(work: Path, toy_model: Path, home: Path, tmp_path: Path) -> list:
    return distill_args(toy_model, work, home / "out.tgt")


# (the directory copied from `work`, the file damaged in it, the command that reads it, whether kdmt
# makes the file again from text)
KINDS = {
    "prepare.json": ("data", "prepare.json", teacher, False),
    "sentencepiece model": ("data", "spm.model", teacher, False),
    "corpus ids": ("data", "train.src.ids.npy", teacher, True),
    "corpus offsets": ("data", "train.tgt.off.npy", teacher, True),
    "corpus record": ("data", "train.ids.json", teacher, True),
    "soft-targets record": ("soft", "soft.json", student, False),
    "soft-target ids": ("soft", "soft.ids.npy", student, False),
    "soft-target log-probs": ("soft", "soft.logp.npy", student, False),
    "soft-target offsets": ("soft", "soft.offsets.npy", student, False),
    "shard manifest": ("distill", ".kdmt-work/out.tgt.shards/manifest.json", distill, False),
    "shard record": ("distill", ".kdmt-work/out.tgt.shards/done/000001.json", distill, False),
    "shard output": ("distill", ".kdmt-work/out.tgt.shards/000001.txt", distill, False),
    "export record": ("ct2", "kdmt_export.json", translate, False),
}
# A sentencepiece model with a byte flipped may still be a valid model: kdmt takes it as a new one, as it
# takes edited text (the tokenized corpus is keyed on both, and made again: test_prepare).
HOMES = [("data", teacher), ("soft", student), ("distill", distill), ("ct2", translate)]
CASES = [(kind, how) for kind in KINDS for how in DAMAGES if (kind, how) != ("sentencepiece model", "flip")]


@pytest.mark.parametrize("name, command", HOMES)
def test_the_files_undamaged_are_read(work, toy_model, tmp_path, name, command):
    """The control: each command succeeds on the copies, so the failures below are the damage's."""
    shutil.copytree(work / name, tmp_path / name, symlinks=True)
    result = kdmt(*command(work, toy_model, tmp_path / name, tmp_path), input="a b c\n")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("kind, how", CASES)
def test_a_damaged_file_is_refused_in_one_line_or_made_again(work, toy_model, tmp_path, kind, how):
    name, file, command, derived = KINDS[kind]
    home = tmp_path / name
    shutil.copytree(work / name, home, symlinks=True)
    pristine = snapshot(home)
    damage(home / file, how)
    damaged = snapshot(home)
    result = kdmt(*command(work, toy_model, home, tmp_path), input="a b c\n")
    if derived and how != "directory":  # the cache is made again, exactly as prepare made it
        assert result.exit_code == 0, result.stderr
        assert snapshot(home) == pristine
        return
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and Path(file).name in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert snapshot(home) == damaged and not (tmp_path / "run").exists()


def test_soft_targets_of_an_older_kdmt_are_refused_until_made_again(work, toy_model, tmp_path):
    home = tmp_path / "soft"
    shutil.copytree(work / "soft", home)
    record = json.loads((home / "soft.json").read_text())
    older = {k: v for k, v in record.items() if k not in ("sha256", "sha256_arrays")}
    older["format"] = "kdmt-soft-targets-2"
    (home / "soft.json").write_text(json.dumps(older))
    assert_fails(kdmt(*student(work, toy_model, home, tmp_path)), "older kdmt (kdmt-soft-targets-2)")
    soft = ["soft-targets", "-t", toy_model, "--data", work / "data", "-o", home / "soft.json", "--topk", "2"]
    assert kdmt(*soft).exit_code == 0  # as the message says: made again, not taken as finished
    assert snapshot(home) == snapshot(work / "soft")
