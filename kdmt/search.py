"""Greedy and batched beam search over one model or an ensemble, with incremental decoding.

Beam search follows fairseq's conventions: 2·beam candidates per sentence and step, a hypothesis
ending in EOS among the top `beam` candidates is finalized with its score divided by length**lenpen
(its length counting EOS), and a sentence is done once `beam` hypotheses are final, or when it
reaches its maximum length, max_len_a·|src| + max_len_b tokens (never more than the models' positions
allow: max_positions − 1, the first position being BOS's). A hypothesis ends in EOS only once it holds
`min_len` tokens (the commands' --min-len, 1: never an empty translation), unless the maximum length comes
first. Done sentences leave the batch, so a step costs less as the batch finishes. There is no Python loop
over sentences or beams in a step.

Sampling (`sample_search`) draws N independent translations a sentence, from the ensemble's distribution
at a temperature, cut to its top k tokens or its top-p nucleus. Each sentence's draws come from its own
generator, seeded with (seed, line number) alone, so they do not depend on the batch, the shard or the
process that translates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdmt.errors import KdmtError
from kdmt.model import DecoderState, Transformer
from kdmt.vocab import BOS, EOS, PAD


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of beam search: from the top `topk` tokens (0: all) or the smallest set whose
    probability reaches `topp` (1: all), at `temperature`; `seed` with the line number seeds each sentence."""

    topk: int = 0
    topp: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str, temperature: float = 1.0, seed: int = 0) -> Sampling:
        """'topk:K' or 'topp:P' (the --sampling option)."""
        kind, _, value = text.partition(":")
        try:
            if kind == "topk" and int(value) >= 1:
                return cls(topk=int(value), temperature=temperature, seed=seed)
            if kind == "topp" and 0 < float(value) <= 1:
                return cls(topp=float(value), temperature=temperature, seed=seed)
        except ValueError:
            pass
        raise KdmtError(f"--sampling takes topk:K (K ≥ 1) or topp:P (0 < P ≤ 1), not {text!r}")

    def line_seed(self, line: int) -> int:
        """The seed of line `line`'s generator: 32 bits (torch's CPU generator keeps only those), distinct
        for the lines of one seed, and far apart for seeds that differ."""
        return (line + self.seed * 2654435761) % 2**32


@dataclass
class Hypothesis:
    tokens: list[int]  # without EOS
    score: float  # sum of log-probabilities, divided by length**lenpen


class Ensemble:
    """Models with one target vocabulary that decode together, averaging their log-probabilities."""

    def __init__(self, models: list[Transformer]):
        self.models = models
        self.max_positions = min(m.config.max_positions for m in models)

    def start(self, src: Tensor) -> list[DecoderState]:
        return [m.start_state(*m.encode(src)) for m in self.models]

    def step(self, tokens: Tensor, states: list[DecoderState]) -> Tensor:
        """Log-probabilities (B, V), float32, of the next token."""
        logp = [F.log_softmax(m.step(tokens, s).float(), dim=-1) for m, s in zip(self.models, states)]
        logp = logp[0] if len(logp) == 1 else torch.stack(logp).mean(0)
        logp[:, [PAD, BOS]] = float("-inf")  # never generated
        return logp

    @staticmethod
    def select(states: list[DecoderState], rows: Tensor, sentences: Tensor | None = None) -> list[DecoderState]:
        return [s.select(rows, sentences) for s in states]


def max_lengths(src: Tensor, a: float, b: int, max_positions: int) -> Tensor:
    """Longest allowed hypothesis (without EOS) per sentence: a·|src| + b, |src| counting EOS, and at most
    max_positions − 1, so that BOS and the hypothesis fit the position table."""
    return ((src != PAD).sum(1) * a + b).long().clamp(0, max_positions - 1)


@torch.no_grad()
def greedy_search(
    ensemble: Ensemble,
    src: Tensor,
    lenpen: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
) -> list[Hypothesis]:
    """The most probable next token at every step, per sentence (EOS once `min_len` tokens are there)."""
    return token_by_token(ensemble, src, lambda logp, active, t: logp.argmax(-1), lenpen, max_len_a, max_len_b, min_len)


