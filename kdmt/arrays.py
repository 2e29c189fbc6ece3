"""Numpy building blocks for corpora too large for Python lists: a .npy file written as it comes, and a
compact set of 64-bit hashes."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.lib import format as npy


class NpyAppender:
    """A 1-D .npy file written piece by piece: its header is fixed up with the final length on a clean exit.

    Use as a context manager; numpy's header leaves room for any length, so the data never moves."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.length = path, np.dtype(dtype), 0
        self.file = open(path, "wb")
        self.data_start = self._write_header()

    def _write_header(self) -> int:
        self.file.seek(0)
        npy.write_array_header_1_0(
            self.file, {"descr": npy.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        )
        return self.file.tell()

    def append(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.length += len(values)

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None and self._write_header() != self.data_start:
                raise AssertionError(f"{self.path}: the .npy header changed size")
        finally:
            self.file.close()


class HashSet:
    """A set of 64-bit hashes kept in a few sorted numpy arrays, 8 bytes an entry: each array is at least
    twice the size of the next, so a lookup searches O(log n) arrays and an entry is merged O(log n) times."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def add_new(self, hashes: np.ndarray) -> np.ndarray:
        """Add `hashes` (uint64); a mask, True where a hash is neither in the set nor earlier in `hashes`."""
        unique, first = np.unique(hashes, return_index=True)
        new = np.ones(len(unique), dtype=bool)
        for level in self.levels:
            position = np.minimum(np.searchsorted(level, unique), len(level) - 1)
            new &= level[position] != unique
        fresh = np.zeros(len(hashes), dtype=bool)
        fresh[first[new]] = True
        if new.any():
            self._insert(unique[new])
        return fresh

    def _insert(self, values: np.ndarray) -> None:
        self.levels.append(values)
        while len(self.levels) > 1 and len(self.levels[-2]) < 2 * len(self.levels[-1]):
            last = self.levels.pop()
            merged = np.concatenate((self.levels.pop(), last))
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self.levels.append(merged)
