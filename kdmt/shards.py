"""Work cut into shards and shared by any number of processes: torchrun's, or independent commands
started with the same arguments, on one machine or on several sharing a file system.

The run's directory (work_path: `.kdmt-work/NAME.shards`, hidden in the folder of the output NAME, so on
a file system that every process writing NAME reaches) holds `manifest.json` (the settings and the plan
of the shards, written once), `done/` (one record per finished shard, `done/NNNNNN.json`, written
atomically: recording a shard writes one small file, whatever the number of shards), `lock`, and one
claim file per shard. A process claims a shard by taking an exclusive `flock` on its claim file without
waiting: it skips a shard another process holds, and looks for the shard's record after the claim, so a
shard is done once. The kernel drops a process's locks when it dies, however it dies, so the shard of a
killed process is free again at once: for the processes still running, and for any later run, with any
number of processes; no run ids, no time-outs, no process group. A damaged record (never a torn one: each
is renamed into place whole) stops the run with its name. A process stops when it finds nothing left to
claim; the one that then finds every shard done assembles the outputs, under `lock`, and removes the
directory, and `.kdmt-work` once it is empty: nothing is left beside the outputs. A process that finds no
manifest, but the outputs of a finished run with its settings, has nothing to do. `flock` must reach every
machine that shares the directory (NFSv4, Lustre mounted with `flock`, GPFS, CephFS do so; a mount with
node-local locks does not).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from kdmt.cache import locked
from kdmt.errors import KdmtError
from kdmt.files import read_json, record_json, write_text

Manifest = dict[str, Any]
WORK_DIR = ".kdmt-work"


def work_path(out: Path) -> Path:
    """The directory of the sharded run that writes `out`: `.kdmt-work/NAME.shards` in out's folder; the
    `OUT.shards` of an older kdmt where one is there, so that its unfinished run resumes."""
    legacy = Path(f"{out}.shards")
    return legacy if legacy.is_dir() else out.parent / WORK_DIR / f"{out.name}.shards"


class ShardedRun:
    """A run of `settings` (JSON) in the directory `path`; `finished()` tells whether the outputs of a
    finished run with these settings exist."""

    def __init__(self, path: Path, settings: dict[str, Any], finished: Callable[[], bool]):
        self.path, self.settings, self.finished = path, settings, finished

    def manifest(self) -> Manifest | None:
        """The settings, the plan and what each finished shard recorded (`done`); None when there is none
        (not started, or finished and removed)."""
        head = self._head()
        if head is None:
            return None
        return head | {"done": {str(index): self._result(index) for index in sorted(self.finished_shards())}}

    def _head(self) -> Manifest | None:
        """The settings and the plan, written once; None when there are none."""
        path = self.path / "manifest.json"
        try:
            head = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            head = None
        if not isinstance(head, dict):
            raise KdmtError(f"{path}: damaged (not a kdmt manifest); delete {self.path} to start again")
        return head

    def finished_shards(self) -> set[int]:
        """The shards whose records are written (each shard's in a file of its own, written atomically)."""
        try:
            names = os.listdir(self.path / "done")
        except FileNotFoundError:
            return set()
        return {int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit()}

    def _record_path(self, index: int) -> Path:
        return self.path / "done" / f"{index:06d}.json"

    def _result(self, index: int) -> dict[str, Any]:
        path = self._record_path(index)
        try:
            result = read_json(path)
        except (OSError, ValueError):
            result = None
        if not isinstance(result, dict):
            raise KdmtError(f"{path}: damaged (not a shard's record); delete it, and that shard is done again")
        return result

    def open(
        self, plan: Callable[[], dict[str, Any]], other: Callable[[dict[str, Any]], str | None] = lambda found: None
    ) -> Manifest | None:
        """The run's manifest; the first process makes it, with `plan()` (which gives at least "shards", their
        number). None when the outputs of a finished run with these settings exist: nothing to do. A manifest
        with other settings is refused, with the error `other(its settings)` gives where it names what
        differs (None: a general one)."""
        with locked(self.path / "lock"):
            manifest = self._head()
            if manifest is None:
                if self.finished():
                    self.discard()
                    return None
                manifest = {"settings": self.settings, "plan": plan()}
                (self.path / "claims").mkdir(exist_ok=True)
                (self.path / "done").mkdir(exist_ok=True)
                write_text(self.path / "manifest.json", record_json(manifest, indent=1))
            elif manifest.get("settings") != self.settings or "plan" not in manifest:
                found = manifest.get("settings")
                named = other(found) if isinstance(found, dict) else None
                raise KdmtError(
                    named
                    or f"{self.path} holds an unfinished run with other settings or inputs; "
                    "run it with the same ones, or delete that directory"
                )
            return self.manifest()  # the records read once: a damaged one is named before any work

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
        """Write shard `index`'s record: one small file, whatever the number of shards done."""
        with locked(self.path / "lock"):
            if self._head() is None:
                raise KdmtError(f"{self.path} was removed while this process worked in it")
            write_text(self._record_path(index), record_json(result, indent=None))

    def work(self, do: Callable[[int], dict[str, Any]], done: Callable[[int, bool], None]) -> None:
        """Claim and `do` unfinished shards, recording what `do` returns, until none is left to claim.
        `done(index, mine)` is called once for each shard found done, by this process (mine) or another."""
        seen: set[int] = set()

        def note(finished: set[int]) -> None:
            for index in sorted(finished - seen):
                seen.add(index)
                done(index, False)

        claimed = True
        while claimed and (manifest := self._head()) is not None:
            note(self.finished_shards())
            claimed = False
            for index in range(manifest["plan"]["shards"]):
                if index in seen or (fd := self.claim(index)) is None:
                    continue
                try:
                    if not (self.path / "manifest.json").exists():
                        return
                    note(finished := self.finished_shards())
                    if index not in finished:
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
                self.discard()
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
        self.discard()

    def discard(self) -> None:
        """Remove what is left of the directory (the lock file of a process that came in to wait), and the
        `.kdmt-work` folder that holds it once that is empty (another run's directory keeps it)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.parent.name == WORK_DIR:
            with suppress(OSError):
                self.path.parent.rmdir()