def token_by_token(
    ensemble: Ensemble,
    src: Tensor,
    pick: Callable[[Tensor, Tensor, int], Tensor],
    lenpen: float,
    max_len_a: float,
    max_len_b: int,
    min_len: int,
) -> list[Hypothesis]:
    """One hypothesis per sentence, one token a step: `pick(logp, active, t)` chooses the next token of each
    active row from its log-probabilities (EOS forbidden before `min_len` tokens, forced at the length limit);
    a row ends at EOS. The score is the log-probability under the ensemble divided by length**lenpen, the
    length counting EOS."""
    n, device = src.size(0), src.device
    states = ensemble.start(src)
    limit = max_lengths(src, max_len_a, max_len_b, ensemble.max_positions)
    out = torch.full((n, int(limit.max()) + 1), PAD, dtype=torch.long, device=device)
    score = torch.zeros(n, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=device)
    for t in range(out.size(1)):
        logp = ensemble.step(tokens, states)
        if t < min_len:
            logp[t < limit[active], EOS] = float("-inf")
        next_tokens = pick(logp, active, t)
        next_tokens[t >= limit[active]] = EOS
        out[active, t] = next_tokens
        score[active] += logp.gather(1, next_tokens[:, None]).squeeze(1)
        length[active] = t + 1
        keep = next_tokens != EOS
        if not keep.all():
            if not keep.any():
                break
            active, next_tokens = active[keep], next_tokens[keep]
            kept = keep.nonzero().squeeze(1)
            states = ensemble.select(states, kept, kept)
        tokens = next_tokens
    score = (score / length.float() ** lenpen).tolist()
    return [Hypothesis(row[: m - 1].tolist(), s) for row, m, s in zip(out.cpu(), length.tolist(), score)]


