"""Search on a random model: incremental decoding, batching and the beam's bookkeeping."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdmt.batching import pad
from kdmt.model import Transformer, make_config
from kdmt.search import NUCLEUS_BOUND, Ensemble, Sampling, beam_search, greedy_search, most_probable
from kdmt.vocab import BOS, EOS, PAD


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(make_config(24, 24, "tiny")).eval()


def sources(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randint(4, 24, (n,), generator=g), torch.tensor([EOS])]) for n in lengths]


def test_incremental_decoding_equals_teacher_forcing(model):
    src = pad(sources([5, 3, 7]))
    tgt = torch.randint(4, 24, (3, 6))
    memory, mask = model.encode(src)
    full = model.decode(tgt, memory, mask)
    state = model.start_state(memory, mask)
    stepwise = torch.stack([model.step(tgt[:, i], state) for i in range(tgt.size(1))], dim=1)
    torch.testing.assert_close(full, stepwise, rtol=1e-4, atol=1e-4)


def test_batched_decoding_equals_one_by_one(model):
    srcs = sources([2, 9, 4, 6, 1])
    ensemble = Ensemble([model])
    batched_greedy = greedy_search(ensemble, pad(srcs))
    batched_beam = beam_search(ensemble, pad(srcs), beam=3, nbest=3)
    for i, s in enumerate(srcs):
        assert greedy_search(ensemble, s[None])[0].tokens == batched_greedy[i].tokens
        single = beam_search(ensemble, s[None], beam=3, nbest=3)[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched_beam[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched_beam[i]], abs=1e-4)


def test_nbest_is_sorted_and_respects_max_length(model):
    srcs = sources([3, 5])
    hyps = beam_search(Ensemble([model]), pad(srcs), beam=4, nbest=4, max_len_a=1.0, max_len_b=2)
    for s, nbest in zip(srcs, hyps):
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True) and len(nbest) == 4
        assert all(len(h.tokens) <= len(s) + 2 for h in nbest)


def test_an_ensemble_averages_its_models_log_probabilities(model):
    """The rule is the mean of the log-probabilities (not the log of the mean probability), in every step
    of the search: greedy search's choices and scores are those of the mean under teacher forcing."""
    torch.manual_seed(1)
    other = Transformer(make_config(24, 24, "tiny")).eval()
    x = pad(sources([4, 7, 2]))
    hyps = greedy_search(Ensemble([model, other]), x)
    for src, h in zip(x, hyps):
        tgt_in = torch.tensor([[BOS] + h.tokens])
        with torch.no_grad():
            each = [F.log_softmax(m(src[None], tgt_in)[0], dim=-1) for m in (model, other)]
        mean_logp, log_mean_p = (each[0] + each[1]) / 2, torch.logsumexp(torch.stack(each), 0) - math.log(2)
        assert (mean_logp - log_mean_p).abs().max() > 1e-2  # the two rules differ on these models
        mean_logp[:, [PAD, BOS]] = float("-inf")
        assert mean_logp[:-1].argmax(-1).tolist() == h.tokens  # (random models: EOS forced at the limit)
        steps = mean_logp.gather(1, torch.tensor(h.tokens + [EOS])[:, None])
        assert float(steps.sum()) / (len(h.tokens) + 1) == pytest.approx(h.score, abs=1e-4)


@pytest.mark.parametrize("lenpen", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(lenpen):
    """Vocabulary {UNK, EOS, 4, 5, 6}, at most 3 tokens: score every possible output by teacher forcing."""
    torch.manual_seed(1)
    model = Transformer(make_config(7, 7, "tiny")).eval()
    with torch.no_grad():
        model.tgt_embed.weight.mul_(8.0)  # peaky distributions: no near-ties
    src = torch.tensor([[4, 5, 6, 3]])
    content = [1, 4, 5, 6]
    outputs = [[]] + [[a] for a in content] + [[a, b] for a in content for b in content]
    outputs += [[a, b, c] for a in content for b in content for c in content]
    memory, mask = model.encode(src)
    scored = []
    with torch.no_grad():
        for out in outputs:
            tgt_in = torch.tensor([[2] + out])
            logp = torch.log_softmax(model.decode(tgt_in, memory, mask)[0], dim=-1)
            total = sum(float(logp[i, t]) for i, t in enumerate(out + [EOS]))
            scored.append((total / (len(out) + 1) ** lenpen, out))
    scored.sort(key=lambda x: -x[0])
    assert scored[0][0] - scored[1][0] > 1e-3
    hyps = beam_search(Ensemble([model]), src, beam=64, nbest=5, lenpen=lenpen, max_len_a=0.0, max_len_b=3)[0]
    assert [h.tokens for h in hyps] == [out for _, out in scored[:5]]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in scored[:5]], abs=1e-4)


