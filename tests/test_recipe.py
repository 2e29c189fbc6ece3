"""The recipes, run through make at toy size: every stage, the report, and a re-run that redoes nothing (the
Multi30k chain; a pretrained teacher distilled); what the pivot and multilingual recipes plan (`make -n`)."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hf_models import marian

KDMT = Path(sys.executable).parent / "kdmt"


@pytest.mark.skipif(shutil.which("make") is None or not KDMT.exists(), reason="needs make and the kdmt script")
def test_recipe_runs_every_stage_and_resumes(tmp_path):
    def make() -> str:
        command = ["make", "-f", "recipes/multi30k-de-en/Makefile", "-j2", "SIZE=smoke", f"W={tmp_path}"]
        command.append(f"KDMT={KDMT}")
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    make()
    rows = json.loads((tmp_path / "report.json").read_text())
    names = [row["model"] for row in rows]
    students = ("baseline", "seqkd", "wordkd", "seq-wordkd", "deep-shallow", "teacher-init", "ensemble")
    expected = ["teacher1", "teacher2", "student-seq-wordkd-int8"] + [f"student-{s}" for s in students]
    assert sorted(names) == sorted(expected)
    assert all(row["beam"] == 5 and row["sentences_per_s_greedy"] > 0 for row in rows)
    assert (tmp_path / "report.png").exists()
    # A finished stage is not run again; a removed output is made again from what is there.
    (tmp_path / "report.json").unlink()
    assert kdmt_commands(make()) == ["report"]


def kdmt_commands(output: str) -> list[str]:
    """The kdmt subcommands that make ran, in order."""
    return [line.split(f"{KDMT} ")[1].split()[0] for line in output.splitlines() if f"{KDMT} " in line]


@pytest.mark.skipif(shutil.which("make") is None or not KDMT.exists(), reason="needs make and the kdmt script")
def test_the_pretrained_teacher_recipe_distills_a_marian_teacher_and_resumes(tmp_path):
    """recipes/pretrained-teacher at smoke size on a random MarianMT teacher whose sentencepiece model was
    trained on the same Multi30k lines: every stage runs, the word-KD student (on by default for a MarianMT
    directory) in the teacher's vocabulary; the report has the teacher and the students; a re-run does nothing."""
    pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    pairs = []
    for lang in ("de", "en"):
        with gzip.open(REPO / "data" / "multi30k" / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            pairs.append([next(f).rstrip("\n") for _ in range(300)])  # the recipe's training lines at smoke size
    teacher = marian(tmp_path, *pairs, joint=True, sizes=(400, 0), positions=256)
    work = tmp_path / "run"
    env = os.environ | {"KDMT_CACHE": str(tmp_path / "cache")}

    def make() -> str:
        command = ["make", "-f", "recipes/pretrained-teacher/Makefile", "-j2", "SIZE=smoke", f"TEACHER={teacher}"]
        command += [f"W={work}", f"KDMT={KDMT}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    ran = kdmt_commands(make())
    expected = ["prepare"] * 2 + ["distill", "soft-targets"] + ["train-student"] * 3 + ["eval"] * 4 + ["report"]
    assert sorted(ran) == sorted(expected)
    assert json.loads((work / "data-teacher" / "prepare.json").read_text())["vocab_from"]
    rows = {row["model"]: row for row in json.loads((work / "report.json").read_text())}
    assert sorted(rows) == ["student-baseline", "student-seq-wordkd", "student-seqkd", "teacher"]
    assert rows["teacher"]["made_with"].startswith("teacher (pretrained marian, through ctranslate2")
    assert all(row["beam"] == 5 and row["sentences_per_s_greedy"] > 0 for row in rows.values())
    assert "bleu_vs_baseline" in rows["student-seq-wordkd"] and "bleu_vs_teacher" in rows["student-seqkd"]
    assert kdmt_commands(make()) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_pretrained_teacher_recipe_gives_a_many_to_many_teacher_its_codes_and_no_word_kd(tmp_path):
    """recipes/pretrained-teacher with an M2M100 directory: no prepare --vocab-from and no word-KD student (not
    a MarianMT directory); SRC_LANG/TGT_LANG go to the teacher's distill and eval, not to the students'."""
    teacher = tmp_path / "m2m"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "m2m_100"}))
    (tmp_path / "teacher").symlink_to(teacher)  # what the recipe's first stage makes
    command = ["make", "-n", "-f", "recipes/pretrained-teacher/Makefile", "SIZE=cpu", f"W={tmp_path}", "KDMT=kdmt"]
    command += [f"TEACHER={teacher}", "SRC_LANG=deu_Latn", "TGT_LANG=eng_Latn"]
    planned = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    runs = [line for line in planned if line.startswith(("kdmt ", "OMP_NUM_THREADS=1 kdmt "))]
    assert not any("--vocab-from" in line or "soft-targets" in line or "wordkd" in line for line in runs)
    coded = [line.split("kdmt ")[1].split()[:2] for line in runs if "--src-lang deu_Latn --tgt-lang eng_Latn" in line]
    assert coded == [["distill", "-t"], ["eval", str(tmp_path / "teacher")], ["eval", str(tmp_path / "teacher")]]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_resumes_a_teacher_stopped_midway(tmp_path):
    """A teacher killed after its first validation has checkpoint_best.safetensors but no DONE: the next `make demo`
    resumes its training instead of distilling with a half-trained model."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepare.json").write_text("{}")
    (tmp_path / "teacher").mkdir()
    for name in ("checkpoint_best.safetensors", "checkpoint_last.safetensors"):
        (tmp_path / "teacher" / name).write_bytes(b"")
    command = ["make", "-n", "demo", f"DEMO={tmp_path}", f"KDMT={KDMT}"]
    planned = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    runs = [line for line in planned.splitlines() if f"{KDMT} " in line]
    assert runs[0].split(f"{KDMT} ")[1].startswith("train-teacher") and runs[0].endswith("--resume")
    assert any(f"{KDMT} distill" in line for line in runs[1:])


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_pivot_recipe_uses_no_english_of_the_students_half(tmp_path):
    """recipes/multi30k-pivot: the teacher's half and the student's are disjoint, and the English of the
    student's half (half-b/train.en) goes into the supervised upper bound alone."""
    command = ["make", "-n", "-f", "recipes/multi30k-pivot/Makefile", "SIZE=cpu", f"W={tmp_path}", "KDMT=kdmt"]
    planned = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    halves = {
        line.split("> ")[-1].split(".tmp")[0][len(str(tmp_path)) + 1 :]: line for line in planned if "zcat" in line
    }
    assert (
        "head -n 14500 >" in halves["half-a/train.de"]
        and "tail -n +$((14500 + 1)) | head -n 14500" in halves["half-b/train.fr"]
    )
    uses_b = [line for line in planned if "half-b/train" in line and "zcat" not in line]
    # its German distilled, its French copied beside that, the upper bound's prepare, pivot translation's fr→de
    assert len(uses_b) == 4
    assert sum(f"-o {tmp_path}/supervised-data" in line for line in uses_b) == 1
    assert "--src fr --tgt de" in next(line for line in uses_b if f"-o {tmp_path}/cascade-data" in line)
    assert sum(line.startswith("cp ") and line.split()[1].endswith("half-b/train.fr") for line in uses_b) == 1
    teacher = next(line for line in planned if "kdmt prepare --src de" in line)
    assert "half-a/train" in teacher and "half-b" not in teacher
    pivot = next(line for line in planned if f"-o {tmp_path}/pivot-data" in line)
    assert f"--train {tmp_path}/pivot/train --valid {tmp_path}/pivot/val" in pivot
    distilled = [line for line in planned if "kdmt distill" in line]
    assert sorted(line.split(" -o ")[1].split()[0] for line in distilled) == [
        f"{tmp_path}/pivot/{n}" for n in ("train.en", "val.en")
    ]
    assert all("half-b/train.de" in line or "val.de.gz" in line for line in distilled)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("steps", [420, 1260])
def test_the_multilingual_recipe_gives_each_student_its_pairs_budget(tmp_path, steps):
    """recipes/multi30k-multilingual at CPU size: a per-pair student trains STUDENT_STEPS, a multilingual one
    twice as many (as many tokens of each pair), and so does low-alone, which is compared with low-multi."""
    command = ["make", "-n", "-B", "-f", "recipes/multi30k-multilingual/Makefile", "SIZE=cpu", f"W={tmp_path}"]
    command += [f"STUDENT_STEPS={steps}"]
    planned = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    budgets = {}
    for line in planned:
        if "train-student" in line:
            words = line.split()
            name = Path(words[words.index("--out") + 1]).name
            budgets[name] = [int(words[i + 1]) for i, w in enumerate(words) if w == "--max-steps"]
    per_pair = [f"student-{p}-{s}" for p in ("de-en", "fr-en") for s in ("ref", "seqkd", "kd")]
    assert {name: budgets[name] for name in per_pair} == {name: [steps] for name in per_pair}
    multi = ["student-multi-seqkd", "student-multi-kd", "student-low-multi", "student-low-alone"]
    assert {name: budgets[name] for name in multi} == {name: [2 * steps] for name in multi}
