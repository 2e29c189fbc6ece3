"""Checkpoints round-trip exactly, average correctly, and are loaded safely: never unpickled (older .pt files
by torch's weights-only unpickler), refused when corrupted, truncated or not checkpoints at all."""

import json
import os
import pickle
import stat
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import assert_fails, kdmt, write
from toy import train_toy

from kdmt.checkpoint import (
    LEGACY_FORMAT,
    Checkpoint,
    average_checkpoints,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from kdmt.errors import KdmtError
from kdmt.model import Transformer, make_config
from kdmt.run_dir import LAST, LEGACY_LAST, check_out_dir
from kdmt.vocab import Vocab, train_vocab


@pytest.fixture(scope="module")
def run_last(toy_data, tmp_path_factory):
    """The last checkpoint of a 3-step run of the real trainer: weights, optimizer, random state."""
    out = tmp_path_factory.mktemp("run")
    train_toy(toy_data, out, max_steps=3, valid_interval=2, dropout=0.1)
    return out / LAST


def save_legacy(path, ckpt: Checkpoint, **model):
    """A checkpoint as kdmt wrote it before safetensors: one pickled dict (`model` replaces weights)."""
    state = {
        "format": LEGACY_FORMAT,
        "config": asdict(ckpt.model.config),
        "model": {**ckpt.model.state_dict(), **model},
        "src_vocab": ckpt.src_vocab.to_tensor(),
        "tgt_vocab": ckpt.tgt_vocab.to_tensor(),
        "meta": ckpt.meta,
        "train_state": ckpt.train_state,
    }
    torch.save(state, path)


def assert_same(a, b, where="") -> None:
    """Equal values of equal types all the way down (tensors: equal dtype, shape and values)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def assert_same_weights(a: Transformer, b: Transformer) -> None:
    assert a.config == b.config
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_round_trip_is_exact(run_last, tmp_path):
    ckpt = load_checkpoint(run_last)
    save_checkpoint(tmp_path / "copy.safetensors", ckpt)
    again = load_checkpoint(tmp_path / "copy.safetensors")
    assert_same_weights(ckpt.model, again.model)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "copy.safetensors").stat().st_mode) == 0o666 & ~umask  # not private
    assert again.src_vocab.fingerprint == ckpt.src_vocab.fingerprint
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 7, 6]])
    assert torch.equal(ckpt.model(src, tgt), again.model(src, tgt))


def test_training_state_and_meta_round_trip_with_their_types(run_last, tmp_path):
    """The optimizer's state is keyed by int and its betas a tuple; the random state a uint8 tensor: all
    come back as they were saved (a str key would make the optimizer drop its moments)."""
    ckpt = load_checkpoint(run_last)
    s = ckpt.train_state
    assert isinstance(s["optimizer"]["param_groups"][0]["betas"], tuple) and 0 in s["optimizer"]["state"]
    s["rng_ranks"] = [{"cpu": s["rng_cpu"], "cuda": None}, {"cpu": s["rng_cpu"], "cuda": None}]  # shared memory
    save_checkpoint(tmp_path / "copy.safetensors", ckpt)
    again = load_checkpoint(tmp_path / "copy.safetensors")
    assert_same(again.train_state, s)
    assert_same(again.meta, ckpt.meta)
    names = safe_open(tmp_path / "copy.safetensors", "pt").keys()
    assert "train_state/optimizer/state/3/exp_avg" in names and "train_state/rng_cpu" in names


def test_shared_embeddings_are_saved_once(toy_data, tmp_path):
    vocab = Vocab.load(toy_data / "spm.model")
    model = Transformer(make_config(len(vocab), len(vocab), "tiny"))
    assert model.src_embed is model.tgt_embed
    save_checkpoint(tmp_path / "new.safetensors", Checkpoint(model, vocab, vocab))
    names = safe_open(tmp_path / "new.safetensors", "pt").keys()
    assert [k for k in names if "embed" in k] == ["model/tgt_embed.weight"]
    # An older .pt saved from CUDA holds a second copy of the embedding.
    save_legacy(tmp_path / "old.pt", Checkpoint(model, vocab, vocab), **{"src_embed.weight": model.src_embed.weight})
    average_checkpoints([tmp_path / "new.safetensors", tmp_path / "old.pt"], tmp_path / "avg.safetensors")
    for path in ("new.safetensors", "old.pt", "avg.safetensors"):
        again = load_checkpoint(tmp_path / path).model
        assert again.src_embed is again.tgt_embed
        assert_same_weights(model, again)


def test_average_of_two_checkpoints(run_last, tmp_path):
    ckpt = load_checkpoint(run_last)
    other = load_checkpoint(run_last)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "b.safetensors", other)
    average_checkpoints([run_last, tmp_path / "b.safetensors"], tmp_path / "avg.safetensors")
    avg = load_checkpoint(tmp_path / "avg.safetensors")
    for a, b in zip(ckpt.model.parameters(), avg.model.parameters()):
        torch.testing.assert_close(a + 0.5, b)


def test_average_refuses_another_source_vocabulary(run_last, tmp_path):
    """Same sizes, same target vocabulary, another source one: the averaged model would mix two meanings
    of each source id."""
    ckpt = load_checkpoint(run_last)
    letters = write(tmp_path / "letters.txt", [" ".join("klmnopqrst"[i:] + "klmnopqrst"[:i]) for i in range(10)])
    other = train_vocab(tmp_path / "other.model", letters, len(ckpt.src_vocab), model_type="word")
    assert len(other) == len(ckpt.src_vocab) and other.fingerprint != ckpt.src_vocab.fingerprint
    save_checkpoint(tmp_path / "other.safetensors", Checkpoint(ckpt.model, other, ckpt.tgt_vocab))
    with pytest.raises(KdmtError, match="another architecture or vocabulary"):
        average_checkpoints([run_last, tmp_path / "other.safetensors"], tmp_path / "avg.safetensors")
    assert not (tmp_path / "avg.safetensors").exists()


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def test_a_flipped_byte_is_refused(run_last, tmp_path):
    """One byte changed in the middle of the weights, or one digit of the record: refused by the hash,
    in one line, and the earlier output is kept."""
    data = run_last.read_bytes()
    tensors_start = 8 + int.from_bytes(data[:8], "little")
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(flipped(data, (tensors_start + len(data)) // 2))
    config = tmp_path / "config.safetensors"
    config.write_bytes(data.replace(b'\\"d_model\\": 64', b'\\"d_model\\": 32', 1))
    assert config.read_bytes() != data
    for path in (weights, config):
        with pytest.raises(KdmtError, match="corrupted"):
            load_checkpoint(path)
    out = write(tmp_path / "out.txt", ["earlier output"])
    assert_fails(kdmt("translate", "-m", weights, "-i", write(tmp_path / "in", ["a b"]), "-o", out), "corrupted")
    assert out.read_text() == "earlier output\n"


def test_truncated_and_other_kinds_of_files_are_refused(run_last, tmp_path):
    data = run_last.read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) - 100])
    (tmp_path / "header-only").write_bytes(data[:5000])
    (tmp_path / "text").write_text("not a checkpoint at all\n")
    (tmp_path / "random").write_bytes(np.random.default_rng(0).bytes(2000))
    np.save(tmp_path / "array.npy", np.zeros((4, 4)))
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as z:
        z.writestr("data.txt", "hello")
    save_file({"weight": torch.zeros(3)}, tmp_path / "foreign.safetensors")  # another program's safetensors
    (tmp_path / "empty").write_bytes(b"")
    kinds = ("truncated", "header-only", "text", "random", "array.npy", "archive.zip", "foreign.safetensors", "empty")
    for name in kinds:
        with pytest.raises(KdmtError, match="not a (readable )?kdmt checkpoint"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(KdmtError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    assert_fails(kdmt("export", tmp_path / "truncated", "-o", tmp_path / "out"), "not a readable kdmt checkpoint")
    assert not (tmp_path / "out").exists()


class Exploit:
    """Unpickled, it runs a shell command: touches the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(run_last, tmp_path):
    """In an older kdmt's .pt (torch's zip of a pickle), as a bare pickle, or in a file named .safetensors:
    refused, and the code never runs."""
    marker = tmp_path / "pwned"
    ckpt = load_checkpoint(run_last)
    save_legacy(tmp_path / "evil.pt", Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab, {"x": Exploit(marker)}))
    torch.save({"format": LEGACY_FORMAT, "payload": Exploit(marker)}, tmp_path / "evil.safetensors")
    (tmp_path / "bare.safetensors").write_bytes(pickle.dumps({"format": LEGACY_FORMAT, "x": Exploit(marker)}))
    for name in ("evil.pt", "evil.safetensors", "bare.safetensors"):
        with pytest.raises(KdmtError, match="not a readable kdmt checkpoint"):
            load_checkpoint(tmp_path / name)
        assert_fails(kdmt("convert-checkpoint", tmp_path / name), "checkpoint")
    assert not marker.exists()


