"""Checkpoints round-trip exactly, average correctly, and are loaded safely."""

import os

import pytest
import torch

from kdmt.checkpoint import Checkpoint, average_checkpoints, load_checkpoint, save_checkpoint
from kdmt.errors import KdmtError
from kdmt.model import Transformer, make_config
from kdmt.vocab import Vocab


def test_round_trip_is_exact(toy_model, tmp_path):
    ckpt = load_checkpoint(toy_model)
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, ckpt)
    again = load_checkpoint(copy)
    assert again.model.config == ckpt.model.config
    for (name, a), (_, b) in zip(ckpt.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.src_vocab.fingerprint == ckpt.src_vocab.fingerprint
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 7, 6]])
    assert torch.equal(ckpt.model(src, tgt), again.model(src, tgt))


def test_shared_embeddings_are_saved_once(toy_data, tmp_path):
    vocab = Vocab.load(toy_data / "spm.model")
    model = Transformer(make_config(len(vocab), len(vocab), "tiny"))
    assert model.src_embed is model.tgt_embed
    save_checkpoint(tmp_path / "new.pt", Checkpoint(model, vocab, vocab))
    state = torch.load(tmp_path / "new.pt", weights_only=True)
    assert [k for k in state["model"] if "embed" in k] == ["tgt_embed.weight"]
    # A checkpoint saved before that, from CUDA, holds a second copy of the embedding.
    state["model"]["src_embed.weight"] = state["model"]["tgt_embed.weight"].clone()
    torch.save(state, tmp_path / "old.pt")
    average_checkpoints([tmp_path / "new.pt", tmp_path / "old.pt"], tmp_path / "avg.pt")
    for path in ("new.pt", "old.pt", "avg.pt"):
        again = load_checkpoint(tmp_path / path).model
        assert again.src_embed is again.tgt_embed
        for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), (path, name)


def test_average_of_two_checkpoints(toy_model, tmp_path):
    ckpt = load_checkpoint(toy_model)
    other = load_checkpoint(toy_model)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "b.pt", other)
    average_checkpoints([toy_model, tmp_path / "b.pt"], tmp_path / "avg.pt")
    avg = load_checkpoint(tmp_path / "avg.pt")
    for a, b in zip(ckpt.model.parameters(), avg.model.parameters()):
        torch.testing.assert_close(a + 0.5, b)


def test_corrupt_and_truncated_checkpoints_fail_cleanly(toy_model, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(toy_model.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2000))
    for path in (truncated, garbage, tmp_path / "missing.pt"):
        with pytest.raises(KdmtError):
            load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "kdmt-checkpoint-1", "payload": Exploit()}, evil)
    with pytest.raises(KdmtError):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_model_only_checkpoint_has_no_training_state(toy_model, tmp_path):
    ckpt = load_checkpoint(toy_model)
    assert ckpt.train_state is not None  # checkpoint_last carries it, for --resume
    save_checkpoint(tmp_path / "m.pt", Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab))
    assert load_checkpoint(tmp_path / "m.pt").train_state is None
