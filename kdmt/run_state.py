"""The state of a training run: where it stands, its checkpoints, and the exact resume from them.

checkpoint_last.safetensors holds what --resume needs to continue as if the run had never stopped: the
optimizer and objective, the step, the position in the data order, early stopping's counts, the random
states (of every rank, under torchrun) and the training time. Rank 0 writes the checkpoints; on --resume
every process reads the file itself, and what passes between processes is decisions alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from torch import Tensor, nn

from kdmt import distributed
from kdmt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kdmt.data import TokenizedCorpus
from kdmt.errors import KdmtError
from kdmt.progress import format_duration
from kdmt.run_dir import AVERAGE, BEST, LAST, RunDir, numbered
from kdmt.vocab import check_vocabularies

if TYPE_CHECKING:
    from kdmt.train import TrainConfig

# Settings that a resumed run may change without breaking its exact continuation: its bounds.
FREE_ON_RESUME = ("max_steps", "epochs", "max_time", "patience", "keep_last", "average_last", "log_interval")


@dataclass
class RunState:
    """Where a run stands."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the epoch's plan taken
    best: float | None = None  # the best validation metric (kdmt.validation.metric)
    bad_validations: int = 0  # validations in a row without improvement
    validated_at: int | None = None  # the step of the last validation
    elapsed: float = 0.0  # seconds of training before this run started (resumed runs)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's random state (dropout) when several processes train, started or resumed at `step`."""
    return (seed * 1_000_003 + step) * 4096 + rank


def rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """This process's random state (dropout)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_cuda_rng(state: torch.Tensor | list[torch.Tensor] | None, device: torch.device) -> None:
    """Set the training GPU's random state from a checkpoint; nothing to do on the CPU. Older checkpoints
    hold one state per visible GPU: the one of this device's index is used when it exists."""
    if device.type != "cuda" or state is None:
        return
    if isinstance(state, list):
        index = device.index or 0
        if index >= len(state):
            return
        state = state[index]
    torch.cuda.set_rng_state(state, device)


def restore_rng(s: dict[str, Any], seed: int, device: torch.device) -> None:
    """This process's random state from a training state: exactly, with the number of processes that saved
    it; seeded anew at its step with another."""
    n, rank = s.get("world_size", 1), distributed.rank()
    if n != distributed.world_size():
        torch.manual_seed(rank_seed(seed, rank, s["step"]))
    elif n == 1:
        torch.set_rng_state(s["rng_cpu"])
        restore_cuda_rng(s.get("rng_cuda"), device)
    else:
        torch.set_rng_state(s["rng_ranks"][rank]["cpu"])
        restore_cuda_rng(s["rng_ranks"][rank]["cuda"], device)


