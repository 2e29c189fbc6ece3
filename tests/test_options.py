"""The range of every numeric option: declared with the option, checked before any command starts."""

import math
import typing

import pytest
import typer
from test_cli import assert_fails, kdmt

from kdmt.cli import app
from kdmt.cli.app import COMMANDS as FUNCTIONS
from kdmt.errors import KdmtError
from kdmt.options import Range, check_ranges

COMMANDS = typer.main.get_command(app).commands
RANGES = {fn.command_name: fn.ranges for fn in FUNCTIONS}  # each command's, as kdmt.cli.common.command checks them
ALL_RANGES = {name: r for ranges in RANGES.values() for name, r in ranges.items()}


def number_kind(param) -> type | None:
    """int or float for a numeric parameter (or a list or tuple of numbers), None for any other."""
    kind = param.type_descriptor.annotation
    kinds = set(typing.get_args(kind)) if typing.get_origin(kind) in (list, tuple) else {kind}
    return kinds.pop() if len(kinds) == 1 and kinds <= {int, float} else None


NUMERIC = [(name, p) for name, command in COMMANDS.items() for p in command.params if number_kind(p)]


def ends(r: Range) -> list[tuple[int | float, bool, int]]:
    """Each end of a range: its value, whether it is open, and the direction out of the range."""
    return [(r.lo, r.lo_open, -1)] + ([] if r.hi is None else [(r.hi, r.hi_open, 1)])


def nudge(r: Range, value: int | float, direction: int) -> int | float:
    """The next value of the range's kind after `value`, upwards (1) or downwards (-1)."""
    return value + direction if r.kind is int else math.nextafter(value, direction * math.inf)


def outside(r: Range) -> list[int | float]:
    """The values just outside each end of a range."""
    return [end if is_open else nudge(r, end, out) for end, is_open, out in ends(r)]


def inside(r: Range) -> list[int | float]:
    """The values just inside each end of a range."""
    return [nudge(r, end, -out) if is_open else end for end, is_open, out in ends(r)]


def required_args(command) -> list[str]:
    """Placeholder values for a command's required parameters: the range check comes before they are read."""
    args = []
    for p in command.params:
        if p.required:
            args += ["x"] if p.param_type_name == "argument" else [p.opts[0], "x"]
    return args


def test_every_numeric_option_has_a_range_of_its_kind():
    assert len({p.name for _, p in NUMERIC}) > 40  # the walk finds the options
    missing = sorted(f"{name} {p.opts[0]}" for name, p in NUMERIC if p.name not in RANGES[name])
    assert not missing, f"numeric options without a range (in their field or annotation): {missing}"
    for name, p in NUMERIC:
        assert RANGES[name][p.name].kind is number_kind(p), (name, p.name)
    for name, command in COMMANDS.items():
        assert set(RANGES[name]) <= {p.name for p in command.params}, f"{name}: a range for no option"
    for ranges in RANGES.values():
        for option, r in ranges.items():
            assert r == ALL_RANGES[option], f"{option}: two ranges"


@pytest.mark.parametrize("command, param", NUMERIC, ids=[f"{n} {p.opts[0]}" for n, p in NUMERIC])
def test_a_value_just_outside_the_range_fails_before_any_work(command, param, tmp_path, monkeypatch):
    allowed = RANGES[command][param.name]
    for value in inside(allowed):
        check_ranges({param.name: value}, RANGES[command])
    monkeypatch.chdir(tmp_path)  # the placeholders are relative paths: nothing may appear here
    valid = inside(allowed)[0]
    for value in outside(allowed):
        given = [repr(value)] + [repr(valid)] * (param.nargs - 1)  # a tuple: its first element out of range
        result = kdmt(command, *required_args(COMMANDS[command]), param.opts[0], *given)
        assert_fails(result, f"kdmt {command}: error: {param.opts[0]} must be {allowed}, not {value}")
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_float_option_must_be_finite(value):
    with pytest.raises(KdmtError, match=f"--lr must be above 0, not {value}"):
        check_ranges({"lr": float(value)}, ALL_RANGES)


def test_each_value_of_a_repeated_option_is_checked():
    check_ranges({"teacher_weight": [0.5, 0.0], "adam_betas": (0.9, 0.98), "max_steps": None}, ALL_RANGES)
    with pytest.raises(KdmtError, match=r"--teacher-weight must be at least 0, not -1.0"):
        check_ranges({"teacher_weight": [0.5, -1.0]}, ALL_RANGES)


def test_the_ranges_of_the_issue_fail_in_one_line(toy_data, tmp_path):
    """Issue 19: --dropout 2 ended in nn.Dropout's traceback, --enc-layers 0 and --topk 0 were accepted."""
    common = ["--data", toy_data, "--out", tmp_path / "run", "--max-steps", "1"]
    assert_fails(
        kdmt("train-teacher", *common, "--dropout", "2"),
        "kdmt train-teacher: error: --dropout must be in [0, 1), not 2.0",
    )
    assert_fails(
        kdmt("train-student", *common, "--enc-layers", "0"),
        "kdmt train-student: error: --enc-layers must be at least 1, not 0",
    )
    assert_fails(
        kdmt("train-student", *common, "--topk", "0"), "kdmt train-student: error: --topk must be at least 1, not 0"
    )
    assert not (tmp_path / "run").exists()


def test_a_check_relating_two_options_stays_with_its_command(tmp_path):
    args = ["distill", "-t", tmp_path / "teacher.safetensors", "--src", tmp_path / "src", "-o", tmp_path / "out"]
    assert_fails(
        kdmt(*args, "--beam", "2", "--nbest", "3"), "--candidates must be at most --beam (2) without --sampling"
    )
    assert list(tmp_path.iterdir()) == []
