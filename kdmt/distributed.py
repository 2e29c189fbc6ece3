"""Running under torchrun: the process group from torchrun's environment, and the few collectives kdmt needs.

Outside torchrun (or with WORLD_SIZE 1) there is no process group: every helper is then the identity of a
single process (rank 0 of 1), so callers need no special case.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from kdmt.device import resolve_device
from kdmt.errors import KdmtError

T = TypeVar("T")

# Rank 0 validates and writes checkpoints while the other ranks wait in a collective: give it time.
TIMEOUT = timedelta(hours=1)


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started with others (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank under torchrun (RANK), 0 otherwise; read from the environment, no process group."""
    return int(os.environ.get("RANK", "0"))


def local_device(name: str | None = None) -> torch.device:
    """This process's device: `name` (see resolve_device); under torchrun (LOCAL_RANK set), a CUDA device
    without an index is GPU LOCAL_RANK, modulo the GPUs (more processes than GPUs share them). The one rule
    of which device a process takes: the sharded commands use it as it is, `init` for training."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def init(device: str | None = None) -> torch.device:
    """This process's device (local_device); under torchrun also join the process group: NCCL with the
    device cuda:LOCAL_RANK, gloo on the CPU. Training takes one GPU a process: an indexed device, or more
    processes than GPUs, is refused. The group is left at exit (see leave)."""
    if not launched_by_torchrun() or is_distributed():
        return resolve_device(device)
    dev = resolve_device(device)
    if dev.index is not None:
        raise KdmtError(f"under torchrun each process takes the GPU of its local rank: --device cuda, not {dev}")
    if dev.type == "cuda":
        if int(os.environ["LOCAL_RANK"]) >= torch.cuda.device_count():
            raise KdmtError(
                f"local rank {os.environ['LOCAL_RANK']} has no GPU of its own ({torch.cuda.device_count()} GPUs): "
                "start at most one training process per GPU"
            )
        dev = local_device(device)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    atexit.register(leave)
    return dev


def leave() -> None:
    """Leave the process group, if this process is in one (kdmt's main calls it as the command ends): what
    still refers to it (a DistributedDataParallel module, its pending work) is freed first, while the
    interpreter is whole; left to interpreter shutdown, gloo's threads can abort the process."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when this process belongs to a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that validates, writes the run's files and shows progress."""
    return rank() == 0


def collective_device() -> str:
    """Where the tensors of a collective live: the GPU of this rank under NCCL, the CPU under gloo."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_sum(values: list[float]) -> list[float]:
    """The sums over all ranks of each of `values` (float64)."""
    if not is_distributed():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(total)
    return total.tolist()


def int_from_rank0(value: int) -> int:
    """Rank 0's `value`, on every rank: one tensor broadcast, no pickling (cheap enough for every step)."""
    if not is_distributed():
        return value
    box = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.broadcast(box, src=0)
    return int(box.item())


def from_rank0(value: T) -> T:
    """Rank 0's `value`, on every rank (any picklable object)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not is_distributed():
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def on_rank0(fn: Callable[[], T]) -> T:
    """Call `fn` on rank 0 alone and return its result on every rank; a KdmtError it raises is raised on
    every rank, so that all of them stop together."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except KdmtError as e:
            error = str(e)
    result, error = from_rank0((result, error))
    if error is not None:
        raise KdmtError(error)
    return result


def on_every_rank(fn: Callable[[], T]) -> T:
    """Call `fn` on every rank and return its result there; a KdmtError it raises on any rank is raised on
    every rank (the lowest such rank's, named when not rank 0), so that all of them stop together."""
    if not is_distributed():
        return fn()
    result, error = None, None
    try:
        result = fn()
    except KdmtError as e:
        error = str(e)
    for r, message in enumerate(all_gather(error)):
        if message is not None:
            raise KdmtError(message if r == 0 else f"rank {r}: {message}")
    return result


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def rank0_first() -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks: for work that writes a cache the others can read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
