"""Search on a random model: incremental decoding, batching and the beam's bookkeeping."""

import pytest
import torch

from kdmt.batching import pad
from kdmt.model import Transformer, make_config
from kdmt.search import Ensemble, beam_search, greedy_search
from kdmt.vocab import EOS


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


def test_ensemble_of_a_model_with_itself_equals_the_model(model):
    x = pad(sources([4, 7, 2]))
    alone = beam_search(Ensemble([model]), x, beam=3)
    twice = beam_search(Ensemble([model, model]), x, beam=3)
    assert [h[0].tokens for h in alone] == [h[0].tokens for h in twice]