@torch.no_grad()
def beam_search(
    ensemble: Ensemble,
    src: Tensor,
    beam: int = 5,
    lenpen: float = 1.0,
    nbest: int = 1,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first, each of at least `min_len` tokens (unless the
    maximum length is shorter)."""
    n, k, device = src.size(0), beam, src.device
    limit_all = max_lengths(src, max_len_a, max_len_b, ensemble.max_positions)
    width = int(limit_all.max()) + 1
    states = [s.with_group(k) for s in ensemble.start(src)]

    # Finished hypotheses of every sentence of the batch: the best k so far, and how many were finalized.
    fin_tokens = torch.full((n, k, width), PAD, dtype=torch.long, device=device)
    fin_scores = torch.full((n, k), float("-inf"), device=device)
    fin_count = torch.zeros(n, dtype=torch.long, device=device)

    # Active sentences: their index in the batch, the k live hypotheses, their summed log-probs.
    active = torch.arange(n, device=device)
    seqs = torch.empty((n * k, 0), dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at the start all beams are equal: expand only the first
    tokens = torch.full((n * k,), BOS, dtype=torch.long, device=device)

    for t in range(width):
        m = active.numel()
        logp = ensemble.step(tokens, states).view(m, k, -1)
        at_limit = t >= limit_all[active]
        if t < min_len:
            logp[~at_limit, :, EOS] = float("-inf")
        if at_limit.any():  # force EOS for sentences at their maximum length
            eos_logp = logp[at_limit, :, EOS]
            logp[at_limit] = float("-inf")
            logp[at_limit, :, EOS] = eos_logp
        vocab = logp.size(-1)
        cand_scores, cand_index = (scores[:, :, None] + logp).view(m, -1).topk(2 * k, dim=1)
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab

        # Hypotheses ending in EOS among the top k candidates become final.
        is_eos = cand_token == EOS
        finalize = is_eos & (torch.arange(2 * k, device=device) < k) & torch.isfinite(cand_scores)
        if finalize.any():
            flat_beam = torch.arange(m, device=device)[:, None] * k + cand_beam  # (m, 2k)
            new_tokens = torch.full((m, 2 * k, width), PAD, dtype=torch.long, device=device)
            new_tokens[:, :, :t] = seqs[flat_beam]
            new_tokens[:, :, t] = EOS
            new_scores = torch.where(finalize, cand_scores / (t + 1) ** lenpen, float("-inf"))
            all_scores = torch.cat([fin_scores[active], new_scores], dim=1)
            all_tokens = torch.cat([fin_tokens[active], new_tokens], dim=1)
            best_scores, best = all_scores.topk(k, dim=1)
            fin_scores[active] = best_scores
            fin_tokens[active] = all_tokens.gather(1, best[:, :, None].expand(-1, -1, width))
            fin_count[active] += finalize.sum(1)

        done = (fin_count[active] >= k) | at_limit
        if done.all():
            break

        # The k best candidates that do not end in EOS live on.
        rank = torch.arange(2 * k, device=device).expand(m, -1) + is_eos * 2 * k
        live = rank.topk(k, dim=1, largest=False).indices
        beam_of = cand_beam.gather(1, live)
        rows = (torch.arange(m, device=device)[:, None] * k + beam_of).view(-1)
        tokens = cand_token.gather(1, live).view(-1)
        scores = cand_scores.gather(1, live)
        seqs = torch.cat([seqs[rows], tokens[:, None]], dim=1)

        keep, sentences = ~done, None
        if not keep.all():  # finished sentences leave the batch
            rows = rows.view(m, k)[keep].view(-1)
            keep_rows = keep.repeat_interleave(k)
            tokens, seqs, scores, active = tokens[keep_rows], seqs[keep_rows], scores[keep], active[keep]
            sentences = keep.nonzero().squeeze(1)
        states = ensemble.select(states, rows, sentences)

    result = []
    fin_scores, fin_tokens = fin_scores.cpu(), fin_tokens.cpu()  # one transfer, not one per hypothesis
    order = fin_scores.argsort(dim=1, descending=True)
    for i in range(n):
        hyps = []
        for j in order[i, :nbest].tolist():
            if not torch.isfinite(fin_scores[i, j]):
                break
            row = fin_tokens[i, j]
            length = int((row == EOS).nonzero()[0])
            hyps.append(Hypothesis(row[:length].tolist(), float(fin_scores[i, j])))
        result.append(hyps)
    return result


@torch.no_grad()
def sample_search(
    ensemble: Ensemble,
    src: Tensor,
    n: int,
    sampling: Sampling,
    seeds: list[int],
    lenpen: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
) -> list[list[Hypothesis]]:
    """`n` samples per sentence, in the order drawn, each sentence's from a generator seeded with its
    `seeds` entry (one uniform number a sample and step, drawn on the CPU: the same on any device). A
    hypothesis's score is its log-probability under the ensemble (without temperature or cut) divided by
    length**lenpen, its length counting EOS, as beam search's."""
    b, device = src.size(0), src.device
    limit = max_lengths(src, max_len_a, max_len_b, ensemble.max_positions).repeat_interleave(n)
    width = int(limit.max()) + 1
    uniform = torch.zeros(b * n, width)
    for i, seed in enumerate(seeds):  # each sentence's draws depend on its seed and its own length limit
        own = int(limit[i * n]) + 1
        uniform[i * n : (i + 1) * n, :own] = torch.rand(n, own, generator=torch.Generator().manual_seed(seed))
    uniform = uniform.to(device)

    def pick(logp: Tensor, active: Tensor, t: int) -> Tensor:
        probs, order = most_probable(logp / sampling.temperature, sampling)
        cum = probs.cumsum(-1)
        if sampling.topp < 1:
            probs = torch.where(cum - probs < sampling.topp, probs, 0.0)  # the nucleus, its first token always in
            cum = probs.cumsum(-1)
        chosen = torch.searchsorted(cum, (uniform[active, t] * cum[:, -1])[:, None], right=True)
        chosen = chosen.clamp(max=probs.size(1) - 1)
        chosen = torch.where(probs.gather(1, chosen) > 0, chosen, torch.zeros_like(chosen))  # never a token cut off
        return order.gather(1, chosen).squeeze(1)

    hyps = token_by_token(ensemble, src.repeat_interleave(n, 0), pick, lenpen, max_len_a, max_len_b, min_len)
    return [hyps[i * n : (i + 1) * n] for i in range(b)]


NUCLEUS_BOUND = 64  # the tokens a nucleus is first looked for in; rows whose nucleus is larger are sorted whole


def most_probable(logits: Tensor, sampling: Sampling) -> tuple[Tensor, Tensor]:
    """The probabilities of `logits`' rows in descending order, and their token ids, as far as sampling can
    reach: the top k, or for top-p enough of the head to hold the nucleus. A full sort of the vocabulary costs
    several times a decoder step on a CPU, so the head comes from `topk` and only rows whose top
    NUCLEUS_BOUND tokens hold less than p are sorted whole (padded with zero probabilities)."""
    probs = logits.softmax(-1)
    vocab = probs.size(-1)
    if sampling.topk:
        return probs.topk(min(sampling.topk, vocab), dim=-1)
    if sampling.topp >= 1 or vocab <= NUCLEUS_BOUND:
        return probs.sort(dim=-1, descending=True, stable=True)
    head, order = probs.topk(NUCLEUS_BOUND, dim=-1)
    wide = (head.cumsum(-1)[:, -1] < sampling.topp).nonzero().squeeze(1)
    if wide.numel() == 0:
        return head, order
    full, full_order = probs[wide].sort(dim=-1, descending=True, stable=True)
    width = int(((full.cumsum(-1) - full) < sampling.topp).sum(-1).max())  # the widest nucleus
    head = F.pad(head, (0, width - NUCLEUS_BOUND))
    order = F.pad(order, (0, width - NUCLEUS_BOUND))
    head[wide], order[wide] = full[:, :width], full_order[:, :width]
    return head, order
