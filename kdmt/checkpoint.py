"""Checkpoints: saved atomically, loaded safely (weights_only), averaged.

A checkpoint carries the model config and the sentencepiece models, so the file alone rebuilds a
translator. Training state (optimizer, step, data position, random state) is present only in the
checkpoints that a run can resume from.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdmt.errors import KdmtError
from kdmt.files import atomic_path
from kdmt.model import ModelConfig, Transformer
from kdmt.vocab import Vocab

FORMAT = "kdmt-checkpoint-1"
SRC_EMBED = "src_embed.weight"  # with shared embeddings, the tensor of tgt_embed.weight: saved only as that


@dataclass
class Checkpoint:
    model: Transformer
    src_vocab: Vocab
    tgt_vocab: Vocab
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write a checkpoint atomically: an interrupted save never leaves a half-written file. A shared
    embedding is saved once (`.cpu()` would copy a CUDA tensor once for each of its names)."""
    shared = ckpt.model.config.share_embeddings
    state = {
        "format": FORMAT,
        "config": asdict(ckpt.model.config),
        "model": {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items() if not (shared and k == SRC_EMBED)},
        "src_vocab": ckpt.src_vocab.to_tensor(),
        "tgt_vocab": ckpt.tgt_vocab.to_tensor(),
        "meta": ckpt.meta,
    }
    if ckpt.train_state is not None:
        state["train_state"] = ckpt.train_state
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # how torch's writer reports a failed write (a full disk)
            reason = f"cannot write the checkpoint (a full disk?): {str(e).splitlines()[0]}"
            raise OSError(errno.EIO, reason, str(path)) from None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise KdmtError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KdmtError(f"{path}: not a readable kdmt checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise KdmtError(f"{path}: not a kdmt checkpoint")
    return state


def _parameters(saved: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A saved model's parameters by name, a shared embedding under both its names (older checkpoints
    hold it twice)."""
    if config.share_embeddings and "tgt_embed.weight" in saved:
        return {SRC_EMBED: saved["tgt_embed.weight"], **saved}
    return saved


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (in eval mode, on `device`) and vocabularies from a checkpoint file."""
    path = Path(path)
    state = _read(path)
    try:
        model = Transformer(ModelConfig(**state["config"]))
        model.load_state_dict(_parameters(state["model"], model.config))
    except (TypeError, RuntimeError, KeyError) as e:
        raise KdmtError(f"{path}: the checkpoint does not match its model config ({str(e)[:200]})") from None
    src_vocab, tgt_vocab = Vocab.from_tensor(state["src_vocab"]), Vocab.from_tensor(state["tgt_vocab"])
    return Checkpoint(model.to(device).eval(), src_vocab, tgt_vocab, state.get("meta", {}), state.get("train_state"))


def average_checkpoints(paths: list[Path], out: Path) -> None:
    """Average the parameters of checkpoints of one architecture and vocabulary into `out`."""
    if not paths:
        raise KdmtError("no checkpoints to average")
    first = _read(paths[0])
    config = ModelConfig(**first["config"])
    params = _parameters(first["model"], config)
    total = {k: v.double() for k, v in params.items()}
    for path in paths[1:]:
        state = _read(path)
        if state["config"] != first["config"] or not torch.equal(state["tgt_vocab"], first["tgt_vocab"]):
            raise KdmtError(f"{path}: another architecture or vocabulary than {paths[0]}; cannot average")
        for k, v in _parameters(state["model"], config).items():
            total[k] += v.double()
    model = Transformer(config)
    model.load_state_dict({k: (v / len(paths)).to(params[k].dtype) for k, v in total.items()})
    meta = {**first.get("meta", {}), "averaged_from": [str(p) for p in paths]}
    vocabs = Vocab.from_tensor(first["src_vocab"]), Vocab.from_tensor(first["tgt_vocab"])
    save_checkpoint(out, Checkpoint(model, *vocabs, meta))
