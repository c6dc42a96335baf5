# The command's standard output when its reader may go away (`jobrelay jobs | head -1`).
# Invariant: once the reader has closed the pipe, every later write and flush is dropped quietly
# (fd 1 then points at /dev/null, so Python's own flush at exit cannot fail either), and the
# command runs to its end and exits with the code it would have had: a closed pipe is the
# reader's choice, not a failure of the command.
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO, cast

__all__ = ["quiet_closed_stdout"]


class _PipeSafe:
    """A text stream that forwards to ``stream`` until a write or flush meets a closed pipe."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        # What is still buffered goes nowhere, and so does anything the interpreter flushes at exit.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_closed_stdout() -> Iterator[None]:
    """Within the block, ``sys.stdout`` survives its reader closing the pipe (see the header)."""
    original = sys.stdout
    safe = _PipeSafe(original)
    sys.stdout = cast(TextIO, safe)
    try:
        yield
    finally:  # (also when argparse ends with SystemExit after printing --help)
        safe.flush()
        sys.stdout = original