class Checkpointer:
    """Writes the checkpoints of `trained` (its model, vocabularies and meta) into `run_dir` with the
    training state of `objective` and `optimizer` on `corpus`, and reads the last back on --resume."""

    def __init__(
        self,
        run_dir: RunDir,
        trained: Checkpoint,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        corpus: TokenizedCorpus,
        config: TrainConfig,
        device: torch.device,
        console: Console,
    ):
        self.run_dir, self.trained, self.objective, self.optimizer = run_dir, trained, objective, optimizer
        self.corpus, self.config, self.device, self.console = corpus, config, device, console
        self.world_size, self.main = distributed.world_size(), distributed.is_main()

    # --- writing ------------------------------------------------------------------------------
    def train_state(self, state: RunState, elapsed: float) -> dict[str, Any] | None:
        """What --resume needs, on rank 0 (None on the others); every rank calls it: it gathers the random
        states of all (rng_cpu and rng_cuda are rank 0's, rng_ranks every rank's when there are several)."""
        rng = distributed.all_gather(rng_state(self.device))
        if not self.main:
            return None
        return {
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "best": state.best,
            "bad_validations": state.bad_validations,
            "validated_at": state.validated_at,
            "elapsed_s": elapsed,
            "corpus": self.corpus.fingerprint(),
            "rng_cpu": rng[0]["cpu"],
            "rng_cuda": rng[0]["cuda"],
            "world_size": self.world_size,
            **({"rng_ranks": rng} if self.world_size > 1 else {}),
        }

    def save(self, name: str, state: RunState, train_state: dict[str, Any] | None = None) -> None:
        """Write checkpoint `name` (rank 0), with the `train_state` if given."""
        meta = {**self.trained.meta, "step": state.step, "epoch": state.epoch, "best_valid": state.best}
        save_checkpoint(self.run_dir.path / name, replace(self.trained, meta=meta, train_state=train_state))

    def save_validated(self, state: RunState, improved: bool, train_state: dict[str, Any]) -> None:
        """After a validation (rank 0): the numbered checkpoint, the last --keep-last of them kept; the best
        if `improved`; the last, with the `train_state`."""
        self.save(numbered(state.step), state)
        self.run_dir.keep_last(self.config.keep_last)
        if improved:
            self.save(BEST, state)
        self.save(LAST, state, train_state)

    def average(self, n: int) -> None:
        """Average the last `n` numbered checkpoints into checkpoint_avg.safetensors (rank 0)."""
        averaged = self.run_dir.average(n)
        self.console.print(f"averaged {len(averaged)} checkpoints into {self.run_dir.path / AVERAGE}")

    # --- resuming -----------------------------------------------------------------------------
    def resume(self, state: RunState) -> None:
        """Continue from checkpoint_last.safetensors: its weights, optimizer, objective, random state and
        `state`; what a run wrote after it before it died is dropped."""
        weights, s = self.resume_state()
        self.trained.model.load_state_dict(weights)
        self.optimizer.load_state_dict(s["optimizer"])
        self.objective.load_state_dict(s["objective"])
        state.step, state.epoch, state.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
        state.best, state.bad_validations, state.validated_at = s["best"], s["bad_validations"], s.get("validated_at")
        state.elapsed = s.get("elapsed_s", 0.0)
        restore_rng(s, self.config.seed, self.device)
        self.console.print(f"resumed at step {state.step} after {format_duration(state.elapsed)} of training")

    def resume_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The weights and training state of checkpoint_last.safetensors, which every process reads itself.
        Refuse another model, corpus or vocabulary, or processes that read different states; warn of other
        settings or another number of processes."""
        path = self.run_dir.path / LAST
        weights, s, saved = distributed.on_every_rank(self.read_last)
        if len(read := set(distributed.all_gather((s["step"], s.get("elapsed_s"))))) > 1:
            steps = ", ".join(str(step) for step, _ in sorted(read))
            raise KdmtError(f"the processes read different {path} (steps {steps}): resume from one file they all read")
        changed = [k for k, v in asdict(self.config).items() if k not in FREE_ON_RESUME and saved.get(k, v) != v]
        if changed:
            self.console.print(f"warning: resuming with other {', '.join(changed)}: the run will not repeat exactly")
        if (n := s.get("world_size", 1)) != self.world_size:
            f, n_now, f_now = saved.get("update_freq", 1), self.world_size, self.config.update_freq
            self.console.print(
                f"warning: {path} was written by a run on {n} processes, this one has {n_now}: it continues from "
                f"step {s['step']} at the same place in the data, but a step now takes {n_now}×{f_now} batches "
                f"(was {n}×{f}) and the random state (dropout) starts anew, so the run will not repeat exactly; "
                "keep processes × --update-freq to keep the batches of a step"
            )
        if self.main:
            self.run_dir.forget_after(s["step"])
        return weights, s

    def read_last(self) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
        """The weights, training state and settings of checkpoint_last.safetensors, checked against this run."""
        path, model = self.run_dir.path / LAST, self.trained.model
        ckpt = load_checkpoint(path)
        s = ckpt.train_state
        if s is None:
            raise KdmtError(f"{path} holds no training state to resume from")
        expected = (self.trained.src_vocab, self.trained.tgt_vocab)
        error = f"{path} was trained with another vocabulary than this data"
        check_vocabularies(expected, (ckpt.src_vocab, ckpt.tgt_vocab), error)
        if ckpt.model.config != model.config:
            old, new = asdict(ckpt.model.config), asdict(model.config)
            diff = ", ".join(f"{k} {old[k]} (now {new[k]})" for k in old if old[k] != new[k])
            raise KdmtError(f"{path} holds another model: {diff}; resume with the same preset and dimensions")
        if s.get("corpus", fingerprint := self.corpus.fingerprint()) != fingerprint:
            raise KdmtError(f"{path} was trained on another corpus than this one; resume with the same data")
        return ckpt.model.state_dict(), s, ckpt.meta.get("train_config", {})
