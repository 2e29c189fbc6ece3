"""A tiny model really learns a toy task, and searching it behaves."""

import sys

import pytest
import torch
from toy import decided, toy_pairs, toy_setup, train_toy

from kdmt.batching import pad
from kdmt.checkpoint import load_checkpoint
from kdmt.data import load_corpus
from kdmt.model import Transformer, make_config
from kdmt.run_dir import LAST
from kdmt.search import Ensemble, beam_search, greedy_search
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.translate import SearchOptions, Translator

BF16_MARGIN = 0.5  # nats: bf16's rounding moves the toy model's log-probabilities by less than half of it


def exact_match(hyps: list[str], refs: list[str]) -> float:
    return sum(h == r for h, r in zip(hyps, refs)) / len(refs)


def test_tiny_model_learns_to_reverse(toy_model):
    ckpt = load_checkpoint(toy_model)
    src, ref = toy_pairs(200, seed=5)  # unseen sequences
    greedy = Translator([ckpt], SearchOptions(beam=1)).translate(src)
    beam = Translator([ckpt], SearchOptions(beam=4)).translate(src)
    assert exact_match(greedy, ref) >= 0.95
    assert exact_match(beam, ref) >= 0.95


def test_beam_one_equals_greedy(toy_model):
    ckpt = load_checkpoint(toy_model)
    src, _ = toy_pairs(100, seed=6, min_len=1, max_len=15)  # some longer than anything seen: odd outputs
    ids = [ckpt.src_vocab.encode([s])[0] + [3] for s in src]
    x = pad([torch.tensor(i) for i in ids])
    ensemble = Ensemble([ckpt.model])
    greedy = greedy_search(ensemble, x)
    beam = [h[0] for h in beam_search(ensemble, x, beam=1)]
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-4)


def test_translator_keeps_order_and_empty_lines(toy_model):
    ckpt = load_checkpoint(toy_model)
    src = ["a b c", "", "j i h g f e", "   ", "d"]
    out = Translator([ckpt], SearchOptions(beam=2, batch_tokens=8)).translate(src)
    assert out[1] == "" and out[3] == ""
    assert out[0] == "c b a" and out[2] == "e f g h i j"


def test_out_of_memory_halves_the_batch(toy_model, monkeypatch):
    import kdmt.translate

    ckpt = load_checkpoint(toy_model)
    src, _ = toy_pairs(30, seed=8)
    expected = Translator([ckpt], SearchOptions(beam=3)).translate(src)
    real_search, decoded = kdmt.translate.beam_search, []

    def small_memory(ensemble, x, *args):
        if x.size(0) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        decoded.append(x.size(0))
        return real_search(ensemble, x, *args)

    monkeypatch.setattr(kdmt.translate, "beam_search", small_memory)
    assert Translator([ckpt], SearchOptions(beam=3)).translate(src) == expected
    assert sum(decoded) == 30 and max(decoded) <= 4


def test_out_of_memory_retries_after_leaving_the_handler(toy_model, monkeypatch):
    """The halves are decoded once the error is handled: its traceback no longer holds the failed batch."""
    import kdmt.translate

    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))
    src, _ = toy_pairs(30, seed=8)
    real_search, handling = kdmt.translate.beam_search, []

    def small_memory(ensemble, x, *args):
        handling.append(sys.exc_info()[0])
        if x.size(0) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_search(ensemble, x, *args)

    monkeypatch.setattr(kdmt.translate, "beam_search", small_memory)
    translator.translate(src)
    assert len(handling) > 1 and handling == [None] * len(handling)

    def no_memory(ensemble, x, *args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(kdmt.translate, "beam_search", no_memory)
    with pytest.raises(torch.OutOfMemoryError):  # not even one sentence fits
        translator.translate(src)


def test_bf16_decoding_on_the_cpu_agrees_with_float32(toy_model):
    """Models converted to bf16 (as on CUDA) decode as in float32 wherever greedy search decides each step
    by more than bf16's rounding moves the log-probabilities."""
    src = toy_pairs(100, seed=7)[0]
    reference = Translator([load_checkpoint(toy_model)], SearchOptions(beam=1))
    hyps = Translator([load_checkpoint(toy_model)], SearchOptions(beam=1), dtype=torch.bfloat16).translate(src)
    expected = reference.translate(src)
    assert all(hyps[i] == expected[i] for i in decided(reference, src, BF16_MARGIN))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bf16_training_and_decoding_on_the_gpu(toy_data, tmp_path):
    """Training with bf16 autocast on the GPU learns the task, decoding in bf16 there agrees with float32
    on the CPU, and the checkpoint written on the GPU loads on the CPU."""
    trainer, _ = train_toy(toy_data, tmp_path, device="cuda", bf16=True)
    assert next(trainer.model.parameters()).is_cuda
    cpu = load_checkpoint(tmp_path / LAST)
    assert not next(cpu.model.parameters()).is_cuda
    src, ref = toy_pairs(100, seed=7)
    reference = Translator([cpu], SearchOptions(beam=1))
    expected = reference.translate(src)
    assert exact_match(expected, ref) >= 0.9
    gpu = Translator([load_checkpoint(tmp_path / LAST, "cuda")], SearchOptions(beam=1), dtype=torch.bfloat16)
    hyps = gpu.translate(src)
    assert all(hyps[i] == expected[i] for i in decided(reference, src, BF16_MARGIN))


def test_validation_skips_pairs_longer_than_training_takes(toy_model, toy_data, tmp_path, capsys):
    """A validation pair longer than the model's 64 positions (and so than training takes): the loss and
    BLEU (of the trained toy model) leave it out, as training does, instead of failing
    in the embedding."""
    vocab, train, valid = toy_setup(toy_data)
    long = " ".join("abcdefghij"[i % 10] for i in range(80))
    src, ref = [long, *valid.src_lines], [" ".join(reversed(long.split())), *valid.ref_lines]
    for side, lines in (("src", src), ("ref", ref)):
        (tmp_path / side).write_text("".join(line + "\n" for line in lines))
    with_long = ValidSet(load_corpus(tmp_path / "src", tmp_path / "ref", vocab, vocab), src, ref)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny", max_positions=64, dropout=0.0))
    model.load_state_dict(load_checkpoint(toy_model).model.state_dict())
    config = TrainConfig(max_tokens=1500, lr=1e-5, max_steps=1, valid_interval=1, valid_bleu_sents=5)
    trainer = Trainer(model, vocab, vocab, train, with_long, tmp_path / "out", config, torch.device("cpu"))
    result = trainer.run()
    assert "skipping 1 validation pairs longer than 64 tokens" in capsys.readouterr().err
    trainer.validator.valid = valid
    assert result["valid_bleu"] > 30  # far from 0: the untranslated long pair would change it
    assert trainer.validate() == pytest.approx({k: v for k, v in result.items() if k.startswith("valid_")})
