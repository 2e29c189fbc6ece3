"""The one training loop, for teachers and students alike: the objective is what is plugged in.

Adam with inverse-square-root warmup (kdmt.optimizer), token-based batches (kdmt.train_data), gradient
accumulation, gradient clipping, bf16 autocast on CUDA, validation (loss and BLEU) with early stopping
(kdmt.validation), atomic checkpoints and an exact resume: optimizer, step, position in the data order,
random state and training time are all saved (kdmt.run_state).

Validation (and the numbered, best and last checkpoints) happens every `valid_interval` steps, and at the
final step of a run bounded by --max-steps or --epochs. A run stopped by --max-time, Ctrl-C or SIGTERM
(kdmt.signals) between validations writes only checkpoint_last.safetensors: `--resume` then continues exactly
as if it had never stopped, with the same validations, patience and averaging.

Under torchrun (kdmt.distributed) every process trains a replica wrapped in DistributedDataParallel. The
batch plan of an epoch is the same on every rank; one optimizer step takes N·F consecutive batches of it
(N processes, F = update_freq), rank r the batches r, r+N, r+2N, ...: so N processes take the batches of
one process with update_freq N·F, and the gradient is the mean over the target tokens of them all. Rank 0
alone validates, writes checkpoints and metrics and shows progress; stop decisions are rank 0's, shared.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdmt import distributed
from kdmt.batching import Batch
from kdmt.checkpoint import Checkpoint
from kdmt.config import option
from kdmt.data import TokenizedCorpus
from kdmt.device import autocast
from kdmt.errors import KdmtError
from kdmt.languages import PairSampler
from kdmt.model import Transformer
from kdmt.objectives import CrossEntropy
from kdmt.optimizer import make_optimizer, set_lr
from kdmt.options import COUNT, FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, SEED, parse_duration
from kdmt.progress import ProgressLine
from kdmt.run_dir import LAST, RunDir
from kdmt.run_state import Checkpointer, RunState, rank_seed
from kdmt.signals import StopRequest, stop_requests
from kdmt.train_data import TrainData
from kdmt.validation import Validator, ValidSet, metric, patience_exhausted, record_validation
from kdmt.vocab import Vocab


@dataclass
class TrainConfig:
    """A training run's settings: each one an option of train-teacher and train-student (kdmt.config)."""

    max_tokens: int = option(4096, "Padded tokens per batch.", COUNT)  # target (and source) tokens
    update_freq: int = option(1, "Batches accumulated per optimizer step.", COUNT)
    lr: float = option(5e-4, "Peak learning rate.", POSITIVE)
    warmup: int = option(4000, "Warmup steps of the inverse-sqrt schedule.", NONNEGATIVE_INT)
    adam_betas: tuple[float, float] = option((0.9, 0.98), "Adam's β1 and β2.", FRACTION)
    weight_decay: float = option(0.0, "AdamW weight decay.", NONNEGATIVE)
    label_smoothing: float = option(0.1, "Label smoothing ε.", FRACTION)
    clip_norm: float = option(1.0, "Gradient norm clipping (0: off).", NONNEGATIVE)
    max_steps: int | None = option(None, "Stop after this many optimizer steps.", COUNT)
    epochs: int | None = option(None, "Stop after this many epochs.", COUNT)
    max_time: float | None = option(None, "Stop after this long, e.g. 30m or 2h.", parse=parse_duration)  # seconds
    valid_interval: int = option(1000, "Steps between validations and checkpoints.", COUNT)
    valid_bleu_sents: int | None = option(
        None, "Validation sentences translated for BLEU (0: none; default all).", NONNEGATIVE_INT
    )
    valid_beam: int = option(1, "Beam size of the validation BLEU's translations.", COUNT)
    patience: int | None = option(None, "Stop after this many validations without improvement.", COUNT)
    keep_last: int = option(5, "Numbered checkpoints to keep.", COUNT)  # for averaging
    average_last: int = option(
        0, "At the end, average the last N into checkpoint_avg.safetensors.", NONNEGATIVE_INT
    )  # 0: no average
    max_len: int = option(256, "Skip training pairs longer than this many tokens.", COUNT)  # and validation pairs
    seed: int = option(1, "Random seed.", SEED)
    log_interval: int = option(50, "Steps between lines in metrics.jsonl.", COUNT)
    bf16: bool = option(True, "bf16 autocast on CUDA.", flags=("--bf16/--fp32",))

    def __post_init__(self) -> None:
        """The checks that relate settings (each one's range is its field's, checked by the command line)."""
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise KdmtError("give a bound: --max-steps, --epochs or --max-time")
        if self.max_time is not None and not self.max_time > 0:
            raise KdmtError("--max-time must be positive")
        if self.average_last > self.keep_last:
            raise KdmtError("--keep-last must be at least --average-last")


