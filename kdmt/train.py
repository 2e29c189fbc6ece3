"""The one training loop, for teachers and students alike: the objective is what is plugged in.

Adam with inverse-square-root warmup, token-based batches, gradient accumulation, gradient clipping,
bf16 autocast on CUDA, validation (loss and BLEU) with early stopping, atomic checkpoints and an
exact resume: optimizer, step, position in the data order, random state and training time are all saved.

Validation (and the numbered, best and last checkpoints) happens every `valid_interval` steps, and at the
final step of a run bounded by --max-steps or --epochs. A run stopped by --max-time, Ctrl-C or SIGTERM
between validations writes only checkpoint_last.safetensors: `--resume` then continues exactly as if it had never
stopped, with the same validations, patience and averaging.

Under torchrun (kdmt.distributed) every process trains a replica wrapped in DistributedDataParallel. The
batch plan of an epoch is the same on every rank; one optimizer step takes N·F consecutive batches of it
(N processes, F = update_freq), rank r the batches r, r+N, r+2N, ...: so N processes take the batches of
one process with update_freq N·F, and the gradient is the mean over the target tokens of them all. Rank 0
alone validates, writes checkpoints and metrics and shows progress; stop decisions are rank 0's, shared.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdmt import distributed
from kdmt.batching import Batch, BatchPlan, index_dtype, make_batch, token_batches
from kdmt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kdmt.config import option
from kdmt.data import PreparedData, TokenizedCorpus
from kdmt.device import autocast
from kdmt.errors import KdmtError
from kdmt.evaluate import score
from kdmt.languages import Pair, PairRows, PairSampler, bleu_key
from kdmt.model import Transformer
from kdmt.objectives import CrossEntropy, label_smoothed_nll
from kdmt.options import COUNT, FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, SEED, parse_duration
from kdmt.progress import ProgressLine, format_duration
from kdmt.run_dir import AVERAGE, BEST, LAST, RunDir, numbered
from kdmt.translate import SearchOptions, Translator
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


# Settings that a resumed run may change without breaking its exact continuation: its bounds.
FREE_ON_RESUME = ("max_steps", "epochs", "max_time", "patience", "keep_last", "average_last", "log_interval")


# Why a run stops (None: it goes on), as stop_reason shares them between processes.
STOP_REASONS = (None, "max steps", "epochs", "early stopping", "max time", "interrupted")


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step = max(step, 1)
    return peak * min(step / max(warmup, 1), math.sqrt(max(warmup, 1) / step))


@dataclass
class ValidSet:
    corpus: TokenizedCorpus
    src_lines: list[str]
    ref_lines: list[str]
    pairs: PairRows | None = None  # several language pairs: BLEU is measured on each one's rows
    tgt_lang: str | None = None  # one pair: the target language, BLEU's tokenizer (kdmt.evaluate.score)

    @classmethod
    def of(cls, data: PreparedData, pair: str | None = None) -> ValidSet:
        """The validation split of a prepared data directory, or of one of its language pairs."""
        corpus, (src, ref), pairs = data.corpus("valid"), data.text("valid"), data.info.pair_rows("valid")
        if pair is None:
            return cls(corpus, src, ref, pairs, None if pairs else data.info.tgt_lang)
        if pairs is None:
            raise KdmtError(f"{data.root} holds one language pair: drop --pair")
        rows = pairs.rows(pair)
        part = corpus.subset(rows), src[rows.start : rows.stop], ref[rows.start : rows.stop]
        return cls(*part, tgt_lang=Pair.parse(pair).tgt)

    def target_language(self, part: str | None) -> str | None:
        """The target language of a part of parts(): its pair's, or the set's own."""
        return self.tgt_lang if part is None else Pair.parse(part).tgt

    def parts(self) -> list[tuple[str | None, range]]:
        """The rows of each language pair, by name; all rows, unnamed, for one pair."""
        if self.pairs is None:
            return [(None, range(len(self.src_lines)))]
        return [(name, self.pairs.rows(name)) for name in self.pairs.names]


class Learner(nn.Module):
    """The model and its objective as one module, whose forward is the objective on a batch: what
    DistributedDataParallel wraps, so that the objective's own parameters (the projections of hidden-state
    KD) are all-reduced with the model's. Online teachers are no submodules: each rank runs its own."""

    def __init__(self, model: Transformer, objective: nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.model, batch)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's random state (dropout) when several processes train, started or resumed at `step`."""
    return (seed * 1_000_003 + step) * 4096 + rank


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
        self.train_data, self.valid, self.out_dir, self.config, self.device = train, valid, out_dir, config, device
        self.objective = objective or CrossEntropy(config.label_smoothing)
        self.sampler = sampler  # several language pairs drawn with a temperature: each epoch's sentences
        self.meta = {**(meta or {}), "train_config": asdict(config)}
        self.run_dir = RunDir(out_dir)  # written by rank 0 alone
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.console = (console or Console(stderr=True)) if self.main else Console(stderr=True, quiet=True)
        self.objective.to(device)  # it may have parameters, e.g. the projections of hidden-state KD
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.max_len = min(config.max_len, model.config.max_positions)  # see fits
        keep = self.fits(train)
        self.train_indices = keep.nonzero().squeeze(1).to(index_dtype(len(train)))
        self.skipped_long = int((~keep).sum())
        if len(self.train_indices) == 0:
            raise KdmtError(f"no training pair is within --max-len {self.max_len} tokens")
        if not self.fits(valid.corpus).any():
            raise KdmtError(f"no validation pair is within --max-len {self.max_len} tokens")
        if config.max_tokens < (need := int(torch.maximum(train.src_len, train.tgt_len)[keep].max())):
            raise KdmtError(
                f"--max-tokens {config.max_tokens} is smaller than the longest training pair ({need} tokens): "
                "raise it, or lower --max-len"
            )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._plan: tuple[int, BatchPlan] | None = None  # (epoch, its batches): see epoch_batches
        self.best: float | None = None
        self.bad_validations = 0
        self.validated_at: int | None = None  # the step of the last validation
        self.elapsed = 0.0  # seconds of training before this run started (resumed runs)
        self.learner: nn.Module = Learner(self.model, self.objective)
        if self.world_size > 1:
            ids = [device] if device.type == "cuda" else None
            self.learner = DistributedDataParallel(self.learner, device_ids=ids)
            self.learner.broadcast_buffers = False  # buffers (the positions) are constant: no sync each forward
            torch.manual_seed(rank_seed(config.seed, self.rank, 0))

    def fits(self, corpus: TokenizedCorpus) -> Tensor:
        """Which pairs of `corpus` training and validation take: those of at most --max-len tokens on either
        side, and no more than the model's positions (a bool per pair)."""
        return torch.maximum(corpus.src_len, corpus.tgt_len) <= self.max_len

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains: the model's parameters and the objective's."""
        return [*self.model.parameters(), *self.objective.parameters()]

    # --- state -------------------------------------------------------------------------------
    def train_state(self, elapsed: float) -> dict[str, Any] | None:
        """What --resume needs, on rank 0 (None on the others); every rank calls it: it gathers the random
        states of all (rng_cpu and rng_cuda are rank 0's, rng_ranks every rank's when there are several)."""
        rng = distributed.all_gather(self.rng_state())
        if not self.main:
            return None
        return {
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "validated_at": self.validated_at,
            "elapsed_s": elapsed,
            "corpus": self.train_data.fingerprint(),
            "rng_cpu": rng[0]["cpu"],
            "rng_cuda": rng[0]["cuda"],
            "world_size": self.world_size,
            **({"rng_ranks": rng} if self.world_size > 1 else {}),
        }

    def rng_state(self) -> dict[str, Tensor | None]:
        """This process's random state (dropout)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def resume_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The weights and training state of checkpoint_last.safetensors, which every process reads itself: what
        passes between processes is decisions alone. Refuse another model, corpus or vocabulary, or
        processes that read different states; warn of other settings or another number of processes."""
        path = self.out_dir / LAST
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
        path = self.out_dir / LAST
        ckpt = load_checkpoint(path)
        s = ckpt.train_state
        if s is None:
            raise KdmtError(f"{path} holds no training state to resume from")
        if ckpt.tgt_vocab.fingerprint != self.tgt_vocab.fingerprint:
            raise KdmtError(f"{path} was trained with another vocabulary than this data")
        if ckpt.model.config != self.model.config:
            old, new = asdict(ckpt.model.config), asdict(self.model.config)
            diff = ", ".join(f"{k} {old[k]} (now {new[k]})" for k in old if old[k] != new[k])
            raise KdmtError(f"{path} holds another model: {diff}; resume with the same preset and dimensions")
        if s.get("corpus", self.train_data.fingerprint()) != self.train_data.fingerprint():
            raise KdmtError(f"{path} was trained on another corpus than this one; resume with the same data")
        return ckpt.model.state_dict(), s, ckpt.meta.get("train_config", {})

    def restore(self, weights: dict[str, Tensor], s: dict[str, Any]) -> None:
        """Continue from a resume_state: exactly, with the number of processes that saved it."""
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(s["optimizer"])
        self.objective.load_state_dict(s["objective"])
        self.step, self.epoch, self.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
        self.best, self.bad_validations, self.validated_at = s["best"], s["bad_validations"], s.get("validated_at")
        self.elapsed = s.get("elapsed_s", 0.0)
        n = s.get("world_size", 1)
        if n != self.world_size:
            torch.manual_seed(rank_seed(self.config.seed, self.rank, self.step))
        elif n == 1:
            torch.set_rng_state(s["rng_cpu"])
            restore_cuda_rng(s.get("rng_cuda"), self.device)
        else:
            torch.set_rng_state(s["rng_ranks"][self.rank]["cpu"])
            restore_cuda_rng(s["rng_ranks"][self.rank]["cuda"], self.device)

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        """Write checkpoint `name` (rank 0), with the training `state` if given."""
        meta = {**self.meta, "step": self.step, "epoch": self.epoch, "best_valid": self.best}
        save_checkpoint(self.out_dir / name, Checkpoint(self.model, self.src_vocab, self.tgt_vocab, meta, state))

    # --- the loop ----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> BatchPlan:
        """The batches of an epoch: a function of the seed and the epoch alone, so resuming can replay it.
        The last epoch's plan is kept; its batches are views of one tensor of sentence indices."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        self._plan = None  # the old plan is freed before the new one is made
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        idx = self.train_indices if self.sampler is None else self.sampler(self.train_indices, g)
        plan = token_batches(self.train_data.src_len, self.train_data.tgt_len, self.config.max_tokens, g, idx)
        self._plan = epoch, plan
        return plan

    def plan(self) -> Iterator[Tensor]:
        """The batches (sentence indices) of the epochs' plans from the current position on, forever; the
        position advances as they are taken."""
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.batch_in_epoch < len(batches):
                self.batch_in_epoch += 1
                yield batches[self.batch_in_epoch - 1]
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def batches(self) -> Iterator[Batch]:
        """This rank's batches: of every N consecutive batches of the plan (N processes), the rank-th."""
        plan = self.plan()
        while True:
            group = [next(plan) for _ in range(self.world_size)]
            yield make_batch(self.train_data, group[self.rank])

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        """One optimizer step on this rank's `batches`: the gradient is the mean over the target tokens of
        all ranks' batches, and the figures are sums over all ranks divided by those tokens; grad_norm is the
        gradient's norm before clipping."""
        self.learner.train()
        lr = inverse_sqrt_lr(self.step + 1, self.config.lr, self.config.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
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
        self.step += 1
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

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        corpus = self.valid.corpus
        loss_sum = nll_sum = ntokens = 0.0
        rows = self.fits(corpus).nonzero().squeeze(1)
        lengths = torch.maximum(corpus.src_len, corpus.tgt_len)[rows]
        for idx in token_batches(lengths, lengths, self.config.max_tokens):
            batch = make_batch(corpus, rows[idx]).to(self.device)
            with autocast(self.device, self.config.bf16):
                logits = self.model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_nll(logits, batch.tgt_out, self.config.label_smoothing)
            loss_sum, nll_sum, ntokens = loss_sum + float(loss), nll_sum + float(nll), ntokens + batch.ntokens
        result = {
            "valid_loss": loss_sum / ntokens,
            "valid_nll": nll_sum / ntokens,
            "valid_ppl": math.exp(nll_sum / ntokens),
        }
        if self.config.valid_bleu_sents != 0:
            result |= self.bleu([Checkpoint(self.model, self.src_vocab, self.tgt_vocab)])
        return result

    @torch.no_grad()
    def bleu(self, checkpoints: list[Checkpoint], pair: str | None = None) -> dict[str, float]:
        """The validation BLEU of a model (or an ensemble) on the first valid_bleu_sents sentences: valid_bleu;
        for several language pairs, valid_bleu_PAIR on each pair's sentences, and valid_bleu their mean; with
        `pair`, on that pair's alone."""
        n = self.config.valid_bleu_sents
        opts = SearchOptions(beam=self.config.valid_beam, batch_tokens=self.config.max_tokens)
        translator = Translator(checkpoints, opts)
        result = {}
        fits = self.fits(self.valid.corpus).tolist()
        for name, rows in self.valid.parts():
            if pair is not None and name != pair:
                continue
            taken = [i for i in rows if fits[i]][:n]
            src, refs = [self.valid.src_lines[i] for i in taken], [self.valid.ref_lines[i] for i in taken]
            with autocast(self.device, self.config.bf16):
                hyps = translator.translate(src)
            result[bleu_key(name)] = score(hyps, refs, self.valid.target_language(name)).bleu
        if len(result) > 1:
            result["valid_bleu"] = sum(result.values()) / len(result)
        return result

    def total_steps(self) -> int | None:
        """The step the run ends at, when --max-steps or --epochs bound it, from the current position in the
        data and a step's batches now (for --epochs, exact when the epochs have as many batches as this one,
        as they do without a temperature over language pairs): for the progress bar."""
        c = self.config
        bounds = [c.max_steps] if c.max_steps is not None else []
        if c.epochs is not None:
            left = (c.epochs - self.epoch) * len(self.epoch_batches(self.epoch)) - self.batch_in_epoch
            bounds.append(self.step + max(0, math.ceil(left / (c.update_freq * self.world_size))))
        return min(bounds) if bounds else None

    def bound_reached(self) -> str | None:
        """Whether --max-steps or --epochs ends the run at this step ("max steps", "epochs"): --epochs N once
        the last batch of the N-th epoch is taken, whatever number of processes and batches the steps took."""
        c = self.config
        if c.max_steps is not None and self.step >= c.max_steps:
            return "max steps"
        if c.epochs is not None:
            last = (c.epochs - 1, len(self.epoch_batches(self.epoch)))  # the position after epoch N's last batch
            if (self.epoch, self.batch_in_epoch) >= last:
                return "epochs"
        return None

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train until a bound is reached or validation stops improving; returns the final figures."""
        c = self.config
        distributed.on_rank0(lambda: self.run_dir.open(resume))
        if resume:
            self.restore(*self.resume_state())
            self.console.print(f"resumed at step {self.step} after {format_duration(self.elapsed)} of training")
        if self.skipped_long:
            self.console.print(f"skipping {self.skipped_long} training pairs longer than {self.max_len} tokens")
        if skipped := int((~self.fits(self.valid.corpus)).sum()):
            self.console.print(f"skipping {skipped} validation pairs longer than {self.max_len} tokens")
        total = self.total_steps()
        start, last_log = time.monotonic() - self.elapsed, time.monotonic()
        window: dict[str, float] = {}  # sums over the steps since the last log line, weighted by tokens
        result = {}
        data = self.batches()
        progress = ProgressLine(self.console, "train", total, "steps", completed=self.step)
        with progress, stop_requests() as stop:
            while (stop_reason := self.stop_reason(start, stop)) is None:
                stats = self.train_step([next(data) for _ in range(c.update_freq)])
                for key, value in stats.items():
                    if key not in ("lr", "ntokens"):
                        window[key] = window.get(key, 0.0) + value * stats["ntokens"]
                window["tokens"] = window.get("tokens", 0) + stats["ntokens"]
                if self.step % c.log_interval == 0 or self.bound_reached():
                    now = time.monotonic()
                    tokens = window.pop("tokens")
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        **{key: value / tokens for key, value in window.items()},
                        "lr": stats["lr"],
                        "tokens_per_s": tokens / (now - last_log),
                        "elapsed_s": now - start,
                    }
                    if self.main:
                        self.run_dir.log(record)
                    info = f"loss {record['loss']:.3f}, lr {stats['lr']:.2e}, {record['tokens_per_s']:,.0f} tok/s"
                    progress.update(self.step, info)
                    window, last_log = {}, now
                else:
                    progress.update(self.step)
                if self.step % c.valid_interval == 0:
                    result = self.validate_and_save(time.monotonic() - start)
                    last_log = time.monotonic()  # validation time does not count against tokens/s
        if self.step % c.valid_interval and self.validated_at != self.step:  # not a finished run resumed
            if stop_reason in ("max steps", "epochs") or self.best is None and stop_reason == "max time":
                result = self.validate_and_save(time.monotonic() - start)
            else:  # a pause: the next validation is the scheduled one, as in an uninterrupted run
                state = self.train_state(time.monotonic() - start)
                if self.main:
                    self.save(LAST, state)
        if stop_reason != "interrupted" and c.average_last > 0 and self.main:
            averaged = self.run_dir.average(c.average_last)
            self.console.print(f"averaged {len(averaged)} checkpoints into {self.out_dir / AVERAGE}")
        distributed.barrier()  # no rank leaves before rank 0 has written its files
        if stop_reason == "interrupted":
            self.console.print(f"interrupted at step {self.step}: --resume continues from {self.out_dir / LAST}")
            raise KeyboardInterrupt
        self.console.print(f"stopped at step {self.step} ({stop_reason}); best validation {self.best}")
        return {"step": self.step, "stop": stop_reason, **result}

    def stop_reason(self, start: float, stop: StopRequest) -> str | None:
        """Why training stops before the next step, if it does: rank 0's answer, given to every rank (as its
        index in STOP_REASONS: a tensor broadcast a step)."""
        c = self.config
        if c.patience is not None and self.bad_validations >= c.patience:
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
        metric = result.get("valid_bleu", -result["valid_loss"])
        improved = self.best is None or metric > self.best
        if improved:
            self.best, self.bad_validations = metric, 0
        else:
            self.bad_validations += 1
        self.validated_at = self.step
        state = self.train_state(elapsed)
        if not self.main:
            return result
        self.run_dir.log({"step": self.step, "epoch": self.epoch, **result, "best": self.best})
        shown = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
        self.console.print(f"step {self.step}: {shown}{'  (best)' if improved else ''}")
        self.save(numbered(self.step))
        self.run_dir.keep_last(self.config.keep_last)
        if improved:
            self.save(BEST)
        self.save(LAST, state)
        return result


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


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM: training stops after the current step, its state saved."""

    requested = False


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT or SIGTERM (Ctrl-C, `kill`, a cluster job's end) asks training to
    stop at the next step; a second SIGINT interrupts at once."""
    stop = StopRequest()

    def request(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = True

    try:
        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        yield stop
        return
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
