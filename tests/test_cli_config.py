"""Configuration files: --config gives the run its flags would, the flags override it, --print-config writes
what --config reads back, a training run keeps its own; --resume takes the architecture from the checkpoint."""

import pytest
import torch
import yaml
from test_cli import assert_fails, kdmt

from kdmt.checkpoint import load_checkpoint
from kdmt.run_dir import LAST

TRAIN = ["--preset", "tiny", "--d-model", "32", "--max-tokens", "1500", "--warmup", "5", "--valid-interval", "2"]
TRAIN += ["--valid-bleu-sents", "0", "--log-interval", "1", "--seed", "3", "--device", "cpu", "--dropout", "0"]


def printed(*args) -> dict:
    result = kdmt(*args, "--print-config")
    assert result.exit_code == 0, result.stderr
    return yaml.safe_load(result.stdout)


def write_config(path, values: dict):
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def parameters(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def test_a_config_file_gives_the_run_of_the_same_flags(toy_data, tmp_path):
    flags = ["--data", toy_data, *TRAIN, "--max-steps", "2"]
    assert kdmt("train-teacher", *flags, "--out", tmp_path / "flags").exit_code == 0
    written = yaml.safe_load((tmp_path / "flags" / "config.yaml").read_text())
    assert written["max_steps"] == 2 and written["d_model"] == 32 and written["adam_betas"] == [0.9, 0.98]
    assert written["n_heads"] == 4 and written["preset"] == "tiny"  # the model as built: the preset's
    config = write_config(tmp_path / "run.yaml", written | {"out": str(tmp_path / "file")})
    result = kdmt("train-teacher", "--config", config)
    assert result.exit_code == 0, result.stderr
    again = yaml.safe_load((tmp_path / "file" / "config.yaml").read_text())
    assert again == written | {"out": str(tmp_path / "file")}
    a, b = parameters(tmp_path / "flags" / LAST), parameters(tmp_path / "file" / LAST)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "file" / LAST).train_state["step"] == 2


def test_a_flag_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paths are relative: nothing may appear here
    config = write_config(tmp_path / "c.yaml", {"data": "d", "out": "o", "max_steps": 2, "lr": 0.01, "max-time": "1h"})
    values = printed("train-student", "--config", config, "--max-steps", "7", "--teacher", "t.safetensors")
    assert values["max_steps"] == 7 and values["lr"] == 0.01 and values["max_time"] == "1h"
    assert values["teacher"] == ["t.safetensors"] and values["preset"] == "tiny"
    config = write_config(tmp_path / "d.yaml", {"src": "s", "out": "o", "teacher": "t.safetensors", "beam": 3})
    values = printed("distill", "--config", config, "--beam", "4")
    assert values["beam"] == 4 and values["teacher"] == ["t.safetensors"]  # one value of a repeated option
    config = write_config(tmp_path / "p.yaml", {"out": "o", "vocab_size": 99, "dedup": False})
    values = printed("prepare", "--config", config, "--vocab-size", "50")
    assert values["vocab_size"] == 50 and values["dedup"] is False and values["max_words"] == 250
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.yaml", "p.yaml"]


def test_an_unknown_key_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"data": "d", "out": "o", "max_step": 2, "beam": 5})
    result = kdmt("train-teacher", "--config", config, "--max-steps", "1")
    assert_fails(result, f"kdmt train-teacher: error: {config}: unknown options max_step, beam")
    (tmp_path / "bad.yaml").write_text("[1, 2]\n")
    assert_fails(kdmt("prepare", "--config", tmp_path / "bad.yaml", "-o", "o"), "not a mapping of options")
    assert_fails(kdmt("distill", "--config", tmp_path / "none.yaml"), "none.yaml: No such file", code=1)


ARGS = {
    "train-teacher": ["--data", "d", "-o", "o", "--adam-betas", "0.8", "0.9", "--max-time", "2h", "--fp32"],
    "train-student": ["--data", "d", "-o", "o", "-t", "a", "-t", "b", "--distilled", "x", "--alpha", "0.5"],
    "distill": ["--src", "s", "-o", "o", "-t", "t", "--max-len-a", "2.5", "--no-filter"],
    "prepare": ["-o", "o", "--pair", "de-en", "--pair", "fr-en", "--train", "t", "--vocab-size", "99"],
}


@pytest.mark.parametrize("command", ARGS)
def test_print_config_round_trips(command, tmp_path):
    first = kdmt(command, *ARGS[command], "--print-config")
    assert first.exit_code == 0, first.stderr
    config = tmp_path / "c.yaml"
    config.write_text(first.stdout)
    second = kdmt(command, "--config", config, "--print-config")
    assert second.exit_code == 0, second.stderr
    assert second.stdout == first.stdout
    assert "config" not in yaml.safe_load(first.stdout) and "print_config" not in yaml.safe_load(first.stdout)


def test_resume_takes_the_architecture_from_the_checkpoint(toy_data, tmp_path):
    out = tmp_path / "run"
    assert kdmt("train-teacher", "--data", toy_data, "--out", out, *TRAIN, "--max-steps", "2").exit_code == 0
    common = ["--data", toy_data, "--out", out, "--resume", "--max-steps", "4", "--device", "cpu"]
    assert_fails(
        kdmt("train-teacher", *common, "--d-model", "64"),
        "kdmt train-teacher: error: the run to resume has another model: --d-model 64 (the checkpoint's: 32)",
    )
    assert_fails(kdmt("train-teacher", *common, "--preset", "small"), "--preset small (the checkpoint's: tiny)")
    in_a_file = write_config(tmp_path / "c.yaml", {"n_heads": 2})  # a file's option is given too
    assert_fails(kdmt("train-teacher", *common, "--config", in_a_file), "--n-heads 2 (the checkpoint's: 4)")
    assert load_checkpoint(out / LAST).train_state["step"] == 2
    settings = ["--max-tokens", "1500", "--warmup", "5", "--valid-interval", "2", "--valid-bleu-sents", "0"]
    result = kdmt("train-teacher", *common, *settings, "--seed", "3")  # no architecture option: the checkpoint's
    assert result.exit_code == 0, result.stderr
    resumed = load_checkpoint(out / LAST)
    assert resumed.train_state["step"] == 4 and resumed.model.config.d_model == 32
    assert resumed.meta["preset"] == "tiny"
    nulls = write_config(tmp_path / "nulls.yaml", {"d_model": None, "dropout": None})  # null: not given
    result = kdmt("train-teacher", *common, *settings, "--seed", "3", "--config", nulls, "--max-steps", "5")
    assert result.exit_code == 0, result.stderr
    result = kdmt("train-teacher", "--config", out / "config.yaml", "--max-steps", "6")  # the run's own file
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(out / LAST).train_state["step"] == 6


def test_an_option_given_as_text_is_read_by_its_field(tmp_path):
    """--max-time is text (30m, 2h) on the command line and in a file, seconds in TrainConfig."""
    args = ["train-teacher", "--data", tmp_path, "--out", tmp_path / "run"]
    assert_fails(kdmt(*args, "--max-time", "5x"), "cannot read the duration '5x' (examples: 90s, 30m, 2h)")
    assert_fails(kdmt(*args, "--max-time", "0m"), "kdmt train-teacher: error: --max-time must be positive")
    assert not (tmp_path / "run").exists()