# Why a run stops (None: it goes on), as stop_reason shares them between processes.
STOP_REASONS = (None, "max steps", "epochs", "early stopping", "max time", "interrupted")


class Learner(nn.Module):
    """The model and its objective as one module, whose forward is the objective on a batch: what
    DistributedDataParallel wraps, so that the objective's own parameters (the projections of hidden-state
    KD) are all-reduced with the model's. Online teachers are no submodules: each rank runs its own."""

    def __init__(self, model: Transformer, objective: nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.model, batch)


class LogWindow:
    """The training figures of the steps since the last log line, summed weighted by their target tokens."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.since = time.monotonic()

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            if key not in ("lr", "ntokens"):
                self.sums[key] = self.sums.get(key, 0.0) + value * stats["ntokens"]
        self.sums["tokens"] = self.sums.get("tokens", 0) + stats["ntokens"]

    def take(self, now: float) -> tuple[dict[str, float], float]:
        """The means of the figures, and the tokens a second; the window starts again at `now`."""
        tokens = self.sums.pop("tokens")
        means, tokens_per_s = {key: value / tokens for key, value in self.sums.items()}, tokens / (now - self.since)
        self.sums, self.since = {}, now
        return means, tokens_per_s


class Trainer:
    """Trains `model` on `train` with `objective`, writing checkpoints and metrics to `out_dir`; under
    torchrun, this process's share of the training (see kdmt.distributed)."""

    def __init__(
        self,
        model: Transformer,
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        train: TokenizedCorpus,
        valid: ValidSet,
        out_dir: Path,
        config: TrainConfig,
        device: torch.device,
        objective: torch.nn.Module | None = None,
        meta: dict[str, Any] | None = None,
        console: Console | None = None,
        sampler: PairSampler | None = None,
    ):
        self.model, self.src_vocab, self.tgt_vocab = model.to(device), src_vocab, tgt_vocab
        self.out_dir, self.config, self.device = out_dir, config, device
        self.objective = objective or CrossEntropy(config.label_smoothing)
        self.meta = {**(meta or {}), "train_config": asdict(config)}
        self.run_dir = RunDir(out_dir)  # written by rank 0 alone
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.console = (console or Console(stderr=True)) if self.main else Console(stderr=True, quiet=True)
        self.objective.to(device)  # it may have parameters, e.g. the projections of hidden-state KD
        self.optimizer = make_optimizer(self.parameters(), config)
        self.max_len = min(config.max_len, model.config.max_positions)  # pairs longer are skipped
        # several language pairs drawn with a temperature (sampler): each epoch's sentences
        self.data = TrainData(train, config.max_tokens, self.max_len, config.seed, sampler, self.rank, self.world_size)
        self.validator = Validator(valid, config, device, self.max_len)
        self.validator.check()
        self.data.check_max_tokens()
        self.state = RunState()
        trained = Checkpoint(self.model, src_vocab, tgt_vocab, self.meta)
        self.checkpoints = Checkpointer(
            self.run_dir, trained, self.objective, self.optimizer, train, config, device, self.console
        )
        self.learner: nn.Module = Learner(self.model, self.objective)
        if self.world_size > 1:
            ids = [device] if device.type == "cuda" else None
            self.learner = DistributedDataParallel(self.learner, device_ids=ids)
            self.learner.broadcast_buffers = False  # buffers (the positions) are constant: no sync each forward
            torch.manual_seed(rank_seed(config.seed, self.rank, 0))

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains: the model's parameters and the objective's."""
        return [*self.model.parameters(), *self.objective.parameters()]

    def validate(self) -> dict[str, float]:
        """The validation figures of the model being trained (kdmt.validation.Validator.validate)."""
        return self.validator.validate(self.model, self.src_vocab, self.tgt_vocab)

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        """One optimizer step on this rank's `batches`: the gradient is the mean over the target tokens of
        all ranks' batches, and the figures are sums over all ranks divided by those tokens; grad_norm is the
        gradient's norm before clipping."""
        self.learner.train()
        lr = set_lr(self.optimizer, self.state.step + 1, self.config)
        total_loss, ntokens, figures = 0.0, 0, {}
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            with self.gradient_sync(i == len(batches) - 1):
                with autocast(self.device, self.config.bf16):
                    loss, extra = self.learner(batch)
                loss.backward()
            total_loss += float(loss.detach())
            ntokens += batch.ntokens
            for k, v in extra.items():
                figures[k] = figures.get(k, 0.0) + v
        total_loss, ntokens, *sums = distributed.all_sum([total_loss, ntokens, *figures.values()])
        figures = dict(zip(figures, sums))
        for p in self.parameters():
            if p.grad is not None:
                p.grad.div_(ntokens / self.world_size)  # DDP averaged the ranks' sums
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.clip_norm or math.inf)  # before clipping
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return {
            "loss": total_loss / ntokens,
            "ntokens": int(ntokens),
            "lr": lr,
            "grad_norm": float(norm),
            **{k: v / ntokens for k, v in figures.items()},
        }

    def gradient_sync(self, last: bool) -> AbstractContextManager:
        """DDP all-reduces the gradients in the backward pass of a step's last batch only."""
        return nullcontext() if last or self.world_size == 1 else self.learner.no_sync()

    def total_steps(self) -> int | None:
        """The step the run ends at, when --max-steps or --epochs bound it, from the current position in the
        data and a step's batches now (for --epochs, exact when the epochs have as many batches as this one,
        as they do without a temperature over language pairs): for the progress bar."""
        c, s = self.config, self.state
        bounds = [c.max_steps] if c.max_steps is not None else []
        if c.epochs is not None:
            left = (c.epochs - s.epoch) * len(self.data.epoch_batches(s.epoch)) - s.batch_in_epoch
            bounds.append(s.step + max(0, math.ceil(left / (c.update_freq * self.world_size))))
        return min(bounds) if bounds else None

    def bound_reached(self) -> str | None:
        """Whether --max-steps or --epochs ends the run at this step ("max steps", "epochs"): --epochs N once
        the last batch of the N-th epoch is taken, whatever number of processes and batches the steps took."""
        c, s = self.config, self.state
        if c.max_steps is not None and s.step >= c.max_steps:
            return "max steps"
        if c.epochs is not None:
            last = (c.epochs - 1, len(self.data.epoch_batches(s.epoch)))  # the position after epoch N's last batch
            if (s.epoch, s.batch_in_epoch) >= last:
                return "epochs"
        return None

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train until a bound is reached or validation stops improving; returns the final figures."""
        c, s = self.config, self.state
        distributed.on_rank0(lambda: self.run_dir.open(resume))
        if resume:
            self.checkpoints.resume(s)
        if self.data.skipped_long:
            self.console.print(f"skipping {self.data.skipped_long} training pairs longer than {self.max_len} tokens")
        if skipped := int((~self.validator.fits()).sum()):
            self.console.print(f"skipping {skipped} validation pairs longer than {self.max_len} tokens")
        total = self.total_steps()
        start, window = time.monotonic() - s.elapsed, LogWindow()
        result = {}
        data = self.data.batches(s)
        progress = ProgressLine(self.console, "train", total, "steps", completed=s.step)
        with progress, stop_requests() as stop:
            while (stop_reason := self.stop_reason(start, stop)) is None:
                stats = self.train_step([next(data) for _ in range(c.update_freq)])
                window.add(stats)
                if s.step % c.log_interval == 0 or self.bound_reached():
                    now = time.monotonic()
                    means, per_s = window.take(now)
                    record = {"step": s.step, "epoch": s.epoch, **means, "lr": stats["lr"], "tokens_per_s": per_s}
                    record["elapsed_s"] = now - start
                    if self.main:
                        self.run_dir.log(record)
                    info = f"loss {record['loss']:.3f}, lr {stats['lr']:.2e}, {record['tokens_per_s']:,.0f} tok/s"
                    progress.update(s.step, info)
                else:
                    progress.update(s.step)
                if s.step % c.valid_interval == 0:
                    result = self.validate_and_save(time.monotonic() - start)
                    window.since = time.monotonic()  # validation time does not count against tokens/s
        return self.finish(stop_reason, start, result)

    def stop_reason(self, start: float, stop: StopRequest) -> str | None:
        """Why training stops before the next step, if it does: rank 0's answer, given to every rank (as its
        index in STOP_REASONS: a tensor broadcast a step)."""
        c = self.config
        if patience_exhausted(self.state, c.patience):
            reason = "early stopping"
        elif (reason := self.bound_reached()) is None:
            if c.max_time is not None and time.monotonic() - start >= c.max_time:
                reason = "max time"
            elif stop.requested:
                reason = "interrupted"
        return STOP_REASONS[distributed.int_from_rank0(STOP_REASONS.index(reason))]

    def validate_and_save(self, elapsed: float) -> dict[str, float]:
        """Validate (rank 0; every rank gets the figures and keeps the best), then write the numbered, last
        and (if improved) best checkpoints."""
        result = distributed.from_rank0(self.validate() if self.main else None)
        if (validated := getattr(self.objective, "validated", None)) is not None:
            result |= validated(result)  # e.g. selective distillation switching word-KD per pair
        improved = record_validation(self.state, metric(result))
        train_state = self.checkpoints.train_state(self.state, elapsed)
        if not self.main:
            return result
        s = self.state
        self.run_dir.log({"step": s.step, "epoch": s.epoch, **result, "best": s.best})
        shown = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
        self.console.print(f"step {s.step}: {shown}{'  (best)' if improved else ''}")
        self.checkpoints.save_validated(s, improved, train_state)
        return result

    def finish(self, stop_reason: str | None, start: float, result: dict[str, float]) -> dict[str, Any]:
        """End the run stopped for `stop_reason`: validate at a bound or save the state of a pause, average
        the last checkpoints; the final figures (the last validation's `result` unless it validates)."""
        c, s = self.config, self.state
        if s.step % c.valid_interval and s.validated_at != s.step:  # not a finished run resumed
            if stop_reason in ("max steps", "epochs") or s.best is None and stop_reason == "max time":
                result = self.validate_and_save(time.monotonic() - start)
            else:  # a pause: the next validation is the scheduled one, as in an uninterrupted run
                train_state = self.checkpoints.train_state(s, time.monotonic() - start)
                if self.main:
                    self.checkpoints.save(LAST, s, train_state)
        if stop_reason != "interrupted" and c.average_last > 0 and self.main:
            self.checkpoints.average(c.average_last)
        distributed.barrier()  # no rank leaves before rank 0 has written its files
        if stop_reason == "interrupted":
            self.console.print(f"interrupted at step {s.step}: --resume continues from {self.out_dir / LAST}")
            raise KeyboardInterrupt
        self.console.print(f"stopped at step {s.step} ({stop_reason}); best validation {s.best}")
        return {"step": s.step, "stop": stop_reason, **result}
