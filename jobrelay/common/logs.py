# Route stdlib logging (pykka, websockets, websocket-client) into loguru, so an actor's crash
# traceback, which pykka logs through the stdlib, is never lost; Repeats, what keeps a peer from
# writing the log once per frame it sends; and make untrusted text safe for a human-format log line
# (escape_controls).
from __future__ import annotations

import inspect
import logging
import re

from loguru import logger

__all__ = ["InterceptHandler", "Repeats", "escape_controls", "route_stdlib_logging"]

# What can end a log line or change how a terminal shows the rest: C0 controls but tab (newline,
# carriage return, ESC), DEL, C1 controls (U+009B is a one-byte CSI on some terminals), Unicode
# line and paragraph separators, and the bidirectional overrides that reorder what is displayed.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_one(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def escape_controls(text: str) -> str:
    r"""``text`` with every character that could forge a line or drive a terminal written as
    Python escapes (``\n``, ``\x1b``, ``\u2028``), so a worker id or error detail sent by a
    peer stays inside its one log line. Printable text, tabs included, is returned as is."""
    return _UNSAFE.sub(_escape_one, text) if _UNSAFE.search(text) else text


class InterceptHandler(logging.Handler):
    """The handler from loguru's documentation: re-emit each stdlib record through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Find the caller outside the logging module (loguru's documented recipe).
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def route_stdlib_logging(level: int = logging.INFO) -> None:
    """Install the intercept handler once (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, InterceptHandler) for h in root.handlers):
        root.addHandler(InterceptHandler())
    for name in ("pykka", "websockets", "websocket"):
        logging.getLogger(name).setLevel(level)


class Repeats:
    """Lines a peer can cause once per frame (its non-fatal errors, refused status updates,
    draining flips): the first of each kind in a session is logged, the rest only counted, and
    the counts go into the session's closing line. A hostile peer sending a million of them
    costs the log one line of each kind, not a million."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def first(self, kind: str) -> bool:
        """Count one line of ``kind``; True when it is the first (log it)."""
        seen = self.counts.get(kind, 0)
        self.counts[kind] = seen + 1
        return seen == 0

    def left_out(self) -> str:
        """``"N kind, …"`` for the lines counted but not logged ("" when none were)."""
        return ", ".join(f"{n - 1} {kind}" for kind, n in sorted(self.counts.items()) if n > 1)
