"""Reading text safely and writing every output atomically (temporary file, then rename)."""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from kdmt.errors import KdmtError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _open_bytes(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise KdmtError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (gzipped if it ends in .gz), without line endings."""
    path = Path(path)
    lines = []
    with _open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise KdmtError(f"{path}: line {number} is not valid UTF-8 ({e.reason})") from None
    return lines


def decode_stream(stream: Iterable[bytes], name: str) -> Iterator[str]:
    """Lines of a binary stream (stdin) as text, with a clear error on invalid UTF-8."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise KdmtError(f"{name}: line {number} is not valid UTF-8 ({e.reason})") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Write lines atomically as UTF-8 text."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
