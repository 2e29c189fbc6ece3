"""Checkpoints: safetensors files, so loading never unpickles; checked by a content hash; averaged.

A checkpoint is one safetensors file: its tensors are the model's weights, the sentencepiece models (as
uint8 tensors) and the tensors of the training state (optimizer moments, random states); its header holds a
JSON record of the rest (model config, meta, the training state's other values, with each tensor by name)
and the sha256 of the record and all tensors, checked on every load. The file alone rebuilds a translator.
Training state (optimizer, step, data position, random state) is present only in the checkpoints that a
run can resume from. The .pt files of older kdmt (pickles in a torch zip archive) still load, through
torch.load(weights_only=True); `convert_checkpoint` rewrites them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kdmt.errors import KdmtError
from kdmt.files import atomic_path
from kdmt.model import ModelConfig, Transformer
from kdmt.vocab import Vocab

FORMAT, LEGACY_FORMAT = "kdmt-checkpoint-2", "kdmt-checkpoint-1"
SUFFIX, LEGACY_SUFFIX = ".safetensors", ".pt"
SRC_EMBED = "src_embed.weight"  # with shared embeddings, the tensor of tgt_embed.weight: saved only as that
# How the record stands for what JSON lacks: a tensor (by name), a tuple, a dict with int keys.
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
ZIP_MAGIC = b"PK\x03\x04"  # what torch.save writes: a zip archive


@dataclass
class Checkpoint:
    model: Transformer
    src_vocab: Vocab
    tgt_vocab: Vocab
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None


class _Tensors:
    """The tensors of a record being encoded, by name, each on the CPU in memory of its own (safetensors
    refuses tensors that share memory, such as one random state under two names)."""

    def __init__(self) -> None:
        self.by_name: dict[str, torch.Tensor] = {}
        self.storages: set[int] = set()

    def add(self, name: str, t: torch.Tensor) -> dict[str, str]:
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage().data_ptr()
        if storage in self.storages:
            t = t.clone()
        self.storages.add(t.untyped_storage().data_ptr())
        self.by_name[name] = t
        return {TENSOR: name}


def _encode(value: Any, name: str, tensors: _Tensors) -> Any:
    """`value` as JSON, its tensors taken out into `tensors` under names of their path (train_state/optimizer/
    state/3/exp_avg)."""
    below = f"{name}/" if name else ""
    if isinstance(value, torch.Tensor):
        return tensors.add(name, value)
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, below + k, tensors) for k, v in value.items()}
        return {ITEMS: [[k, _encode(v, f"{below}{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_encode(v, f"{below}{i}", tensors) for i, v in enumerate(value)]
        return {TUPLE: items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} ({name})")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of _encode."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[TUPLE])
    if ITEMS in value:
        return {k: _decode(v, tensors) for k, v in value[ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def content_hash(record: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the record and of each tensor's name, dtype, shape and bytes, in the order of the names."""
    h = hashlib.sha256(record.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write a checkpoint atomically: an interrupted save never leaves a half-written file. A shared
    embedding is saved once."""
    shared = ckpt.model.config.share_embeddings
    state = {
        "config": asdict(ckpt.model.config),
        "model": {k: v for k, v in ckpt.model.state_dict().items() if not (shared and k == SRC_EMBED)},
        "src_vocab": ckpt.src_vocab.to_tensor(),
        "tgt_vocab": ckpt.tgt_vocab.to_tensor(),
        "meta": ckpt.meta,
        "train_state": ckpt.train_state,
    }
    tensors = _Tensors()
    record = json.dumps(_encode(state, "", tensors))
    metadata = {"format": FORMAT, "record": record, "sha256": content_hash(record, tensors.by_name)}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors.by_name, tmp, metadata=metadata)
        except SafetensorError as e:  # how safetensors' writer reports a failed write (a full disk)
            reason = f"cannot write the checkpoint (a full disk?): {str(e).splitlines()[0]}"
            raise OSError(errno.EIO, reason, str(path)) from None


def _is_legacy(path: Path) -> bool:
    """Whether `path` is a torch zip archive (an older kdmt's .pt) rather than a safetensors file."""
    if not path.is_file():
        raise KdmtError(f"{path}: no such checkpoint")
    with open(path, "rb") as f:
        return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def _unreadable(path: Path, e: Exception) -> KdmtError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return KdmtError(f"{path}: not a readable kdmt checkpoint ({reason[:200]})")


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error, and OSError
        raise _unreadable(path, e) from None
    if metadata.get("format") != FORMAT or "record" not in metadata:
        raise KdmtError(f"{path}: not a kdmt checkpoint (a safetensors file without kdmt's record)")
    if content_hash(metadata["record"], tensors) != metadata.get("sha256"):
        raise KdmtError(f"{path}: corrupted: its content does not match the sha256 it was saved with")
    try:
        return _decode(json.loads(metadata["record"]), tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise _unreadable(path, e) from None


def _read_legacy(path: Path) -> dict[str, Any]:
    """An older kdmt's .pt checkpoint, unpickled by torch's weights-only unpickler (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds, all meaning the same here
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or state.get("format") != LEGACY_FORMAT:
        raise KdmtError(f"{path}: not a kdmt checkpoint")
    return state


def _read(path: Path) -> dict[str, Any]:
    """The saved state of a checkpoint of either format; for an old one, a note on stderr."""
    if not _is_legacy(path):
        return _read_safetensors(path)
    state = _read_legacy(path)
    print(f"note: {path} is an older kdmt's .pt checkpoint; `kdmt convert-checkpoint` rewrites it", file=sys.stderr)
    return state


def _parameters(saved: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A saved model's parameters by name, a shared embedding under both its names (older checkpoints
    hold it twice)."""
    if config.share_embeddings and "tgt_embed.weight" in saved:
        return {SRC_EMBED: saved["tgt_embed.weight"], **saved}
    return saved


def _checkpoint(path: Path, state: dict[str, Any]) -> Checkpoint:
    """The checkpoint of a saved state (its model in eval mode, on the CPU)."""
    try:
        model = Transformer(ModelConfig(**state["config"]))
        model.load_state_dict(_parameters(state["model"], model.config))
    except (TypeError, RuntimeError, KeyError) as e:
        raise KdmtError(f"{path}: the checkpoint does not match its model config ({str(e)[:200]})") from None
    src_vocab, tgt_vocab = Vocab.from_tensor(state["src_vocab"]), Vocab.from_tensor(state["tgt_vocab"])
    return Checkpoint(model.eval(), src_vocab, tgt_vocab, state.get("meta", {}), state.get("train_state"))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (in eval mode, on `device`) and vocabularies from a checkpoint file."""
    path = Path(path)
    ckpt = _checkpoint(path, _read(path))
    ckpt.model.to(device)
    return ckpt


def convert_checkpoint(path: Path, out: Path | None = None) -> Path:
    """Rewrite an older kdmt's .pt checkpoint, training state and all, as a safetensors checkpoint `out`
    (by default beside it, with the suffix .safetensors); the path written."""
    if not _is_legacy(path):
        raise KdmtError(f"{path}: not a .pt checkpoint of an older kdmt (nothing to convert)")
    out = path.with_suffix(SUFFIX) if out is None else out
    save_checkpoint(out, _checkpoint(path, _read_legacy(path)))
    return out


def average_checkpoints(paths: list[Path], out: Path) -> None:
    """Average the parameters of checkpoints of one architecture and vocabularies into `out`."""
    if not paths:
        raise KdmtError("no checkpoints to average")
    first = _read(paths[0])
    config = ModelConfig(**first["config"])
    params = _parameters(first["model"], config)
    total = {k: v.double() for k, v in params.items()}
    for path in paths[1:]:
        state = _read(path)
        same_vocabs = all(torch.equal(state[side], first[side]) for side in ("src_vocab", "tgt_vocab"))
        if state["config"] != first["config"] or not same_vocabs:
            raise KdmtError(f"{path}: another architecture or vocabulary than {paths[0]}; cannot average")
        for k, v in _parameters(state["model"], config).items():
            total[k] += v.double()
    model = Transformer(config)
    model.load_state_dict({k: (v / len(paths)).to(params[k].dtype) for k, v in total.items()})
    meta = {**first.get("meta", {}), "averaged_from": [str(p) for p in paths]}
    vocabs = Vocab.from_tensor(first["src_vocab"]), Vocab.from_tensor(first["tgt_vocab"])
    save_checkpoint(out, Checkpoint(model, *vocabs, meta))
