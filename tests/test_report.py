"""kdmt report: models named by their paths, each compared with the teacher and the baseline, with sacrebleu's
paired bootstrap test."""

import json

from test_cli import assert_fails, kdmt
from test_evaluate import hand_made_systems

from kdmt.evaluate import short_names
from kdmt.files import write_text
from kdmt.metrics import score
from kdmt.report import build_rows, compare_with_teacher


def test_models_are_named_below_their_common_folder():
    names = short_names(["w/run/teacher1/checkpoint_best.safetensors", "w/run/student-a/checkpoint_best.safetensors"])
    assert list(names.values()) == ["teacher1", "student-a"]
    t_best, t_avg = "w/run/t/checkpoint_best.safetensors", "w/run/t/checkpoint_avg.safetensors"
    s_avg = "w/run/s/checkpoint_avg.safetensors"
    names = short_names([t_best, t_avg, s_avg])
    assert list(names.values()) == [t_best[6:], t_avg[6:], s_avg[6:]]  # below w/run/
    s_best = "w/run/s/checkpoint_best.safetensors"
    names = short_names([t_best, s_best, "w/run/s-int8"])
    assert names == {t_best: "t", s_best: "s", "w/run/s-int8": "s-int8"}
    assert short_names([t_avg] * 2) == {t_avg: t_avg}


def test_students_are_compared_with_the_first_teacher():
    student = {"made_with": "student (tiny preset); references", "role": "student"}
    teacher = {"made_with": "teacher (small preset)", "role": "teacher"}
    rows = [
        {"model": "s", **student, "bleu": 30.0, "chrf": 50.0, "sentences_per_s_beam": 300.0, "hyps": None},
        {"model": "t1", **teacher, "bleu": 33.5, "chrf": 52.0, "sentences_per_s_beam": 100.0, "hyps": None},
        {"model": "t2", **teacher, "bleu": 34.0, "chrf": 53.0, "sentences_per_s_beam": 90.0, "hyps": None},
    ]
    assert compare_with_teacher(rows) == "t1"
    assert [(r["bleu_vs_teacher"], r["speedup_vs_teacher"]) for r in rows] == [(-3.5, 3.0), (0.0, 1.0), (0.5, 0.9)]
    assert compare_with_teacher([rows[0]]) is None


def eval_entry(model: str, role: str, hyps: list[str], refs: list[str], speed: float, beam: int = 5) -> dict:
    """One report of kdmt eval, scored on the translations it holds."""
    s = score(hyps, refs)
    return {
        "checkpoint": f"w/{model}/checkpoint_best.safetensors",
        "test_src": "w/test.de",
        "beam": beam,
        "bleu": round(s.bleu, 2),
        "chrf": round(s.chrf, 2),
        "chrfpp": round(s.chrfpp, 2),
        "sentences_per_s": speed,
        "parameters": 10,
        "size_bytes": 2**20,
        "device": "cpu",
        "made_with": {"role": role, "preset": "tiny"},
        "tgt_lang": None,
        "hyps": hyps,
        "refs": refs,
    }


def test_roles_come_from_the_reports_data_and_old_reports_from_their_records():
    refs, systems = hand_made_systems(20)
    old = eval_entry("t-old", "teacher", systems["a"], refs, 100.0)  # no "role": its checkpoint's record says
    new = eval_entry("t-new", "model", systems["a"], refs, 90.0) | {"role": "teacher"}  # made elsewhere
    student = eval_entry("s", "teacher", refs, refs, 50.0) | {"role": "student"}  # the field, not the record
    rows = build_rows([student, new, old])
    assert [row["role"] for row in rows] == ["student", "teacher", "teacher"]
    assert rows[1]["made_with"].startswith("model")  # the description is not what names a teacher
    assert compare_with_teacher(rows, samples=0) == "t-new"
    assert rows[0]["bleu_vs_teacher"] == round(rows[0]["bleu"] - rows[1]["bleu"], 2) > 0