def test_an_older_pt_loads_and_converts_with_its_training_state(run_last, tmp_path, capsys):
    ckpt = load_checkpoint(run_last)
    old = tmp_path / "run" / LEGACY_LAST
    old.parent.mkdir()
    save_legacy(old, ckpt)
    again = load_checkpoint(old)
    assert "kdmt convert-checkpoint" in capsys.readouterr().err
    assert_same_weights(ckpt.model, again.model)
    assert_same(again.train_state, ckpt.train_state)
    with pytest.raises(KdmtError, match="convert"):  # a resume would not find it
        check_out_dir(old.parent, resume=True)

    result = kdmt("convert-checkpoint", old)
    assert result.exit_code == 0, result.stderr
    converted = load_checkpoint(old.parent / LAST)
    assert_same_weights(ckpt.model, converted.model)
    assert_same(converted.train_state, ckpt.train_state)
    assert_same(converted.meta, ckpt.meta)
    check_out_dir(old.parent, resume=True)
    assert convert_checkpoint(old, tmp_path / "elsewhere.safetensors") == tmp_path / "elsewhere.safetensors"
    assert_fails(kdmt("convert-checkpoint", run_last), "nothing to convert")
    assert_fails(kdmt("convert-checkpoint", old, old, "-o", tmp_path / "x"), "--out takes one checkpoint")


def test_model_only_checkpoint_has_no_training_state(run_last, tmp_path):
    ckpt = load_checkpoint(run_last)
    assert ckpt.train_state is not None  # checkpoint_last carries it, for --resume
    save_checkpoint(tmp_path / "m.safetensors", Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab))
    assert load_checkpoint(tmp_path / "m.safetensors").train_state is None
    assert json.loads(safe_open(tmp_path / "m.safetensors", "pt").metadata()["record"])["train_state"] is None
