from kdmt.report import compare_with_teacher, short_names


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
    rows = [
        {"model": "s", "made_with": "student (tiny preset); references", "bleu": 30.0, "sentences_per_s_beam": 300.0},
        {"model": "t1", "made_with": "teacher (small preset)", "bleu": 33.5, "sentences_per_s_beam": 100.0},
        {"model": "t2", "made_with": "teacher (small preset)", "bleu": 34.0, "sentences_per_s_beam": 90.0},
    ]
    assert compare_with_teacher(rows) == "t1"
    assert [(r["bleu_vs_teacher"], r["speedup_vs_teacher"]) for r in rows] == [(-3.5, 3.0), (0.0, 1.0), (0.5, 0.9)]
    assert compare_with_teacher([rows[0]]) is None
