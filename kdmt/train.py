"""The one training loop, for teachers and students alike: the objective is what is plugged in.

Adam with inverse-square-root warmup, token-based batches, gradient accumulation, gradient clipping,
bf16 autocast on CUDA, validation (loss and BLEU) with early stopping, atomic checkpoints and an
exact resume: optimizer, step, position in the data order and random state are all saved.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdmt.batching import Batch, make_batch, token_batches
from kdmt.checkpoint import Checkpoint, average_checkpoints, load_checkpoint, save_checkpoint
from kdmt.data import TokenizedCorpus
from kdmt.device import autocast
from kdmt.errors import KdmtError
from kdmt.evaluate import score
from kdmt.model import Transformer
from kdmt.objectives import CrossEntropy, label_smoothed_nll
from kdmt.translate import SearchOptions, Translator
from kdmt.vocab import Vocab

LAST, BEST, AVERAGE = "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_avg.pt"


@dataclass
class TrainConfig:
    max_tokens: int = 4096  # padded target (and source) tokens per batch
    update_freq: int = 1  # batches accumulated into one optimizer step
    lr: float = 5e-4
    warmup: int = 4000
    adam_betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0: no clipping
    max_steps: int | None = None
    epochs: int | None = None
    max_time: float | None = None  # seconds of training in this run
    valid_interval: int = 1000  # steps between validations (and checkpoints)
    valid_bleu_sents: int | None = None  # validation sentences translated for BLEU (None: all, 0: none)
    valid_beam: int = 1
    patience: int | None = None  # validations without improvement before stopping
    keep_last: int = 5  # numbered checkpoints kept for averaging
    average_last: int = 0  # at the end, average this many numbered checkpoints into checkpoint_avg.pt
    max_len: int = 256  # training pairs longer than this (tokens, either side) are skipped
    seed: int = 1
    log_interval: int = 50
    bf16: bool = True  # autocast in bf16 on CUDA

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise KdmtError("give a bound: --max-steps, --epochs or --max-time")
        if self.keep_last < 1 or self.average_last > self.keep_last:
            raise KdmtError("--keep-last must be at least 1 and at least --average-last")


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step = max(step, 1)
    return peak * min(step / max(warmup, 1), math.sqrt(max(warmup, 1) / step))


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A new run never overwrites an earlier one; a resumed run needs one."""
    if resume and not (out_dir / LAST).is_file():
        raise KdmtError(f"nothing to resume: {out_dir / LAST} does not exist")
    if not resume and (out_dir / LAST).exists():
        raise KdmtError(f"{out_dir} already holds a training run: use --resume, or another --out")


@dataclass
class ValidSet:
    corpus: TokenizedCorpus
    src_lines: list[str]
    ref_lines: list[str]


