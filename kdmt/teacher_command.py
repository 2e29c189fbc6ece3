"""Any translation command as a teacher (`kdmt distill --teacher-cmd`): a program that reads source lines on
stdin and writes one translation a line on stdout (marian-decoder, fairseq-interactive behind a wrapper, a
client of a language model), run once for each batch of lines DistillRun gives it (a shard).

The command runs through the shell (`sh -c`, as the user typed it). Its stdin gets the non-empty lines,
UTF-8, one a line: a blank source is not sent, and gets an empty line, as with kdmt's own engines, so
the output stays line-aligned. Its stdout is read as UTF-8 lines (a trailing carriage return dropped);
its stderr passes through to ours, its last line kept for the error when the command fails. A non-zero
exit, output that is not UTF-8, or another number of lines than sources is a KdmtError.

Its translations have no score (one a line: no n-best lists) and no tokens: their lengths, and the
sources', are counted in words (kdmt.filters.word_length), and there is no length limit to be cut at.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import suppress
from typing import IO

from kdmt.errors import KdmtError
from kdmt.filters import word_length
from kdmt.translate import Candidate, Progress


class CommandTeacher:
    """A shell command that translates lines, with what DistillRun asks of a teacher (kdmt.distill.Teacher)."""

    def __init__(self, command: str):
        if not command.strip():
            raise KdmtError("--teacher-cmd is empty")
        self.command = command

    @property
    def identity(self) -> str:
        """What identifies this teacher in a distill manifest: the command line."""
        return f"command:{self.command}"

    def length_limits(self, lines: list[str]) -> list[tuple[int, int | None]]:
        """Each line's length in words, and no length limit."""
        return [(word_length(line), None) for line in lines]

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, progress: Progress | None = None, first_line: int = 0
    ) -> list[list[Candidate]]:
        """One candidate (no score, its length in words) for each non-blank line; an empty list for a blank one
        (`first_line`, the number of the first line in the corpus, is of no use to a command)."""
        if nbest != 1:
            raise KdmtError("a teacher command gives one translation a line: no n-best lists")
        todo = [i for i, line in enumerate(lines) if line.strip()]
        out: list[list[Candidate]] = [[] for _ in lines]
        for i, text in zip(todo, self.run([lines[i] for i in todo]) if todo else []):
            out[i] = [Candidate(text, None, word_length(text))]
        if progress:
            progress(len(lines))
        return out

    def run(self, lines: list[str]) -> list[str]:
        """The command's output for `lines`: as many lines, checked."""
        name = repr(self.command)
        process = subprocess.Popen(
            self.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        last_error: list[str] = []
        threads = [
            threading.Thread(target=_feed, args=(process.stdin, data)),
            threading.Thread(target=_relay, args=(process.stderr, last_error)),
        ]
        for thread in threads:
            thread.start()
        output = process.stdout.read()
        for thread in threads:
            thread.join()
        code = process.wait()
        if code:
            how = f"was killed by signal {-code}" if code < 0 else f"failed (exit {code})"
            said = f": {last_error[-1][:200]}" if last_error else ""
            raise KdmtError(f"the teacher command {name} {how}{said}")
        texts = output.split(b"\n")
        if texts[-1] == b"":
            texts.pop()
        try:
            texts = [raw.decode("utf-8").removesuffix("\r") for raw in texts]
        except UnicodeDecodeError:
            bad = next(i for i, raw in enumerate(texts, 1) if not _is_utf8(raw))
            raise KdmtError(f"the teacher command {name} wrote invalid UTF-8 (line {bad} of its output)") from None
        if len(texts) != len(lines):
            raise KdmtError(f"the teacher command {name} wrote {len(texts)} lines for {len(lines)} sources")
        return texts


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the sources to the command; one that stops reading them is judged by its exit and its output."""
    with suppress(BrokenPipeError):
        stdin.write(data)
    with suppress(BrokenPipeError):
        stdin.close()


def _relay(stderr: IO[bytes], last: list[str]) -> None:
    """Pass the command's stderr through to ours, line by line, keeping its last non-blank line in `last`."""
    for raw in stderr:
        text = raw.decode("utf-8", "replace")
        sys.stderr.write(text)
        sys.stderr.flush()
        if text.strip():
            last[:] = [text.strip()]


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