class NeverEnds(Transformer):
    """A model that never chooses EOS: its hypotheses run to the length limit."""

    def output(self, h):
        logits = super().output(h)
        logits[..., EOS] = -1e9
        return logits


def test_output_length_is_capped_by_the_position_table():
    """a·|src| + b beyond max_positions must stop at the last position instead of failing."""
    torch.manual_seed(2)
    model = NeverEnds(make_config(24, 24, "tiny", max_positions=8)).eval()
    x = pad(sources([7, 3]))
    ensemble = Ensemble([model])
    for hyps in (greedy_search(ensemble, x), [h[0] for h in beam_search(ensemble, x, beam=3)]):
        assert [len(h.tokens) for h in hyps] == [7, 7]


class EndsAtOnce(Transformer):
    """A model that prefers EOS at every step: unconstrained, its translations are empty."""

    def output(self, h):
        logits = super().output(h)
        logits[..., EOS] = logits.max(-1).values + 5.0
        return logits


def test_min_len_keeps_eos_back_until_that_many_tokens_and_beam_one_equals_greedy():
    torch.manual_seed(3)
    ensemble = Ensemble([EndsAtOnce(make_config(24, 24, "tiny")).eval()])
    x = pad(sources([4, 6, 2]))
    assert [h.tokens for h in greedy_search(ensemble, x)] == [[], [], []]
    assert [h[0].tokens for h in beam_search(ensemble, x, beam=3)] == [[], [], []]
    for min_len in (1, 3):
        greedy = greedy_search(ensemble, x, min_len=min_len)
        beam_one = [h[0] for h in beam_search(ensemble, x, beam=1, min_len=min_len)]
        assert [len(h.tokens) for h in greedy] == [min_len] * 3  # EOS as soon as it is allowed
        assert [h.tokens for h in beam_one] == [h.tokens for h in greedy]
        assert [h.score for h in beam_one] == pytest.approx([h.score for h in greedy], abs=1e-4)
        nbest = beam_search(ensemble, x, beam=3, nbest=3, min_len=min_len)
        assert all(len(h.tokens) >= min_len for hyps in nbest for h in hyps)
    short = greedy_search(ensemble, x, max_len_a=0.0, max_len_b=2, min_len=5)  # the maximum length wins
    assert [len(h.tokens) for h in short] == [2, 2, 2] and all(math.isfinite(h.score) for h in short)
    assert [len(h[0].tokens) for h in beam_search(ensemble, x, beam=3, max_len_a=0.0, max_len_b=2, min_len=5)] == [
        2
    ] * 3


@pytest.mark.parametrize("sampling", [Sampling(topp=0.9), Sampling(topp=0.3), Sampling(topk=7)])
def test_the_sampled_head_is_that_of_the_full_sort(sampling):
    """Sampling looks for the nucleus among the top NUCLEUS_BOUND tokens and sorts only the rows whose
    nucleus is larger: for peaked and flat rows alike, the tokens it can draw, in order, with their
    probabilities, are those of the whole vocabulary sorted."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3000, generator=g)
    logits[::2] *= 12  # peaked rows: their nucleus is a few tokens; the others' is hundreds
    probs, order = most_probable(logits, sampling)
    full, full_order = logits.softmax(-1).sort(dim=-1, descending=True, stable=True)
    reach = sampling.topk or int(((full.cumsum(-1) - full) < sampling.topp).sum(-1).max())
    assert probs.size(1) >= reach and (sampling.topk or reach > NUCLEUS_BOUND)
    for row in range(12):
        size = sampling.topk or int(((full[row].cumsum(-1) - full[row]) < sampling.topp).sum())
        assert order[row, :size].tolist() == full_order[row, :size].tolist()
        torch.testing.assert_close(probs[row, :size], full[row, :size], rtol=0, atol=0)
