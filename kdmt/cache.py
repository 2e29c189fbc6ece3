"""What commands make once and share: caches keyed on the content they were made from (never on sizes or
modification times), built by one process at a time under a lock and published atomically, so that a
reader finds a complete cache or none; and the locks themselves (`flock`: the kernel drops them when
their process dies, however it dies).

The one rule of staleness, for every cache and every resumable run: what was made from files is stale
when their content changed (content_key, content_identity, file_identity), wherever they lie; a file
edited to the same size and modification time is still seen."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from kdmt.errors import KdmtError

T = TypeVar("T")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read once, a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: str | Path) -> str:
    """The sha256 of a directory's files: each one's path relative to it and its bytes' sha256, in the order
    of the paths. Hidden files and directories (a name starting with a dot: `.git`, the `.cache` of
    download metadata and timestamps that Hugging Face's downloader leaves) are not part of it; links are
    followed."""
    digest = hashlib.sha256()
    root = Path(directory)
    files = []
    for parent, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(parent, name) for name in names if not name.startswith(".")]
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def content_key(paths: list[Path]) -> list[str]:
    """What a cache made from `paths` is keyed on: each file's sha256."""
    return [file_sha256(path) for path in paths]


def content_identity(path: str | Path) -> str:
    """What identifies a file or a directory wherever it lies, by content: "sha256:HEX" of a file's bytes,
    "tree-sha256:HEX" of a directory's files (tree_sha256). Read once, whatever its size."""
    path = Path(path)
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    if path.is_dir():
        return f"tree-sha256:{tree_sha256(path)}"
    raise KdmtError(f"{path}: no such file or directory")


def file_identity(paths: list[str]) -> dict[str, str]:
    """Each path's content_identity: what a resumable run records of its inputs, so that a resume after one
    of them changed is refused."""
    return {p: content_identity(p) for p in paths}


@contextmanager
def locked(lock: Path, shared: bool = False) -> Iterator[None]:
    """Hold the lock file `lock` (creating it and its directory), exclusive or `shared`. A lock file removed
    (with its directory) by the process that held it is not a lock: the lock is taken again on the file
    now at the path."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        except (FileExistsError, FileNotFoundError):  # the directory was being removed meanwhile
            continue
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def cached(lock: Path, read: Callable[[], T | None], build: Callable[[], None], name: str) -> T:
    """What `read()` finds (None: missing, stale or damaged), after `build()` made it when needed: read
    under a shared hold of `lock`, built under the exclusive one after reading again (another process may
    have built it meanwhile), so that processes asking at once build it once and all get it, and none reads
    it while it is being written. `read` must check the cache's key; `build` writes it (atomically)."""
    with locked(lock, shared=True):
        found = read()
    if found is None:
        with locked(lock):
            if (found := read()) is None:
                build()
                found = read()
    if found is None:
        raise KdmtError(f"{name}: the cache just written cannot be read back")
    return found


def cache_dir() -> Path:
    """Where converted models are kept: $KDMT_CACHE, else $XDG_CACHE_HOME/kdmt, else ~/.cache/kdmt."""
    if root := os.environ.get("KDMT_CACHE"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdmt"
