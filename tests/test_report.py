from kdmt.report import short_names


def test_models_are_named_below_their_common_folder():
    names = short_names(["w/run/teacher1/checkpoint_best.pt", "w/run/student-a/checkpoint_best.pt"])
    assert list(names.values()) == ["teacher1/checkpoint_best.pt", "student-a/checkpoint_best.pt"]
    assert short_names(["w/run/teacher/checkpoint_avg.pt"]) == {"w/run/teacher/checkpoint_avg.pt": "checkpoint_avg.pt"}
