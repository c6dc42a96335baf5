# Named counters of the facilitator, added to on the event loop and read by API threads, and the
# per-session count of log lines a peer could otherwise cause once per frame (Repeats).
from __future__ import annotations

import threading

__all__ = ["Counters", "Repeats"]


class Counters:
    """Named counters, safe to add to and read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Repeats:
    """Lines one peer can cause once per frame (its non-fatal errors, refused status updates,
    draining flips): the first of each kind in a session is logged, the rest only counted, and
    the counts go into the session's closing line. A hostile worker sending a million of them
    costs the log one line each kind, not a million."""

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
