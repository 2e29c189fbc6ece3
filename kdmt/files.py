"""Reading text safely and writing every output atomically (temporary file, then rename)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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
    with _open_bytes(path) as f:
        return [_decode(raw, path, number) for number, raw in enumerate(f, start=1)]


def stream_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (gzipped if it ends in .gz) as they are read, without line endings
    (as read_lines, a megabyte at a time)."""
    path = Path(path)
    number = 0
    with _open_bytes(path) as f:
        while batch := f.readlines(1 << 20):
            try:
                text = b"".join(batch).decode("utf-8")
            except UnicodeDecodeError:
                for i, raw in enumerate(batch, start=number + 1):
                    _decode(raw, path, i)  # raises, with the line's number
                raise
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
            number += len(lines)
            yield from (line.rstrip("\r") for line in lines) if "\r" in text else lines


def line_offsets(path: str | Path, every: int) -> tuple[int, list[int]]:
    """One pass over a UTF-8 text file (gzipped if it ends in .gz), checking every line: its number of
    lines, and the byte offsets (in the decompressed text) of lines 0, every, 2·every, …"""
    path = Path(path)
    offsets, position, number = [], 0, 0
    with _open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            if (number - 1) % every == 0:
                offsets.append(position)
            _decode(raw, path, number)
            position += len(raw)
    return number, offsets


class LineReader:
    """Runs of lines of a text file read from the byte offsets of `line_offsets`, through one open file:
    in a .gz file, a seek forward decompresses only the text in between."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = _open_bytes(self.path)

    def read(self, offset: int, count: int, first: int) -> list[str]:
        """`count` lines from the byte `offset`, where line `first` (0-based) begins."""
        self.file.seek(offset)
        return [_decode(self.file.readline(), self.path, first + i + 1) for i in range(count)]

    def close(self) -> None:
        self.file.close()


def _decode(raw: bytes, name: str | Path, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise KdmtError(f"{name}: line {number} is not valid UTF-8 ({e.reason})") from None


def decode_stream(stream: Iterable[bytes], name: str) -> Iterator[str]:
    """Lines of a binary stream (stdin) as text, with a clear error on invalid UTF-8."""
    for number, raw in enumerate(stream, start=1):
        yield _decode(raw, name, number)


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's) contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. The file is
    synced before the rename and the directory after it, so a crash of the machine leaves the old file or
    the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp (and a writer that replaces the file, as safetensors does) makes it private: usual permissions
        os.chmod(tmp, 0o666 & ~_UMASK)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
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


RECORD_HASH = "sha256"  # the member of a JSON record that holds the sha256 of the rest (record_json)


def _record_digest(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_json(record: dict[str, Any], indent: int | None = 2) -> str:
    """`record` as JSON text, with the sha256 of its content (RECORD_HASH), which `read_json` checks: a
    record damaged into other valid JSON (a digit changed) is refused, not used."""
    assert RECORD_HASH not in record, f"a record's own member {RECORD_HASH!r} holds its sha256"
    record = json.loads(json.dumps(record))  # as it reads back: tuples are lists, keys are strings
    return json.dumps(record | {RECORD_HASH: _record_digest(record)}, indent=indent) + "\n"


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`, a record of `record_json` without its sha256; ValueError when the file is
    not UTF-8 JSON, or its sha256 disagrees (a record written without one, by an older kdmt, is taken as
    it is)."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(value, dict) and RECORD_HASH in value:
        digest = value.pop(RECORD_HASH)
        if digest != _record_digest(value):
            raise ValueError("its sha256 does not match its content")
    return value
