"""Work cut into shards and shared by any number of processes: torchrun's, or independent commands
started with the same arguments, on one machine or on several sharing a file system.

The run's directory holds `manifest.json` (the settings, the plan of the shards, and what each finished
shard recorded), `lock`, and one claim file per shard. A process claims a shard by taking an exclusive
`flock` on its claim file without waiting: it skips a shard another process holds, and re-reads the
manifest after the claim, so a shard is done once. The kernel drops a process's locks when it dies, however
it dies, so the shard of a killed process is free again at once: for the processes still running, and for
any later run, with any number of processes; no run ids, no time-outs, no process group. The manifest is
read, changed and written back (atomically) under `lock`. A process stops when it finds nothing left to
claim; the one that then finds every shard done assembles the outputs, under `lock`, and removes the
directory. A process that finds no manifest, but the outputs of a finished run with its settings, has
nothing to do. `flock` must reach every machine that shares the directory (NFSv4, Lustre mounted with
`flock`, GPFS, CephFS do so; a mount with node-local locks does not).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdmt.cache import locked
from kdmt.device import resolve_device
from kdmt.errors import KdmtError
from kdmt.files import write_text

Manifest = dict[str, Any]


def file_identity(paths: list[str]) -> dict[str, list[int]]:
    """Each file's size and modification time: a resume after a file changed is refused."""
    return {p: [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in paths}


def local_device(name: str | None) -> torch.device:
    """`name` (see resolve_device); under torchrun, a CUDA device without an index is GPU LOCAL_RANK (modulo
    the GPUs: more processes than GPUs share them)."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def launch_rank() -> int:
    """This process's rank under torchrun (RANK), 0 otherwise; read from the environment, no process group."""
    return int(os.environ.get("RANK", "0"))


class ShardedRun:
    """A run of `settings` (JSON) in the directory `path`; `finished()` tells whether the outputs of a
    finished run with these settings exist."""

    def __init__(self, path: Path, settings: dict[str, Any], finished: Callable[[], bool]):
        self.path, self.settings, self.finished = path, settings, finished

    def manifest(self) -> Manifest | None:
        """The manifest, or None when there is none (not started, or finished and removed)."""
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except FileNotFoundError:
            return None

    def save(self, manifest: Manifest) -> None:
        write_text(self.path / "manifest.json", json.dumps(manifest, indent=1))

    def open(self, plan: Callable[[], dict[str, Any]]) -> Manifest | None:
        """The run's manifest; the first process makes it, with `plan()` (which gives at least "shards", their
        number). None when the outputs of a finished run with these settings exist: nothing to do."""
        with locked(self.path / "lock"):
            manifest = self.manifest()
            if manifest is None:
                if self.finished():
                    shutil.rmtree(self.path, ignore_errors=True)
                    return None
                manifest = {"settings": self.settings, "plan": plan(), "done": {}}
                (self.path / "claims").mkdir(exist_ok=True)
                self.save(manifest)
            elif manifest["settings"] != self.settings or "plan" not in manifest:
                raise KdmtError(
                    f"{self.path} holds an unfinished run with other settings or inputs; "
                    "run it with the same ones, or delete that directory"
                )
            return manifest

    def claim(self, index: int) -> int | None:
        """A descriptor holding shard `index`'s claim (closing it releases the claim); None when another
        process holds it, or when the run's directory is gone."""
        try:
            fd = os.open(self.path / "claims" / f"{index:06d}", os.O_CREAT | os.O_RDWR, 0o666)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def record(self, index: int, result: dict[str, Any]) -> None:
        with locked(self.path / "lock"):
            manifest = self.manifest()
            if manifest is None:
                raise KdmtError(f"{self.path} was removed while this process worked in it")
            manifest["done"][str(index)] = result
            self.save(manifest)

    def work(self, do: Callable[[int], dict[str, Any]], done: Callable[[int, bool], None]) -> None:
        """Claim and `do` unfinished shards, recording what `do` returns, until none is left to claim.
        `done(index, mine)` is called once for each shard found done, by this process (mine) or another."""
        seen: set[int] = set()

        def note(manifest: Manifest) -> None:
            for index in sorted(map(int, manifest["done"])):
                if index not in seen:
                    seen.add(index)
                    done(index, False)

        claimed = True
        while claimed and (manifest := self.manifest()) is not None:
            note(manifest)
            claimed = False
            for index in range(manifest["plan"]["shards"]):
                if str(index) in manifest["done"] or (fd := self.claim(index)) is None:
                    continue
                try:
                    manifest = self.manifest()
                    if manifest is None:
                        return
                    note(manifest)
                    if str(index) not in manifest["done"]:
                        self.record(index, do(index))
                        seen.add(index)
                        done(index, True)
                        claimed = True
                finally:
                    os.close(fd)

    def finish(self, assemble: Callable[[Manifest], None]) -> bool:
        """When every shard is done: `assemble` the outputs from the manifest (one process does) and remove
        the directory. True when the outputs are complete; False while other processes hold shards."""
        with locked(self.path / "lock"):
            manifest = self.manifest()
            if manifest is None:  # another process assembled the outputs
                shutil.rmtree(self.path, ignore_errors=True)
                if not self.finished():
                    raise KdmtError(f"{self.path} was removed before the run finished")
                return True
            if len(manifest["done"]) < manifest["plan"]["shards"]:
                return False
            assemble(manifest)
            self.remove()
            return True

    def remove(self) -> None:
        """Remove the directory, renamed first: a process that comes in to wait for the lock meanwhile (and
        so makes a new lock file) cannot make the removal fail; it finds no manifest, and removes its own."""
        removed = self.path.with_name(f".{self.path.name}.{os.getpid()}.removed")
        os.rename(self.path, removed)
        shutil.rmtree(removed)