def test_report_tests_every_difference_against_the_teacher_and_the_baseline(tmp_path):
    refs, systems = hand_made_systems()
    models = [("teacher", "teacher", "a"), ("base", "student", "worse"), ("kd", "student", "close")]
    models.append(("kd-again", "student", "same"))  # the teacher's translations
    entries = [eval_entry(name, role, systems[hyps], refs, 100.0 + i) for i, (name, role, hyps) in enumerate(models)]
    write_text(tmp_path / "eval.json", json.dumps(entries))
    args = ["report", tmp_path / "eval.json", "-o", tmp_path / "r", "--markdown", "--bootstrap-samples", "200"]
    result = kdmt(*args, "--baseline", "base")
    assert result.exit_code == 0, result.stderr
    rows = {row["model"]: row for row in json.loads((tmp_path / "r" / "report.json").read_text())}
    assert not any(key in row for row in rows.values() for key in ("hyps", "refs"))  # the report stays small
    assert "vs_teacher" not in rows["teacher"] and "vs_baseline" not in rows["teacher"]
    assert rows["base"]["vs_teacher"]["model"] == "teacher" and rows["base"]["vs_teacher"]["samples"] == 200
    assert rows["base"]["vs_teacher"]["bleu"]["significant"] and rows["base"]["vs_teacher"]["chrf"]["significant"]
    assert rows["kd"]["vs_baseline"]["bleu"]["delta"] > 10 and rows["kd"]["vs_baseline"]["bleu"]["significant"]
    same = rows["kd-again"]["vs_teacher"]["bleu"]
    assert (same["delta"], same["delta_ci"], same["p_value"], same["significant"]) == (0, 0, 1, False)
    assert "vs_baseline" not in rows["base"]
    table = {line.split(" | ")[0][2:]: line for line in result.stdout.splitlines()[2:]}
    assert "| ΔBLEU vs base | ΔchrF vs base |" in result.stdout.splitlines()[0]
    assert "p=0.0050\\*" in table["base"] and "+0.00 ±0.00 p=1.0000 |" in table["kd-again"]  # marked: significant
    assert "* p < 0.05: significant; without: not significant" in result.stderr
    assert_fails(
        kdmt(*args, "--baseline", "nobody"),
        "--baseline nobody: no model of that name in the reports (they have teacher, base,",
    )
    entries[1]["bleu"] += 1  # not the score of its translations (BLEU tokenized otherwise)
    write_text(tmp_path / "eval.json", json.dumps(entries))
    assert_fails(kdmt(*args), "base: its translations score 36.36 BLEU, its report 37.36")


def test_no_test_without_translations_of_the_same_references(tmp_path):
    refs, systems = hand_made_systems(20)
    entries = [
        eval_entry("teacher", "teacher", systems["a"], refs, 100.0),
        eval_entry("s", "student", refs, refs, 50.0),
    ]
    for entry in entries:
        for key in ("hyps", "refs", "tgt_lang", "chrfpp"):
            del entry[key]
    write_text(tmp_path / "old.json", json.dumps(entries))
    result = kdmt("report", tmp_path / "old.json", "-o", tmp_path, "--markdown")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "report.json").read_text())
    assert rows[1]["bleu_vs_teacher"] == round(100 - rows[0]["bleu"], 2)
    assert rows[1]["vs_teacher"] is None and "vs_teacher" not in rows[0]
    assert "no paired test against the teacher for s: --bootstrap-samples 0, or no translations" in result.stderr
    other_refs = [line.upper() for line in refs]  # another test set's
    entries = [eval_entry("teacher", "teacher", refs, refs, 100.0), eval_entry("s", "student", refs, other_refs, 50.0)]
    write_text(tmp_path / "new.json", json.dumps(entries))
    result = kdmt("report", tmp_path / "new.json", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "report.json").read_text())[1]["vs_teacher"] is None
    assert "no paired test against the teacher for s: " in result.stderr
    entries[1]["hyps"].pop()  # a line short
    write_text(tmp_path / "new.json", json.dumps(entries))
    assert_fails(
        kdmt("report", tmp_path / "new.json", "-o", tmp_path),
        "translations and references are not two lists of as many lines",
    )