class Trainer:
    """Trains `model` on `train` with `objective`, writing checkpoints and metrics to `out_dir`."""

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
    ):
        self.model, self.src_vocab, self.tgt_vocab = model.to(device), src_vocab, tgt_vocab
        self.train_data, self.valid, self.out_dir, self.config, self.device = train, valid, out_dir, config, device
        self.objective = objective or CrossEntropy(config.label_smoothing)
        self.meta = {**(meta or {}), "train_config": asdict(config)}
        self.console = console or Console(stderr=True)
        self.objective.to(device)  # it may have parameters, e.g. the projections of hidden-state KD
        params = self.parameters()
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        keep = (train.src_len <= config.max_len) & (train.tgt_len <= config.max_len)
        self.train_indices = keep.nonzero().squeeze(1)
        self.skipped_long = int((~keep).sum())
        if len(self.train_indices) == 0:
            raise KdmtError(f"no training pair is within --max-len {config.max_len} tokens")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.bad_validations = 0

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains: the model's parameters and the objective's."""
        return [*self.model.parameters(), *self.objective.parameters()]

    # --- state -------------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def resume(self) -> None:
        """Continue exactly where checkpoint_last.pt left off."""
        ckpt = load_checkpoint(self.out_dir / LAST, self.device)
        if ckpt.train_state is None:
            raise KdmtError(f"{self.out_dir / LAST} holds no training state to resume from")
        if ckpt.tgt_vocab.fingerprint != self.tgt_vocab.fingerprint:
            raise KdmtError(f"{self.out_dir / LAST} was trained with another vocabulary than this data")
        self.model.load_state_dict(ckpt.model.state_dict())
        s = ckpt.train_state
        self.optimizer.load_state_dict(s["optimizer"])
        self.objective.load_state_dict(s["objective"])
        self.step, self.epoch, self.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
        self.best, self.bad_validations = s["best"], s["bad_validations"]
        torch.set_rng_state(s["rng_cpu"])
        if s["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng_cuda"])

    def save(self, name: str, with_state: bool) -> None:
        meta = {**self.meta, "step": self.step, "epoch": self.epoch, "best_valid": self.best}
        state = self.train_state() if with_state else None
        save_checkpoint(self.out_dir / name, Checkpoint(self.model, self.src_vocab, self.tgt_vocab, meta, state))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # --- the loop ----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The batches of an epoch: a function of the seed and the epoch alone, so resuming can replay it."""
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        idx = self.train_indices
        batches = token_batches(self.train_data.src_len[idx], self.train_data.tgt_len[idx], self.config.max_tokens, g)
        return [idx[b] for b in batches]

    def batches(self):
        """Batches from the current position on, forever; the position advances as they are taken."""
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.batch_in_epoch < len(batches):
                self.batch_in_epoch += 1
                yield make_batch(self.train_data, batches[self.batch_in_epoch - 1])
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        self.model.train()
        lr = inverse_sqrt_lr(self.step + 1, self.config.lr, self.config.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss, ntokens, figures = 0.0, 0, {}
        for batch in batches:
            batch = batch.to(self.device)
            with autocast(self.device, self.config.bf16):
                loss, extra = self.objective(self.model, batch)
            loss.backward()
            total_loss += float(loss.detach())
            ntokens += batch.ntokens
            for k, v in extra.items():
                figures[k] = figures.get(k, 0.0) + v
        for p in self.parameters():
            if p.grad is not None:
                p.grad.div_(ntokens)
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "loss": total_loss / ntokens,
            "ntokens": ntokens,
            "lr": lr,
            **{k: v / ntokens for k, v in figures.items()},
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        corpus = self.valid.corpus
        loss_sum = nll_sum = ntokens = 0.0
        lengths = torch.maximum(corpus.src_len, corpus.tgt_len)
        for idx in token_batches(lengths, lengths, self.config.max_tokens):
            batch = make_batch(corpus, idx).to(self.device)
            with autocast(self.device, self.config.bf16):
                logits = self.model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_nll(logits, batch.tgt_out, self.config.label_smoothing)
            loss_sum, nll_sum, ntokens = loss_sum + float(loss), nll_sum + float(nll), ntokens + batch.ntokens
        result = {
            "valid_loss": loss_sum / ntokens,
            "valid_nll": nll_sum / ntokens,
            "valid_ppl": math.exp(nll_sum / ntokens),
        }
        n = self.config.valid_bleu_sents
        if n != 0:
            src, refs = self.valid.src_lines[:n], self.valid.ref_lines[:n]
            opts = SearchOptions(beam=self.config.valid_beam, batch_tokens=self.config.max_tokens)
            translator = Translator([Checkpoint(self.model, self.src_vocab, self.tgt_vocab)], opts)
            with autocast(self.device, self.config.bf16):
                hyps = translator.translate(src)
            result["valid_bleu"] = score(hyps, refs).bleu
        return result

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train until a bound is reached or validation stops improving; returns the final figures."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        check_out_dir(self.out_dir, resume)
        if resume:
            self.resume()
        if self.skipped_long:
            self.console.print(f"skipping {self.skipped_long} training pairs longer than {c.max_len} tokens")
        steps_per_epoch = math.ceil(len(self.epoch_batches(0)) / c.update_freq)
        bounds = [b for b in (c.max_steps, c.epochs and c.epochs * steps_per_epoch) if b]
        total = min(bounds) if bounds else None
        start_time, last_log = time.monotonic(), time.monotonic()
        window: dict[str, float] = {}  # sums over the steps since the last log line, weighted by tokens
        stop_reason, result = None, {}
        data = self.batches()
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("train", total=total, completed=self.step, info="")
            while stop_reason is None:
                if total is not None and self.step >= total:
                    stop_reason = "max steps" if c.max_steps and self.step >= c.max_steps else "epochs"
                    break
                if c.max_time is not None and time.monotonic() - start_time >= c.max_time:
                    stop_reason = "max time"
                    break
                try:
                    stats = self.train_step([next(data) for _ in range(c.update_freq)])
                except torch.cuda.OutOfMemoryError:
                    raise KdmtError("out of GPU memory: lower --max-tokens (and raise --update-freq)") from None
                for key, value in stats.items():
                    if key not in ("lr", "ntokens"):
                        window[key] = window.get(key, 0.0) + value * stats["ntokens"]
                window["tokens"] = window.get("tokens", 0) + stats["ntokens"]
                progress.update(task, completed=self.step)
                if self.step % c.log_interval == 0 or self.step == total:
                    now = time.monotonic()
                    tokens = window.pop("tokens")
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        **{key: value / tokens for key, value in window.items()},
                        "lr": stats["lr"],
                        "tokens_per_s": tokens / (now - last_log),
                        "elapsed_s": now - start_time,
                    }
                    self.log(record)
                    progress.update(
                        task,
                        info=f"loss {record['loss']:.3f}  lr {stats['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s",
                    )
                    window, last_log = {}, now
                if self.step % c.valid_interval == 0:
                    result = self.validate_and_save()
                    last_log = time.monotonic()  # validation time does not count against tokens/s
                    if c.patience is not None and self.bad_validations >= c.patience:
                        stop_reason = "early stopping"
        if self.step % c.valid_interval != 0 or not result:
            result = self.validate_and_save()
        if c.average_last > 0:
            self.average(c.average_last)
        self.console.print(f"stopped at step {self.step} ({stop_reason}); best validation {self.best}")
        return {"step": self.step, "stop": stop_reason, **result}

    def validate_and_save(self) -> dict[str, float]:
        """Validate, then write the numbered, last and (if improved) best checkpoints."""
        result = self.validate()
        metric = result.get("valid_bleu", -result["valid_loss"])
        improved = self.best is None or metric > self.best
        if improved:
            self.best, self.bad_validations = metric, 0
        else:
            self.bad_validations += 1
        self.log({"step": self.step, "epoch": self.epoch, **result, "best": self.best})
        shown = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
        self.console.print(f"step {self.step}: {shown}{'  (best)' if improved else ''}")
        self.save(f"checkpoint_{self.step}.pt", with_state=False)
        for old in self.numbered_checkpoints()[: -self.config.keep_last or None]:
            old.unlink()
        if improved:
            self.save(BEST, with_state=False)
        self.save(LAST, with_state=True)
        return result

    def numbered_checkpoints(self) -> list[Path]:
        return sorted(self.out_dir.glob("checkpoint_[0-9]*.pt"), key=lambda p: int(p.stem.split("_")[1]))

    def average(self, n: int) -> None:
        paths = self.numbered_checkpoints()[-n:]
        average_checkpoints(paths, self.out_dir / AVERAGE)
        self.console.print(f"averaged {len(paths)} checkpoints into {self.out_dir / AVERAGE}")
