"""A training run's directory: its checkpoints and metrics.jsonl. One process writes it (rank 0 under torchrun).

checkpoint_last.safetensors carries the training state that --resume continues from; checkpoint_best.safetensors
the model with the best validation; checkpoint_STEP.safetensors the last validations' models, for averaging
into checkpoint_avg.safetensors; metrics.jsonl one JSON line per logged step and per validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdmt.checkpoint import LEGACY_SUFFIX, SUFFIX, average_checkpoints
from kdmt.errors import KdmtError
from kdmt.files import write_lines

LAST, BEST, AVERAGE = f"checkpoint_last{SUFFIX}", f"checkpoint_best{SUFFIX}", f"checkpoint_avg{SUFFIX}"
LEGACY_LAST = Path(LAST).with_suffix(LEGACY_SUFFIX).name  # what an older kdmt wrote


def numbered(step: int | str) -> str:
    """The name of the checkpoint of the validation at `step` (or a glob of them: "[0-9]*")."""
    return f"checkpoint_{step}{SUFFIX}"


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A new run never overwrites an earlier one; a resumed run needs one, which an older kdmt's must
    first be converted into."""
    if (out_dir / LEGACY_LAST).is_file() and not (out_dir / LAST).exists():
        raise KdmtError(
            f"{out_dir} holds a run of an older kdmt: convert its checkpoints to continue it "
            f"(kdmt convert-checkpoint {out_dir}/*{LEGACY_SUFFIX}), or use another --out"
        )
    if resume and not (out_dir / LAST).is_file():
        raise KdmtError(f"nothing to resume: {out_dir / LAST} does not exist")
    if not resume and (out_dir / LAST).exists():
        raise KdmtError(f"{out_dir} already holds a training run: use --resume, or another --out")


def checkpoint_step(path: Path) -> int:
    """checkpoint_1200.safetensors -> 1200"""
    return int(path.stem.split("_")[1])


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    def open(self, resume: bool) -> None:
        """Check (see check_out_dir) and create the directory. A new run first drops what a run killed before
        its first checkpoint_last.safetensors wrote (metrics lines, numbered checkpoints)."""
        check_out_dir(self.path, resume)
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.forget_after(0)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def numbered_checkpoints(self) -> list[Path]:
        return sorted(self.path.glob(numbered("[0-9]*")), key=checkpoint_step)

    def keep_last(self, n: int) -> None:
        """Remove all numbered checkpoints but the last `n`."""
        for old in self.numbered_checkpoints()[:-n]:
            old.unlink()

    def forget_after(self, step: int) -> None:
        """Drop what a run wrote after `step` before it died: metrics lines and numbered checkpoints."""
        for path in self.numbered_checkpoints():
            if checkpoint_step(path) > step:
                path.unlink()
        metrics = self.path / "metrics.jsonl"
        if metrics.is_file():
            kept = []
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by the crash
            write_lines(metrics, kept)

    def average(self, n: int) -> list[Path]:
        """Average the last `n` numbered checkpoints into checkpoint_avg.safetensors; the checkpoints averaged."""
        paths = self.numbered_checkpoints()[-n:]
        average_checkpoints(paths, self.path / AVERAGE)
        return paths
