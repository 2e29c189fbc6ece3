"""A resumed training run reproduces the uninterrupted run exactly."""

import json

from toy import train_toy


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r}


def test_resumed_run_equals_uninterrupted_run(toy_data, tmp_path):
    # dropout on and an epoch boundary crossed after the resume: RNG state and data order both matter
    settings = dict(dropout=0.1, valid_interval=15, keep_last=2)
    train_toy(toy_data, tmp_path / "full", max_steps=40, **settings)
    train_toy(toy_data, tmp_path / "split", max_steps=25, **settings)
    _, result = train_toy(toy_data, tmp_path / "split", resume=True, max_steps=40, **settings)
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 41))
    assert [split[s] for s in range(26, 41)] == [full[s] for s in range(26, 41)]
    assert result["step"] == 40
    epoch = {r["step"]: r["epoch"] for r in records(tmp_path / "split") if "loss" in r}
    assert epoch[40] > epoch[25]
