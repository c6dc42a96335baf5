# Named counters of the facilitator, added to on the event loop and read by API threads.
from __future__ import annotations

import threading

__all__ = ["Counters"]


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
