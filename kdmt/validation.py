"""Validation during training: the loss and BLEU of the validation set, and early stopping on them.

Validation takes the pairs that training takes (kdmt.train_data.within --max-len); its metric is the
validation BLEU (valid_bleu), or minus the validation loss when no sentence is translated for BLEU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kdmt.batching import make_batch, token_batches
from kdmt.checkpoint import Checkpoint
from kdmt.data import PreparedData, TokenizedCorpus
from kdmt.device import autocast
from kdmt.errors import KdmtError
from kdmt.languages import Pair, PairRows, bleu_key
from kdmt.metrics import score
from kdmt.model import Transformer
from kdmt.objectives import label_smoothed_nll
from kdmt.train_data import within
from kdmt.translate import SearchOptions, Translator
from kdmt.vocab import Vocab

if TYPE_CHECKING:
    from kdmt.run_state import RunState
    from kdmt.train import TrainConfig


@dataclass
class ValidSet:
    corpus: TokenizedCorpus
    src_lines: list[str]
    ref_lines: list[str]
    pairs: PairRows | None = None  # several language pairs: BLEU is measured on each one's rows
    tgt_lang: str | None = None  # one pair: the target language, BLEU's tokenizer (kdmt.metrics.score)

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


class Validator:
    """Measures a model on `valid`: the loss and perplexity of its pairs within `max_len` tokens, and
    the BLEU of the first --valid-bleu-sents of them."""

    def __init__(self, valid: ValidSet, config: TrainConfig, device: torch.device, max_len: int):
        self.valid, self.config, self.device, self.max_len = valid, config, device, max_len

    def fits(self) -> Tensor:
        """Which validation pairs are measured (a bool per pair)."""
        return within(self.valid.corpus, self.max_len)

    def check(self) -> None:
        """Refuse a validation set with no pair to measure."""
        if not self.fits().any():
            raise KdmtError(f"no validation pair is within --max-len {self.max_len} tokens")

    @torch.no_grad()
    def validate(self, model: Transformer, src_vocab: Vocab, tgt_vocab: Vocab) -> dict[str, float]:
        """valid_loss, valid_nll and valid_ppl of `model`, and its BLEU (see bleu) unless --valid-bleu-sents 0."""
        model.eval()
        corpus = self.valid.corpus
        loss_sum = nll_sum = ntokens = 0.0
        rows = self.fits().nonzero().squeeze(1)
        lengths = torch.maximum(corpus.src_len, corpus.tgt_len)[rows]
        for idx in token_batches(lengths, lengths, self.config.max_tokens):
            batch = make_batch(corpus, rows[idx]).to(self.device)
            with autocast(self.device, self.config.bf16):
                logits = model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_nll(logits, batch.tgt_out, self.config.label_smoothing)
            loss_sum, nll_sum, ntokens = loss_sum + float(loss), nll_sum + float(nll), ntokens + batch.ntokens
        result = {
            "valid_loss": loss_sum / ntokens,
            "valid_nll": nll_sum / ntokens,
            "valid_ppl": math.exp(nll_sum / ntokens),
        }
        if self.config.valid_bleu_sents != 0:
            result |= self.bleu([Checkpoint(model, src_vocab, tgt_vocab)])
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
        fits = self.fits().tolist()
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


def metric(result: dict[str, float]) -> float:
    """What early stopping and checkpoint_best.safetensors go by (higher is better): the validation BLEU, or
    minus the validation loss without BLEU."""
    return result.get("valid_bleu", -result["valid_loss"])


def record_validation(state: RunState, value: float) -> bool:
    """Count a validation at `state.step` whose metric is `value`: whether it improved on the best."""
    improved = state.best is None or value > state.best
    if improved:
        state.best, state.bad_validations = value, 0
    else:
        state.bad_validations += 1
    state.validated_at = state.step
    return improved


def patience_exhausted(state: RunState, patience: int | None) -> bool:
    """Whether --patience validations in a row have not improved (early stopping)."""
    return patience is not None and state.bad_validations >= patience
